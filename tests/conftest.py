"""Shared fixtures: the real NIH sample (read-only) and tiny phantom releases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NIH = Path(os.environ.get("CXRKIT_NIH_SAMPLE", REPO.parent / "shared" / "nih"))
META = NIH / "meta"

# The suite makes hundreds of throw-away checkpoints; the default fast path (onnxruntime)
# would export each one's network once (seconds to a minute each here). Tests run the fp32
# reference unless they ask for a precision; tests/test_runtime.py covers the others, auto
# included.
os.environ.setdefault("CXRKIT_PRECISION", "fp32")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real NIH sample not found at {path} (set CXRKIT_NIH_SAMPLE)")
    return path


@pytest.fixture(scope="session")
def nih_sample() -> Path:
    return _need(NIH)


@pytest.fixture(scope="session")
def real_labels():
    from cxrkit.data.nih import read_data_entry

    return read_data_entry(_need(META / "Data_Entry_2017.csv"))


@pytest.fixture(scope="session")
def phantom_release(tmp_path_factory) -> Path:
    """A small phantom release in NIH's layout (made once per test session)."""
    from cxrkit.data.phantoms import make_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    make_phantoms(out, n_patients=60, image_size=64, seed=1, progress=False)
    return out


@pytest.fixture(scope="session")
def phantom_prepared(phantom_release, tmp_path_factory):
    """The phantom release prepared into a cache at 64 px."""
    from cxrkit.data.cache import PreprocessSettings
    from cxrkit.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    return prepare(
        phantom_release, out, settings=PreprocessSettings(size=64), workers=0, progress=False
    )


@pytest.fixture(scope="session")
def phantom_run(phantom_prepared, tmp_path_factory) -> Path:
    """A small cnn4 run trained on ``phantom_prepared`` (the run folder; best.pt inside).

    Shared by the evaluation, explanation and prediction tests: treat it as read-only
    (copy it to tmp_path before writing anything beside the checkpoint).
    """
    from cxrkit.config import load_config
    from cxrkit.engine.train import fit

    out = tmp_path_factory.mktemp("phantom_run") / "cnn4"
    cfg = load_config(
        None,
        [
            f"data.prepared={phantom_prepared.root}",
            f"out={out}",
            "data.batch_size=16",
            "model.name=cnn4",
            "train.epochs=6",
            "train.lr=3e-3",
            "train.threads=1",
            "train.amp=none",
            "train.patience=10",
        ],
    )
    fit(cfg, show_progress=False)
    return out
