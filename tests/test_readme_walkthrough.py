"""The README's walk-through of the real sample runs as written.

The commands are read from README.md itself, between the ``walkthrough:start`` and
``walkthrough:end`` markers, so the README cannot rot: each ``cxrkit ...`` line runs in a
fresh process, in a scratch folder laid out like the project's checkout (``../shared/nih``
is the real sample, ``configs/`` the recipes), and must succeed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from conftest import NIH, REPO

START, END = "<!-- walkthrough:start -->", "<!-- walkthrough:end -->"


def walkthrough_commands(readme: str) -> list[list[str]]:
    """The ``cxrkit`` command lines between the markers, as argument lists (comments and
    other lines dropped)."""
    if START not in readme or END not in readme:
        raise AssertionError(f"README.md lacks the {START} ... {END} markers")
    block = readme.split(START, 1)[1].split(END, 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("cxrkit "):
            commands.append(shlex.split(line, comments=True))
    return commands


def test_the_walkthrough_is_marked_and_uses_the_shared_sample():
    commands = walkthrough_commands((REPO / "README.md").read_text())
    assert len(commands) >= 6
    assert [c[1] for c in commands[:2]] == ["validate", "prepare"]
    assert all("../shared/nih" in " ".join(c) for c in commands[:2])


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    if not NIH.exists():
        pytest.skip(f"real NIH sample not found at {NIH} (set CXRKIT_NIH_SAMPLE)")
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "nih").symlink_to(NIH.resolve())
    (work / "configs").symlink_to(REPO / "configs")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"}
    for argv in walkthrough_commands((REPO / "README.md").read_text()):
        done = subprocess.run(
            [sys.executable, "-m", "cxrkit.cli", *argv[1:]],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, (
            f"`{shlex.join(argv)}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
