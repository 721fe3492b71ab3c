"""Checkpoints: atomic writes, safe loads, RNG state round trip."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from cxrkit.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/cxrkit-pwned",))


def test_roundtrip_and_weights_only(tmp_path):
    state = {
        "model": {"w": torch.arange(3.0)},
        "epoch": 2,
        "history": [{"a": 1.0}],
        "rng": rng_state(),
    }
    path = save_checkpoint(state, tmp_path / "last.pt")
    back = load_checkpoint(path)
    assert back["epoch"] == 2 and torch.equal(back["model"]["w"], torch.arange(3.0))
    assert load_checkpoint(tmp_path)["epoch"] == 2  # a run folder resolves to its checkpoint
    assert not list(tmp_path.glob(".*.tmp"))


def test_code_executing_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "cxrkit-checkpoint/1", "model": Exploit()}, path)
    if os.path.exists("/tmp/cxrkit-pwned"):
        os.remove("/tmp/cxrkit-pwned")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/cxrkit-pwned")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cxrkit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_roundtrip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
