"""Shared fixtures: the real NIH sample (read-only) and tiny phantom releases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NIH = Path(os.environ.get("CXRKIT_NIH_SAMPLE", REPO.parent / "shared" / "nih"))
META = NIH / "meta"


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
    return prepare(phantom_release, out, settings=PreprocessSettings(size=64), workers=0,
                   progress=False)
