"""Saliency maps (every registered model, every method), their geometry, and overlays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cxrkit.data.images import PreprocessSettings
from cxrkit.data.preprocessing import Preprocessing
from cxrkit.explain.overlay import overlay
from cxrkit.explain.saliency import METHODS, attention_maps, saliency_maps, to_cache_space
from cxrkit.inference import LoadedModel
from cxrkit.models import create_model, list_models

CACHE = 64


def loaded(
    model: nn.Module,
    *,
    input_size: int,
    eval_resize: int | None = None,
    mean: float = 0.5,
    std: float = 0.25,
    findings=None,
) -> LoadedModel:
    """A LoadedModel around an in-memory model (no checkpoint file needed)."""
    cfg = getattr(model, "cxr_config", None)
    pre = Preprocessing.from_dict(
        {
            "cache": PreprocessSettings(size=CACHE).to_dict(),
            "input_size": input_size,
            "eval_resize": eval_resize,
            "mean": cfg.mean if cfg else mean,
            "std": cfg.std if cfg else std,
            "channels": cfg.in_chans if cfg else 1,
        }
    )
    return LoadedModel(model.eval(), tuple(findings or cfg.findings), pre)


def images(n=2, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, CACHE, CACHE), dtype=torch.uint8, generator=g)


#: ViTs are built at 64 px (img_size); the other models take 56 px crops of 64 px, so
#: the crop-undoing geometry is exercised for every model. ViT-B/16 costs ~2 s on CPU at
#: 64 px (86 M parameters), kept because it is the only other token-reshape case.
@pytest.mark.parametrize("name", list_models())
def test_gradcam_every_registered_model(name):
    torch.manual_seed(0)
    vit = name.startswith("vit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, **({"img_size": 64} if vit else {}))
    lm = loaded(model, input_size=64 if vit else 56, eval_resize=None if vit else 64)
    methods = METHODS if name in ("cnn4", "gaussian_attention") else ("gradcam",)
    for method in methods:
        maps = saliency_maps(lm, images(), ["Effusion", 3], method=method)
        assert maps.shape == (2, CACHE, CACHE) and maps.dtype == np.float32
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        if not vit:  # the 4 px border the centre crop cut away was never seen
            assert maps[:, :3].max() == 0 and maps[:, :, -3:].max() == 0
    # a model whose weights are all frozen still gets maps (gradients w.r.t. the input)
    for p in model.parameters():
        p.requires_grad_(False)
    assert saliency_maps(lm, images(1), 0, method="gradcam").shape == (1, CACHE, CACHE)


class BoxModel(nn.Module):
    """Logit k = sum of the input inside box k of the model's input (a known answer)."""

    def __init__(self, boxes):
        super().__init__()
        self.boxes = boxes

    def forward(self, x, meta=None):
        return torch.stack(
            [x[:, 0, y0:y1, x0:x1].sum((-2, -1)) for (y0, y1, x0, x1) in self.boxes], 1
        )


@pytest.mark.parametrize("method", ["smoothgrad", "integrated-gradients"])
def test_maps_land_where_the_evidence_is_in_cache_pixels(method):
    # input 56 = centre crop (offset 4) of a 64 px resize of the 64 px cache image, so
    # tensor rows 10:20 are cache rows 14:24, and columns 30:40 are cache columns 34:44
    lm = loaded(
        BoxModel([(10, 20, 30, 40), (0, 56, 0, 28)]),
        input_size=56,
        eval_resize=64,
        findings=["Effusion", "Mass"],
    )
    bright = torch.full((1, 1, CACHE, CACHE), 200, dtype=torch.uint8)
    maps = saliency_maps(lm, bright, "Effusion", method=method)[0]
    inside = np.zeros_like(maps, bool)
    inside[14:24, 34:44] = True
    assert maps[15:23, 35:43].min() > 0.9
    assert maps[~inside].max() < 0.5
    per_image = saliency_maps(lm, bright.repeat(2, 1, 1, 1), ["Effusion", "Mass"], method=method)
    assert per_image[1][:, 40:].max() < 0.5 < per_image[1][10:50, 8:28].min()


def test_to_cache_space_undoes_resize_and_crop():
    lm = loaded(BoxModel([]), input_size=32, eval_resize=40, findings=["Mass"])
    # cache 64 -> resize 40 -> crop 32 at offset 4: the crop covers cache pixels 6.4..57.6
    m = to_cache_space(np.ones((1, 32, 32)), lm, 64)[0]
    assert m[32, 32] == 1 and m[:5].max() == 0 and m[-5:].max() == 0 and m[8:56, 8:56].min() == 1


