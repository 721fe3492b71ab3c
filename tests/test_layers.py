"""Imports only go downward: labels -> config -> data -> models -> engine -> cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrkit"
#: lower number = lower layer; a module may import only its own layer or lower ones
LAYER = {"_compat": 0, "labels": 0, "messages": 0, "metrics": 0, "config": 1, "data": 2, "thresholds": 2,
         "preprocessing": 2, "predictor": 2, "ood": 2, "eda": 3, "onnx_backend": 5,
         "models": 3, "engine": 4, "inference": 5, "runtime": 5, "heldout": 5, "explain": 6, "evaluate": 7,
         "predict": 7, "export": 7, "serve": 8, "cli": 9}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "cxrkit" or len(parts) < 2:
        return None
    return LAYER.get(parts[1])


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward(path):
    rel = path.relative_to(SRC)
    own = LAYER.get(rel.parts[0].removesuffix(".py"))
    if own is None:
        return  # the package __init__
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            target = layer_of(name)
            assert target is None or target <= own, f"{rel} imports {name} (a higher layer)"
