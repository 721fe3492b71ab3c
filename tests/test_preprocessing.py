"""The preprocessing contract: its rules, its stored form, old checkpoints, and its users."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cxrkit
from cxrkit.config import ConfigError, load_config
from cxrkit.data.images import PreprocessSettings
from cxrkit.data.preprocessing import Preprocessing, UpsampledInputWarning, mirrored_tta_note
from test_export import make_checkpoint


def build(**kw):
    args = dict(
        cache=PreprocessSettings(size=64),
        model_name="cnn4",
        model_input_size=128,
        mean=0.5,
        std=0.25,
        channels=1,
    )
    args.update(kw)
    return Preprocessing.build(**args)


def test_defaults_come_from_the_registry_and_never_upsample():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = build()  # cnn4: 128 px, cache 64
        assert (p.input_size, p.eval_resize, p.tencrop_resize) == (64, 64, 73)
        p = build(cache=PreprocessSettings(size=256), model_input_size=224)
        assert (p.input_size, p.eval_resize, p.tencrop_resize) == (224, 224, 256)
        p = build(cache=PreprocessSettings(size=256), model_input_size=224, eval_resize=240)
        assert (p.input_size, p.eval_resize, p.tencrop_resize, p.crop_offset) == (224, 240, 240, 8)


def test_an_input_larger_than_the_cache_warns_with_the_way_out():
    with pytest.warns(
        UpsampledInputWarning,
        match=r"data.image_size=224 .* larger than the "
        r"cached images \(64 px\).*--size 224.*data.image_size=64",
    ):
        p = build(image_size=224)
    assert p.input_size == 224


def test_a_fixed_size_model_refuses_other_sizes_naming_the_field():
    with pytest.raises(
        ConfigError,
        match=r"data.image_size=100: vit_small_patch16_224 takes "
        r"only 224 px inputs \(allowed: 224",
    ):
        build(
            model_name="vit_small_patch16_224",
            model_input_size=224,
            fixed_input_size=True,
            image_size=100,
            cache=PreprocessSettings(size=256),
        )
    with pytest.raises(ConfigError, match="data.eval_resize=50 is smaller"):
        build(eval_resize=50)
    with pytest.raises(ConfigError, match="data.image_size must be a positive whole number"):
        build(image_size=1.5)


def test_a_vit_run_with_image_size_100_fails_at_build_time(phantom_prepared, tmp_path):
    """Before the contract this failed inside timm at the first training step."""
    from cxrkit.engine.train import fit

    cfg = load_config(
        None,
        [
            f"data.prepared={phantom_prepared.root}",
            f"out={tmp_path / 'r'}",
            "model.name=vit_small_patch16_224",
            "data.image_size=100",
            "train.epochs=1",
            "train.max_steps_per_epoch=1",
            "train.threads=1",
            "data.batch_size=4",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            ConfigError,
            match=r"data.image_size=100: vit_small_patch16_224 "
            r"takes only 224 px inputs \(allowed: 224",
        ):
            fit(cfg, show_progress=False)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_round_trip_and_refusals():
    p = build(
        cache=PreprocessSettings(size=96, clahe=True), image_size=80, eval_resize=90, hflip=True
    )
    assert Preprocessing.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="newer than this cxrkit"):
        Preprocessing.from_dict({**p.to_dict(), "format": "cxrkit-preprocess/99"})
    with pytest.raises(ValueError, match="must be >= input_size"):
        Preprocessing.from_dict({**p.to_dict(), "eval_resize": 10})


def test_a_checkpoint_written_before_the_contract_loads_with_its_old_geometry(tmp_path):
    """Old form: eval_resize None, no tencrop_resize, no hflip; TenCrop used 256/224."""
    ck = make_checkpoint(tmp_path, "cnn4", cache=64, input_size=56)
    saved = torch.load(ck, weights_only=True)
    assert "format" not in saved["preprocess"] and saved["preprocess"]["eval_resize"] is None
    lm = cxrkit.load(ck)
    p = lm.preprocessing
    assert (p.input_size, p.eval_resize, p.tencrop_resize, p.hflip) == (56, 56, 64, None)
    assert mirrored_tta_note(p, "flip") is None  # unknown training flips: no claim
    x = lm.load_images([np.full((70, 80), 100, np.uint8)])
    assert lm.logits_from_cached(x, tta="tencrop").shape == (1, 14)
    old = make_checkpoint(tmp_path / "b", "cnn4", cache=64, input_size=48, eval_resize=60)
    assert cxrkit.load(old).preprocessing.tencrop_resize == 60


def test_training_stores_the_contract_and_every_user_reads_it(phantom_run):
    from cxrkit.data.transforms import eval_transform
    from cxrkit.explain.saliency import to_cache_space

    saved = torch.load(phantom_run / "best.pt", weights_only=True)
    assert saved["preprocess"]["format"] == "cxrkit-preprocess/2"
    lm = cxrkit.load(phantom_run)
    p = lm.preprocessing
    assert p == Preprocessing.from_dict(saved["preprocess"]) and p.hflip is False
    assert lm.transform.size == eval_transform(p).size == p.input_size
    assert to_cache_space(np.ones((1, p.input_size, p.input_size)), lm).shape == (
        1,
        p.cache.size,
        p.cache.size,
    )


def test_training_warns_when_the_input_is_larger_than_the_cache(phantom_prepared, tmp_path):
    from cxrkit.engine.train import fit

    cfg = load_config(
        None,
        [
            f"data.prepared={phantom_prepared.root}",
            f"out={tmp_path / 'r'}",
            "model.name=cnn4",
            "data.image_size=96",
            "train.epochs=1",
            "train.max_steps_per_epoch=1",
            "train.threads=1",
            "train.amp=none",
            "data.batch_size=8",
        ],
    )
    with pytest.warns(UpsampledInputWarning, match="upsampled 1.5x"):
        fit(cfg, show_progress=False)
    assert cxrkit.load(tmp_path / "r").preprocessing.input_size == 96


def test_box_supervision_uses_the_contracts_scale():
    p = build(cache=PreprocessSettings(size=64), image_size=32)
    assert p.cache_box_to_train_input(10, 20, 8, 4) == (5.0, 10.0, 9.0, 12.0)


def test_mirrored_tta_is_flagged_only_for_models_trained_without_flips():
    assert mirrored_tta_note(build(hflip=True), "flip") is None
    assert "five of its ten crops are mirrored" in mirrored_tta_note(build(), "tencrop")
    assert "data.hflip=false" in mirrored_tta_note(build(), "flip")
    assert mirrored_tta_note(build(), "none") is None
    old = {
        "cache": PreprocessSettings(size=64).to_dict(),
        "input_size": 64,
        "eval_resize": None,
        "mean": 0.5,
        "std": 0.25,
        "channels": 1,
    }
    flips = {"data": {"hflip": True, "augment": True}}
    assert Preprocessing.from_checkpoint({"preprocess": old, "config": flips}).hflip is True
    flips["data"]["augment"] = False  # no augmentation: no flips either
    assert Preprocessing.from_checkpoint({"preprocess": old, "config": flips}).hflip is False
