"""``mypy`` passes on src/cxrkit with pyproject.toml's ``[tool.mypy]``, so typing habits hold by
themselves in ``make test``; and that configuration does catch a planted type error (a check
that cannot fail would prove nothing). Skipped where mypy is not installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (pip install -e '.[dev]')",
)


def _mypy(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    # The repository's configuration; its cache (.mypy_cache, gitignored) keeps a warm run short.
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), *args]
    if cache is not None:
        cmd += ["--cache-dir", str(cache)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_mypy_passes_on_src():
    proc = _mypy()  # the files come from the configuration (files = src/cxrkit)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "no issues found" in proc.stdout, proc.stdout[-2000:]


PLANTED = """\
def scale(x: float, factor: float = 2.0) -> float:
    return x * factor


def label(n: int) -> str:
    return {n_placeholder}


def pick(name: str = {default}) -> str:
    return name
"""


def test_the_configuration_catches_planted_errors(tmp_path):
    clean = tmp_path / "planted_ok.py"
    clean.write_text(PLANTED.format(n_placeholder="str(scale(n))", default='"a"'))
    bad = tmp_path / "planted_bad.py"
    # a float returned where str is declared, and a None default without Optional
    bad.write_text(PLANTED.format(n_placeholder="scale(n)", default="None"))
    cache = tmp_path / "cache"  # its own cache: the repository's is the other test's

    ok = _mypy(str(clean), cache=cache)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    proc = _mypy(str(bad), cache=cache)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "planted_bad.py:6: error: Incompatible return value type" in out, out
    assert "[return-value]" in out, out
    # no_implicit_optional: a None default does not make the parameter Optional by itself
    assert "planted_bad.py:9: error: Incompatible default for parameter" in out, out
