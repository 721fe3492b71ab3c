"""Fixtures of the hostile suite (issue 19); the file builders are in ``hostile_files.py``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def run_copy(phantom_run, tmp_path) -> Path:
    """A private copy of the shared phantom run (tests may write beside its checkpoint)."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(phantom_run, dst)
    return dst