def test_bad_inputs_are_named():
    lm = loaded(BoxModel([(0, 4, 0, 4)]), input_size=64, findings=["Mass"])
    with pytest.raises(ValueError, match="method must be one of"):
        saliency_maps(lm, images(1), 0, method="lime")
    with pytest.raises(ValueError, match="uint8 tensor"):
        saliency_maps(lm, images(1).float(), 0)
    with pytest.raises(ValueError, match="not one of the model's findings"):
        saliency_maps(lm, images(1), "Effusion")
    with pytest.raises(ValueError, match="one per image"):
        saliency_maps(lm, images(2), ["Mass"] * 3)


def test_gaussian_attention_maps_are_shown_in_cache_pixels():
    torch.manual_seed(0)
    model = create_model("gaussian_attention", findings=["Effusion", "Mass"])
    lm = loaded(model, input_size=56, eval_resize=64)
    a = attention_maps(lm, images(2))
    assert a.shape == (2, 2, CACHE, CACHE) and np.isclose(a.max(), 1.0, atol=0.05)
    assert attention_maps(loaded(create_model("cnn4"), input_size=64), images(1)) is None


def test_overlay_colours_the_map_and_writes_the_label():
    img = np.full((80, 100), 128, np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[:, 5:] = 1.0  # right half hot
    out = overlay(img, heat, alpha=0.5)
    assert out.shape == (80, 100, 3) and out.dtype == np.uint8
    assert out[40, 90, 0] > out[40, 90, 2]  # hot: red over blue (JET)
    assert out[40, 10, 2] > out[40, 10, 0]  # cold: blue over red
    labelled = overlay(img, heat, label="Effusion 0.83")
    assert (labelled[:8, :40] != overlay(img, heat)[:8, :40]).any()
    with pytest.raises(ValueError, match="grey uint8"):
        overlay(img.astype(float), heat)


# -- explain_images / explain_split / CLI ------------------------------------------------
def test_explain_split_writes_overlays_maps_and_index(phantom_run, tmp_path):
    import json

    import pandas as pd

    from cxrkit.explain.images import INDEX_COLUMNS, explain_split

    out = tmp_path / "explain"
    index = explain_split(
        phantom_run, out, split="test", method="gradcam", top_k=2, limit=3, progress=False
    )
    assert list(index.columns) == list(INDEX_COLUMNS) and len(index) == 6
    assert index.groupby("image_id")["rank"].apply(list).map(sorted).eq([[1, 2]] * 3).all()
    # rank 1 is the more probable finding of each image
    top = index.pivot(index="image_id", columns="rank", values="probability")
    assert (top[1] >= top[2]).all()
    on_disk = pd.read_csv(out / "index.csv")
    assert len(on_disk) == 6 and json.loads((out / "index.json").read_text())["rows"] == 6
    for rel_png, rel_npy in zip(on_disk["overlay"], on_disk["map"], strict=True):
        m = np.load(out / rel_npy)
        assert m.dtype == np.float32 and m.shape == (64, 64) and 0 <= m.min() <= m.max() <= 1
        assert (out / rel_png).stat().st_size > 0


def test_cli_explain_files_and_localize(phantom_run, phantom_release, tmp_path):
    import shutil

    import pandas as pd
    from typer.testing import CliRunner

    from cxrkit.cli import app

    run = tmp_path / "run"
    shutil.copytree(phantom_run, run)
    pngs = sorted(phantom_release.glob("images_*/images/*.png"))[:2]
    res = CliRunner().invoke(
        app,
        [
            "explain",
            str(run),
            *map(str, pngs),
            "--method",
            "smoothgrad",
            "--finding",
            "Effusion",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    index = pd.read_csv(run / "explain" / "index.csv")
    assert list(index["finding"]) == ["Effusion", "Effusion"]
    assert list(index["image"]) == [str(p) for p in pngs]
    res = CliRunner().invoke(app, ["localize", str(run), "--limit", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "pointing" in res.output and (run / "localize" / "accuracy.csv").exists()
    bad = CliRunner().invoke(app, ["explain", str(run), "test", "--method", "lime"])
    assert bad.exit_code == 2 and "method must be one of" in bad.output
