"""Old module paths keep importing after the layout move, as the very modules at the new paths."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from cxrkit._moved import MOVED, new_name


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_monkeypatching_an_old_path_patches_the_code_that_runs(monkeypatch):
    import cxrkit.data.phantoms.generator as generator
    import cxrkit.export as old
    from cxrkit import export

    monkeypatch.setattr(old, "PROBABILITY_TOLERANCE", 0.5)
    assert export.PROBABILITY_TOLERANCE == 0.5
    assert sys.modules["cxrkit.inference.export"].PROBABILITY_TOLERANCE == 0.5
    assert new_name("cxrkit.data.twin") == "cxrkit.data.phantoms.twin"
    assert new_name("cxrkit.config") == "cxrkit.config"
    from cxrkit.data.phantoms import make_phantoms
    from cxrkit.data.twin import make_twin

    assert make_phantoms is generator.make_phantoms and callable(make_twin)


def test_package_facades():
    import cxrkit
    import cxrkit.inference
    from cxrkit.inference import core

    assert cxrkit.inference.load is core.load and cxrkit.inference.LoadedModel is core.LoadedModel
    with pytest.raises(AttributeError):
        cxrkit.inference.not_a_name  # noqa: B018
    import cxrkit.data.phantoms as phantoms

    assert phantoms.IMAGES_PER_FOLDER == 10_000  # the generator's other names, as before
    with pytest.raises(AttributeError):
        phantoms.not_a_name  # noqa: B018


def test_old_paths_import_without_warnings_and_torch_free_stays_torch_free():
    code = (
        "import sys, cxrkit.onnx_backend, cxrkit.thresholds, cxrkit.predict, "
        "cxrkit.inference.predictor\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH False" in proc.stdout
