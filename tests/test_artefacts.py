"""The artefacts module: atomic writes that fail in one line, layouts, the one resolver."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from cxrkit import artefacts
from cxrkit.artefacts import (
    CheckpointError,
    RunFolder,
    WriteError,
    atomic_file,
    resolve_checkpoint,
    write_json,
    write_text,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrkit"


def strays(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def no_space(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    write_json({"k": 1}, target)
    write_json({"k": 2}, target)
    assert target.read_text().strip().endswith("}") and '"k": 2' in target.read_text()
    assert strays(tmp_path) == []


def test_full_disk_mid_write_keeps_old_file_and_names_the_need(tmp_path):
    target = tmp_path / "run" / "last.pt"
    write_text("old", target)
    with pytest.raises(WriteError) as e, atomic_file(target) as f:
        f.write(b"x" * 5000)
        f.flush()
        no_space()
    msg = str(e.value)
    assert "\n" not in msg and str(target) in msg and "no space left" in msg
    assert "needs more than the 5,000 bytes (4.9 KiB) written" in msg and "free in" in msg
    assert target.read_text() == "old" and strays(tmp_path) == []


def test_full_disk_at_fsync(tmp_path, monkeypatch):
    monkeypatch.setattr(artefacts.os, "fsync", no_space)
    with pytest.raises(WriteError, match="no space left"):
        write_text("hello", tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists() and strays(tmp_path) == []


def test_known_size_is_checked_against_free_space_first(tmp_path, monkeypatch):
    usage = type("U", (), {"free": 10})
    monkeypatch.setattr(artefacts.shutil, "disk_usage", lambda _: usage)
    with pytest.raises(WriteError, match=r"needs 1,000 bytes, 10 bytes free"):
        artefacts.write_bytes(b"0" * 1000, tmp_path / "big.bin")
    assert list(tmp_path.iterdir()) == []


def test_permission_denied_is_one_line(tmp_path, monkeypatch):
    real = Path.mkdir

    def refuse(self, *a, **k):
        if self.name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(WriteError, match=r"permission denied \(needs write access to .*locked"):
        write_text("x", tmp_path / "locked" / "f.txt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(WriteError, match="permission denied"):
            write_text("x", folder / "f.txt")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_a_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match="is a file, not a folder"):
        write_text("x", tmp_path / "file" / "run" / "config.yaml")


def test_check_writable_leaves_nothing(tmp_path):
    artefacts.check_writable(tmp_path / "out" / "p.csv")
    assert list((tmp_path / "out").iterdir()) == []


def test_checkpoint_on_a_full_disk(tmp_path, monkeypatch):
    import torch

    from cxrkit.engine.checkpoint import save_checkpoint

    real = torch.save

    def half_then_full(obj, f, *a, **k):
        f.write(b"PK" * 100)
        no_space()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(WriteError, match="no space left"):
        save_checkpoint({"x": 1}, tmp_path / "best.pt")
    monkeypatch.setattr(torch, "save", real)
    assert list(tmp_path.iterdir()) == []


def test_one_checkpoint_resolver(tmp_path):
    from cxrkit import inference
    from cxrkit.engine import checkpoint

    run = RunFolder(tmp_path)
    with pytest.raises(CheckpointError, match="without best.pt or last.pt"):
        resolve_checkpoint(tmp_path)
    run.last.write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == run.last
    run.best.write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == run.best == run.checkpoint()
    assert resolve_checkpoint(run.last) == run.last
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nope.pt")
    assert checkpoint.resolve_checkpoint is inference.resolve_checkpoint is resolve_checkpoint
    assert checkpoint.CheckpointError is CheckpointError


def test_layouts():
    run = RunFolder.of(Path("r/best.pt"))
    assert run.root == Path("r") and run.eval("test") == Path("r/eval/test")
    assert run.eval("val", "flip") == Path("r/eval/val-flip")
    assert run.thresholds.name == "thresholds.json" and run.explain == Path("r/explain")
    assert artefacts.onnx_path(run.best) == Path("r/best.onnx")
    assert artefacts.PreparedFolder("p").split == Path("p/split.csv")


# A rename over a finished file is an atomic writer; only artefacts.py may hold one
# (the cache's final rename of its memory-mapped pixels is the one other, by design).
_RENAMES = re.compile(r"os\.replace\(|os\.rename\(|\.replace\((path|tmp|target)\b|\"\.tmp|\.tmp\"")
_ALLOWED = {("data/cache.py", "os.replace(build.images_path, out / IMAGES)")}


def test_no_other_atomic_writer():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        if rel == "artefacts.py":
            continue
        for line in path.read_text().splitlines():
            if _RENAMES.search(line) and not any(rel == r and s in line for r, s in _ALLOWED):
                found.append(f"{rel}: {line.strip()}")
    assert found == [], "write through cxrkit.artefacts instead:\n" + "\n".join(found)


def test_cli_spells_no_file_names():
    """Run and prepared folder layouts live in artefacts, never in the CLI."""
    pattern = re.compile(
        r"/ \"(eval|explain|localize|tb)\"|\"(best|last)\.(pt|onnx)\"|"
        r"\"(run|dataset|metrics|thresholds)\.json\"|"
        r"\"(config\.yaml|split\.csv|labels\.csv|boxes\.csv)\""
    )
    found = [
        f"{p.name}: {line.strip()}"
        for p in sorted((SRC / "cli").glob("*.py"))
        for line in p.read_text().splitlines()
        if pattern.search(line) and "help=" not in line
    ]
    assert found == [], found


def test_csv_cells_escaped_and_read_back_keeping_dtypes(tmp_path):
    """Formula-like text is escaped in every text column (a categorical's too) and read
    back as written; a column read as str stays str when it is blank (it came back
    float64, and ``.fillna("")`` on it is deprecated in pandas 3)."""
    import numpy as np
    import pandas as pd

    table = pd.DataFrame(
        {
            "cat": pd.Categorical(["=1+1", "x"]),
            "text": ["@SUM(A1)", None],
            "blank": [np.nan, np.nan],
            "number": [-0.5, 1.0],
        }
    )
    path = artefacts.write_csv(table, tmp_path / "t.csv")
    assert path.read_text().splitlines()[1].startswith("'=1+1,'@SUM(A1),")
    back = artefacts.read_csv(path, dtype={"blank": str})
    assert back["cat"].tolist() == ["=1+1", "x"] and back["text"].iloc[0] == "@SUM(A1)"
    assert pd.api.types.is_string_dtype(back["blank"]) and back["blank"].isna().all()
    assert back["blank"].fillna("").eq("").all() and back["number"].tolist() == [-0.5, 1.0]
