"""Old module paths that still import: each is the very module at its new path.

The layout moved (the modules that use a trained model into :mod:`cxrkit.inference`,
the preprocessing contract and dataset statistics into :mod:`cxrkit.data`, the phantom
generator into :mod:`cxrkit.data.phantoms`, the layering table to :mod:`cxrkit._layering`).
Code written against the old paths keeps working: ``import cxrkit.export`` returns the
module object ``cxrkit.inference.export`` itself (not a copy of its names), so
``monkeypatch.setattr(cxrkit.export, ...)`` patches the code that runs. These aliases stay
for compatibility; new code imports the new paths.

No file is left at an old path on purpose: a shim file there would make git see a change
to the old file rather than a rename, and edits made on the old layout would not follow
the move when branches are merged. The aliases are resolved by a finder on
``sys.meta_path``, installed by ``cxrkit/__init__.py``, which imports nothing until an old
path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old dotted module path -> new dotted module path.
MOVED: dict[str, str] = {
    "cxrkit.predictor": "cxrkit.inference.predictor",
    "cxrkit.runtime": "cxrkit.inference.runtime",
    "cxrkit.onnx_backend": "cxrkit.inference.onnx_backend",
    "cxrkit.export": "cxrkit.inference.export",
    "cxrkit.thresholds": "cxrkit.inference.thresholds",
    "cxrkit.heldout": "cxrkit.inference.heldout",
    "cxrkit.predict": "cxrkit.inference.predict",
    "cxrkit.preprocessing": "cxrkit.data.preprocessing",
    "cxrkit.eda": "cxrkit.data.eda",
    "cxrkit.layers": "cxrkit._layering",
    "cxrkit.data.twin": "cxrkit.data.phantoms.twin",
    "cxrkit.data.phantom_labels": "cxrkit.data.phantoms.labels",
    "cxrkit.data._phantom_anatomy": "cxrkit.data.phantoms.anatomy",
    "cxrkit.data._phantom_findings": "cxrkit.data.phantoms.findings",
}


def new_name(module: str) -> str:
    """The current path of a dotted module name (itself when it did not move)."""
    for old, new in MOVED.items():
        if module == old or module.startswith(old + "."):
            return new + module[len(old) :]
    return module


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of :data:`MOVED` and loads it as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        # the real module; the import system keeps its own __name__ and __spec__
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


__all__ = ["MOVED", "install", "new_name"]
