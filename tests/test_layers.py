"""Imports only go downward, by the one table in :mod:`cxrkit._layering`.

Every module of the package must be placed by the table (a module it does not know
fails), and every import is checked, module-level or inside a function, absolute or
relative, down to the module: a package that spans layers (``cxrkit.inference``) is
placed module by module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cxrkit._layering import LAYERS, ROOT_NAMES, layer_of, place
from cxrkit._moved import new_name

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrkit"
FILES = sorted(SRC.rglob("*.py"))


def placed_as(path: Path) -> str:
    """The table line that places a file: ``data/cache.py`` -> ``data``;
    ``inference/core.py`` -> ``inference.core``; ``__init__.py`` -> ``__init__``."""
    rel = module_name(path).removeprefix("cxrkit").removeprefix(".")
    return place(rel or "__init__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["cxrkit", *parts])


def imported(path: Path, source: str | None = None):
    """``(line, dotted module, names)`` for every import in ``path`` (or ``source``)."""
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    )
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base, tuple(a.name for a in node.names)


def violations(path: Path, source: str | None = None) -> list[str]:
    rel = path.relative_to(SRC)
    own = LAYERS[placed_as(path)]  # KeyError here: see test_every_module_is_placed
    found = []
    for line, module, names in imported(path, source):
        if not module.startswith("cxrkit"):
            continue
        for name, target in target_layers(module, names):
            if target > own:
                found.append(f"{rel}:{line} imports {name} (layer {target}) from layer {own}")
    return found


def target_layers(module: str, names: tuple[str, ...]):
    """The layers an import reaches: ``import m`` reaches ``m``; ``from m import x`` reaches
    submodule ``m.x`` where the table has a line for it (``from cxrkit.inference import
    core``, or an old path: ``from cxrkit import predict``), else ``m`` (a name defined
    there); the root's :data:`ROOT_NAMES` are layer 0."""
    if not names:
        yield module, layer_of(module)
        return
    for n in names:
        sub = new_name(f"{module}.{n}").removeprefix("cxrkit.")
        if module == "cxrkit" and n in ROOT_NAMES:
            yield f"cxrkit.{n}", 0
        elif sub in LAYERS:
            yield f"{module}.{n}", LAYERS[sub]
        else:
            yield f"{module}.{n}", layer_of(module)


def test_every_module_is_placed():
    unplaced = []
    for p in FILES:
        try:
            placed_as(p)
        except KeyError:
            unplaced.append(str(p.relative_to(SRC)))
    assert unplaced == [], (
        f"modules without a layer in cxrkit/_layering.py: {unplaced}; "
        "add each to LAYERS where it belongs"
    )
    present = {placed_as(p) for p in FILES}
    assert set(LAYERS) <= present, (
        f"LAYERS names modules that do not exist: {set(LAYERS) - present}"
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward(path):
    found = violations(path)
    assert found == [], "imports only go downward (cxrkit/_layering.py):\n" + "\n".join(found)


def test_the_check_can_fail():
    """Upward imports of every form are caught, and an unplaced module is an error."""
    cache = SRC / "data" / "cache.py"
    for source in (
        "from cxrkit.engine.train import fit",
        "def f():\n    import cxrkit.cli",
        "from ..inference import load",
        "from cxrkit import load",
        "from cxrkit import predict",
    ):
        assert violations(cache, source), source
    for source in (
        "from cxrkit import __version__",
        "from .images import preprocess",
        "from cxrkit.artefacts import write_json",
        "import numpy",
    ):
        assert violations(cache, source) == [], source
    with pytest.raises(KeyError):
        layer_of("cxrkit.not_a_module")


def test_the_check_sees_submodules():
    """Inside one package, a module of a lower layer may not import one of a higher layer:
    a check by top-level name (``inference`` -> ``inference``) would pass all of these."""
    thresholds = SRC / "inference" / "thresholds.py"  # layer 2, as data/ needs it
    predictor = SRC / "inference" / "predictor.py"  # layer 2
    for path, source in (
        (thresholds, "from cxrkit.inference.core import load"),
        (thresholds, "import cxrkit.inference.export"),
        (predictor, "from .runtime import choose_forward"),
        (predictor, "from . import core"),
        (predictor, "from cxrkit.inference import load"),
        (predictor, "from cxrkit import runtime"),
    ):  # an old path, moved
        assert violations(path, source), source
    for path, source in (
        (predictor, "from .thresholds import find_thresholds"),
        (predictor, "from cxrkit.data.preprocessing import Preprocessing"),
        (SRC / "data" / "cache.py", "from cxrkit.inference.predictor import Predictor"),
    ):
        assert violations(path, source) == [], source
    # a module of a package placed module by module needs its own line
    with pytest.raises(KeyError, match="module by module"):
        layer_of("cxrkit.inference.not_a_module")
    assert layer_of("cxrkit.export") == layer_of("cxrkit.inference.export") == 7
