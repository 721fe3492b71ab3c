"""Imports only go downward, by the one table in :mod:`cxrkit.layers`.

Every module of the package must be placed by the table (a module it does not know
fails), and every import is checked, module-level or inside a function, absolute or
relative.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cxrkit.layers import LAYERS, ROOT_NAMES, layer_of

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrkit"
FILES = sorted(SRC.rglob("*.py"))


def top_name(path: Path) -> str:
    """``data/cache.py`` -> ``data``; ``config.py`` -> ``config``; ``__init__.py`` -> ``__init__``."""
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["cxrkit", *parts])


def imported(path: Path, source: str | None = None):
    """``(line, dotted module, names)`` for every import in ``path`` (or ``source``)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base, tuple(a.name for a in node.names)


def violations(path: Path, source: str | None = None) -> list[str]:
    rel = path.relative_to(SRC)
    own = LAYERS[top_name(path)]  # KeyError here: see test_every_module_is_placed
    found = []
    for line, module, names in imported(path, source):
        if not module.startswith("cxrkit"):
            continue
        for name, target in target_layers(module, names):
            if target > own:
                found.append(f"{rel}:{line} imports {name} (layer {target}) from layer {own}")
    return found


def target_layers(module: str, names: tuple[str, ...]):
    """The layers an import reaches: ``from cxrkit import x`` reaches submodule ``x`` or,
    for a re-exported name, the layer of what it re-exports."""
    if module != "cxrkit":
        yield module, layer_of(module)
        return
    for n in names or ("<package>",):
        if n in ROOT_NAMES:
            yield f"cxrkit.{n}", 0
        elif n in LAYERS:
            yield f"cxrkit.{n}", LAYERS[n]
        else:
            yield f"cxrkit.{n}", LAYERS["__init__"]


def test_every_module_is_placed():
    unplaced = sorted({str(p.relative_to(SRC)) for p in FILES if top_name(p) not in LAYERS})
    assert unplaced == [], (f"modules without a layer in cxrkit/layers.py: {unplaced}; "
                            "add each to LAYERS where it belongs")
    present = {top_name(p) for p in FILES}
    assert set(LAYERS) <= present, f"LAYERS names modules that do not exist: {set(LAYERS) - present}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward(path):
    found = violations(path)
    assert found == [], "imports only go downward (cxrkit/layers.py):\n" + "\n".join(found)


def test_the_check_can_fail():
    """Upward imports of every form are caught, and an unplaced module is an error."""
    cache = SRC / "data" / "cache.py"
    for source in ("from cxrkit.engine.train import fit",
                   "def f():\n    import cxrkit.cli",
                   "from ..inference import load",
                   "from cxrkit import load",
                   "from cxrkit import predict"):
        assert violations(cache, source), source
    for source in ("from cxrkit import __version__", "from .images import preprocess",
                   "from cxrkit.artefacts import write_json", "import numpy"):
        assert violations(cache, source) == [], source
    with pytest.raises(KeyError):
        layer_of("cxrkit.not_a_module")
