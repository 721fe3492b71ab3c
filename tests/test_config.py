"""Run configs: YAML round trip, overrides, clear errors, and every shipped recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrkit.config import ConfigError, RunConfig, apply_overrides, load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_roundtrip(tmp_path):
    cfg = RunConfig()
    cfg.to_yaml(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "train.lr=1e-4",
            "data.findings=[Pneumonia, Mass]",
            "model.name=densenet121",
            "train.grad_clip=null",
            "out=x",
        ],
    )
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.model.name == "densenet121"
    assert cfg.data.findings == ["Pneumonia", "Mass"] and cfg.out == "x"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["train.lrate=1"], r"unknown key\(s\) \['lrate'\] in section 'train'"),
        (["trainer.lr=1"], r"unknown section"),
        (["train.optimizer=lion"], r"train.optimizer must be one of"),
        (["train.amp=int8"], r"train.amp"),
        (["model.in_chans=2"], r"in_chans"),
        (["data.box_fold=1.5"], r"box_fold"),
        (["train.lr"], r"not key=value"),
    ],
)
def test_bad_values_are_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(p)


def test_apply_overrides_does_not_mutate():
    d = {"train": {"lr": 1.0}}
    apply_overrides(d, ["train.lr=2"])
    assert d == {"train": {"lr": 1.0}}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_is_valid(recipe):
    """Each shipped recipe parses, names a registered model and known findings."""
    from cxrkit.labels import resolve_findings
    from cxrkit.models import list_models

    cfg = load_config(recipe)
    assert cfg.model.name in list_models(), f"{recipe.name}: unknown model {cfg.model.name}"
    assert resolve_findings(cfg.data.findings)
    assert cfg.out


def test_recipes_cover_every_model():
    from cxrkit.models import list_models

    used = {load_config(p).model.name for p in RECIPES}
    # ``published`` holds a network trained elsewhere: ``cxrkit import`` makes its runs,
    # no recipe trains it (tests/test_importer.py covers it)
    assert set(list_models()) - {"published"} <= used, set(list_models()) - used


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-3\n  epochs: '4'\n")
    cfg = load_config(p)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.epochs == 4
    p.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="train.lr: 'fast' is not a number"):
        load_config(p)


def test_config_errors_cut_huge_values():
    from cxrkit.config import ConfigError, load_config

    huge = "q" * 1_000_000
    for override in (f"train.lr={huge}", huge, f"train.{huge}=1", f"train.optimizer={huge}"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [override])
        assert len(str(info.value)) < 1500, str(info.value)[:200]
