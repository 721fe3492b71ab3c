"""``ruff check src tests`` passes (the rules in pyproject.toml's ``[tool.ruff]``) and
``ruff format --check src tests bench`` finds nothing to reformat, so lint and layout habits
hold by themselves in ``make test``. Skipped where ruff is not installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str] | None:
    beside = Path(sys.executable).with_name("ruff")  # the venv's, also when not on PATH
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ruff")
    return [found] if found else None


def test_ruff_check_passes():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [*ruff, "check", "--no-cache", "src", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-1000:]


def test_ruff_format_is_applied():
    """The code is laid out by ``ruff format`` (``make format`` applies it)."""
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [*ruff, "format", "--check", "--no-cache", "src", "tests", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        "run `make format` (ruff format src tests bench):\n"
        + proc.stdout[-4000:]
        + proc.stderr[-1000:]
    )


def test_one_conftest_module():
    """Test files import constants with ``from conftest import ...``; a second
    ``conftest.py`` below tests/ (in a folder without ``__init__``) is imported under the same
    module name and, depending on collection order, shadows the first (it did: tests/hostile)."""
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    found = sorted(str(p.relative_to(tests)) for p in tests.rglob("conftest.py"))
    assert found == ["conftest.py"], found
