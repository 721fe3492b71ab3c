"""The phantom generator: synthetic chest radiographs in NIH ChestX-ray14's exact layout.

``make_phantoms(out_dir)`` (``cxrkit phantoms``) writes a small release; ``make_twin``
(``cxrkit phantoms --twin``, in :mod:`cxrkit.data.phantoms.twin`) one with the real
release's patients, labels and boxes. The modules, from the bottom up:

=============  =========================================================================
``anatomy``    the posed, exposed thorax (lungs, heart, ribs, ...)
``findings``   how each of the 14 findings is drawn into it
``labels``     NIH-style noisy labels and the radiologists' expert files
``cohort``     the labels of a release, no pixels (:func:`sample_cohort`)
``drawing``    one radiograph: thorax, findings, exposure (:func:`draw_phantom`)
``generator``  the release on disk (:func:`make_phantoms`)
``twin``       the NIH-shaped twin (:func:`~cxrkit.data.phantoms.twin.make_twin`)
=============  =========================================================================

This package's names are the interface the twin, the OOD probes, the export parity check
and the tests use. The other names of ``generator`` stay reachable here too (this package
was one module, ``cxrkit.data.phantoms``, before), and the old module paths
``cxrkit.data.twin``, ``cxrkit.data.phantom_labels``, ``cxrkit.data._phantom_anatomy`` and
``cxrkit.data._phantom_findings`` are aliases of the modules here (:mod:`cxrkit._moved`).
"""

from __future__ import annotations

from cxrkit.data.phantoms.generator import (
    MANIFEST_NAME,
    TARGET_PREVALENCE,
    Anatomy,
    Drawing,
    PhantomRelease,
    draw_phantom,
    existing_release,
    finding_box,
    generator_versions,
    make_phantoms,
    render_phantom,
    rng_stream,
    sample_anatomy,
    sample_cohort,
    write_ascii,
)
from cxrkit.data.phantoms.labels import (
    EXPERT_FRACTION,
    MEASURED_NOISE,
    NOISE_PRESETS,
    READERS,
    describe_noise,
    noisy_findings,
    resolve_noise,
    write_expert_files,
)

__all__ = [
    "EXPERT_FRACTION",
    "MANIFEST_NAME",
    "MEASURED_NOISE",
    "NOISE_PRESETS",
    "READERS",
    "TARGET_PREVALENCE",
    "Anatomy",
    "Drawing",
    "PhantomRelease",
    "describe_noise",
    "draw_phantom",
    "existing_release",
    "finding_box",
    "generator_versions",
    "make_phantoms",
    "noisy_findings",
    "render_phantom",
    "resolve_noise",
    "rng_stream",
    "sample_anatomy",
    "sample_cohort",
    "write_ascii",
    "write_expert_files",
]


def __getattr__(name: str):
    """The generator's other names (``IMAGES_PER_FOLDER``, ...), as when it was this module."""
    if not name.startswith("__"):
        import importlib

        generator = importlib.import_module("cxrkit.data.phantoms.generator")
        if hasattr(generator, name):
            return getattr(generator, name)
    raise AttributeError(f"module 'cxrkit.data.phantoms' has no attribute {name!r}")
