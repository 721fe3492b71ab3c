"""The model registry: every registered model is built, run forward and backward, rebuilt
from its config; weights from files, the offline error, freeze policies, and the
Gaussian attention model's priors, maps and box loss. Small inputs (64 px) throughout."""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from cxrkit.labels import FINDINGS
from cxrkit.models import (
    PretrainedWeightsError,
    UnknownModelError,
    apply_freeze,
    box_attention_loss,
    create_model,
    fit_box_priors,
    list_models,
    parameter_layers,
    register_model,
)
from cxrkit.models.weights import load_model_state

MODELS = list_models()
SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads; on a busy 2-core machine two threads per
    op spin against other processes (measured: 3-5x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, **kw) -> nn.Module:
    """A model small enough for a CPU test: ViTs are built for 64 px inputs."""
    if name.startswith("vit"):
        kw.setdefault("img_size", SIZE)
    torch.manual_seed(0)
    return create_model(name, **kw)


def image(chans: int = 1, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, chans, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_registry_lists_the_required_models():
    required = {
        "cnn4",
        "lenet",
        "gaussian_attention",
        "densenet121",
        "mobilenet_v3_large",
        "mobilenet_v2",
        "resnet50",
        "efficientnet_b0",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
    }
    assert required <= set(MODELS)
    with pytest.raises(UnknownModelError, match="registered: .*densenet121"):
        create_model("densenet12")

    def cnn4(**kw):  # a second "cnn4" must not silently replace the first
        raise AssertionError

    with pytest.raises(ValueError, match="registered twice"):
        register_model(cnn4)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_metadata_fusion(name):
    model = build(name, meta_features=4)
    x, meta = image(1), torch.rand(2, 4)
    logits = model(x, meta)
    assert logits.shape == (2, len(FINDINGS)) and torch.isfinite(logits).all()
    logits.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
    first = model.cxr_config.first_conv + ".weight"
    assert grads[first].abs().sum() > 0

    model.eval()
    with torch.no_grad():
        a, b = model(x, meta), model(x, meta + 1.0)
    assert not torch.allclose(a, b), "changing age/sex/view must change the logits"
    with pytest.raises(ValueError, match="meta"):
        model(x)


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trip_three_channels_and_saliency_layer(name):
    model = build(name, in_chans=3, findings=["Effusion", "Pneumonia"])
    config = model.cxr_config.to_dict()
    json.dumps(config)  # plain data: fits YAML, JSON and a weights_only checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuilt = create_model(**config)
    own, new = model.state_dict(), rebuilt.state_dict()
    assert list(own) == list(new)
    assert all(own[k].shape == new[k].shape for k in own)
    rebuilt.load_state_dict(own)
    model.eval(), rebuilt.eval()
    x = image(3)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    assert model(x).shape == (2, 2)
    with pytest.raises(ValueError, match="expected input of shape"):
        model(image(1))

    cfg = model.cxr_config
    assert isinstance(model.get_submodule(cfg.first_conv), nn.Conv2d)
    assert model.get_submodule(cfg.first_conv).in_channels == 3
    assert model.get_submodule(cfg.classifier) is model.classifier
    assert 0 < cfg.std and 0 <= cfg.mean <= 1 and cfg.input_size >= SIZE
    seen = []
    handle = model.get_submodule(cfg.saliency_layer).register_forward_hook(
        lambda m, i, o: seen.append(o)
    )
    with torch.no_grad():
        fmap = model.forward_features(model.prepare_input(x))
    handle.remove()
    out = seen[-1]
    if cfg.saliency_prefix_tokens is None:
        assert out.ndim == 4 and out.shape[-2:] == fmap.shape[-2:]
    else:  # ViT tokens: drop the class token, the rest is the patch grid
        grid = fmap.shape[-2:].numel()
        assert out.ndim == 3 and out.shape[1] - cfg.saliency_prefix_tokens == grid


def test_config_survives_a_weights_only_checkpoint(tmp_path):
    priors = {"Cardiomegaly": {"mean": [0.5, 0.6], "cov": [[0.01, 0.0], [0.0, 0.005]]}}
    model = create_model("gaussian_attention", box_priors=priors, meta_features=4)
    torch.save(
        {"model": model.state_dict(), "model_config": model.cxr_config.to_dict()},
        tmp_path / "ck.pt",
    )
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    rebuilt = create_model(**ck["model_config"])
    rebuilt.load_state_dict(ck["model"])
    assert rebuilt.cxr_config == model.cxr_config


def test_arguments_are_checked():
    model = create_model("cnn4", findings=["Infiltrate", "Pleural Thickening"])
    assert model.cxr_config.findings == ("Infiltration", "Pleural_Thickening")
    with pytest.raises(ValueError):
        create_model("cnn4", findings=["No Finding"])
    with pytest.raises(ValueError, match="in_chans"):
        create_model("cnn4", in_chans=2)
    with pytest.raises(ValueError, match="chans_policy"):
        create_model("cnn4", chans_policy="average")
    with pytest.raises(TypeError, match="plain data"):
        create_model("cnn4", width=torch.tensor(8))
    with pytest.raises(ValueError, match="meta_features=0"):
        create_model("lenet")(image(1), torch.rand(2, 4))


# --- pretrained weights ------------------------------------------------------------


def test_offline_pretrained_fails_fast_with_instructions(monkeypatch):
    from cxrkit.models import backbones

    monkeypatch.setattr(backbones, "cached_hub_file", lambda hub_id: None)
    monkeypatch.setattr(
        backbones,
        "hub_unreachable_reason",
        lambda: "huggingface.co:443 unreachable (gaierror; no network?)",
    )
    with pytest.raises(PretrainedWeightsError) as err:
        create_model("densenet121", pretrained=True)
    msg = str(err.value)
    for part in (
        "could not download ImageNet weights for densenet121",
        "densenet121.tv_in1k",
        "no network",
        "model.weights=densenet121.tv_in1k.pth",
        "model.pretrained=false",
    ):
        assert part in msg
    with pytest.raises(PretrainedWeightsError, match="from scratch"):
        create_model("cnn4", pretrained=True)


def test_network_probe_answers_quickly_here():
    import time

    from cxrkit.models.weights import hub_unreachable_reason

    t0 = time.perf_counter()
    reason = hub_unreachable_reason()
    assert reason is None or "unreachable" in reason or "OFFLINE" in reason
    assert time.perf_counter() - t0 < 10


def _timm(name: str, **kw):
    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    torch.manual_seed(123)
    return timm.create_model(name, pretrained=False, **kw)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_imagenet_file_loads_and_folds_rgb(tmp_path, suffix):
    source = _timm("mobilenetv2_100")  # an RGB ImageNet-layout network, random weights
    path = tmp_path / f"mobilenetv2{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    src = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}

    rgb = create_model("mobilenet_v2", in_chans=3, weights=path)
    assert rgb.cxr_config.init == f"file:{path}"
    loaded = rgb.backbone.state_dict()
    assert set(loaded) == set(src) and all(torch.equal(loaded[k], src[k]) for k in src)

    grey = create_model("mobilenet_v2", in_chans=1, weights=path)
    stem = grey.backbone.conv_stem.weight
    assert stem.shape[1] == 1 and torch.allclose(stem, src["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(grey.backbone.blocks[2][0].conv_pw.weight, src["blocks.2.0.conv_pw.weight"])
    assert create_model(**grey.cxr_config.to_dict()).cxr_config.init == f"file:{path}"

    # folding the RGB kernel == replicating the grey channel into the RGB kernel
    rep = create_model("mobilenet_v2", in_chans=1, chans_policy="replicate", weights=path)
    rep.classifier.load_state_dict(grey.classifier.state_dict())
    grey.eval(), rep.eval()
    with torch.no_grad():
        assert torch.allclose(grey(image(1)), rep(image(1)), atol=1e-4)


def test_torchvision_densenet_file_for_chexnet(tmp_path):
    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    import torchvision

    tv = torchvision.models.densenet121()
    torch.save(tv.state_dict(), tmp_path / "densenet121-tv.pth")
    model = create_model("densenet121", weights=tmp_path / "densenet121-tv.pth")
    f = model.backbone.features
    norm = tv.features.denseblock1.denselayer1.norm1  # torchvision's "norm.1" keys remapped
    assert torch.equal(f.denseblock1.denselayer1.norm1.weight, norm.weight)
    assert torch.allclose(f.conv0.weight, tv.features.conv0.weight.sum(1, keepdim=True))


def test_mismatched_files_are_refused(tmp_path):
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedWeightsError, match="does not fit mobilenet_v2"):
        create_model("mobilenet_v2", weights=tmp_path / "other.pth")
    torch.save(_timm("efficientnet_b0").state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(PretrainedWeightsError, match="could not load it as mobilenet_v2"):
        create_model("mobilenet_v2", weights=tmp_path / "effnet.pth")
    with pytest.raises(FileNotFoundError):
        create_model("mobilenet_v2", weights=tmp_path / "absent.pth")


def test_cxrkit_model_file_round_trip_and_transfer(tmp_path):
    torch.manual_seed(3)
    trained = create_model("cnn4", in_chans=3)
    torch.save({"model": trained.state_dict()}, tmp_path / "run.pt")  # a checkpoint-like dict
    same = create_model("cnn4", in_chans=3, weights=tmp_path / "run.pt")
    assert all(
        torch.equal(a, b) for a, b in zip(trained.state_dict().values(), same.state_dict().values())
    )
    grey = create_model("cnn4", in_chans=1, weights=tmp_path / "run.pt")  # RGB stem folded
    assert torch.allclose(
        grey.backbone.blocks[0].conv.weight,
        trained.backbone.blocks[0].conv.weight.sum(1, keepdim=True),
    )
    with pytest.warns(UserWarning, match="classifier keeps its fresh"):
        one = create_model("cnn4", in_chans=3, findings=["Pneumonia"], weights=tmp_path / "run.pt")
    assert torch.equal(one.backbone.blocks[3].conv.weight, trained.backbone.blocks[3].conv.weight)
    with pytest.raises(PretrainedWeightsError, match="another architecture"):
        create_model("lenet", weights=tmp_path / "run.pt")


def test_one_key_mismatch_summary_for_loaders_and_importer():
    """models.weights.summarise_key_mismatch is the one summary (the importer's
    mismatch_message wraps it): counts, first keys, closest present and prefix, shapes."""
    from cxrkit.importer.formats import mismatch_message
    from cxrkit.models.weights import summarise_key_mismatch

    model = {"conv.weight": (8, 1, 3, 3), "fc.weight": (14, 8), "fc.bias": (14,)}
    assert summarise_key_mismatch(model, dict(model)) == ""
    assert mismatch_message("f.pth", model, dict(model), what="x") is None
    file = {"net.conv.weight": (8, 1, 3, 3), "fc.weight": (15, 8), "fc.bias": (14,)}
    line = summarise_key_mismatch(model, file)
    assert "1 of the model's 3 keys missing from the file (e.g. conv.weight (closest " in line
    assert "present: 'net.conv.weight'" in line
    assert "1 of the file's 3 keys not in the model (e.g. net.conv.weight)" in line
    assert "closest prefix: the file's keys start with 'net.'" in line
    assert "fc.weight has shape (15, 8) in the file, the model expects (14, 8)" in line
    assert "shape" not in summarise_key_mismatch(set(model), set(file))  # bare keys: no shapes
    msg = mismatch_message("f.pth", model, file, what="a cnn4")
    assert msg == f"f.pth: does not fit a cnn4: {line}"

    cnn = create_model("cnn4", in_chans=3)
    state = cnn.state_dict()
    key = next(k for k, v in state.items() if k.startswith("backbone.") and v.ndim == 4)
    state[key] = torch.zeros(1, *state[key].shape[1:])
    with pytest.raises(PretrainedWeightsError, match=rf"{key} has shape \(1, "):
        load_model_state(cnn, state, first_conv="x", classifier="classifier", source="f.pth")


# --- freezing ----------------------------------------------------------------------


def test_freeze_policies():
    model = create_model("densenet121")
    layers = parameter_layers(model)
    total = sum(p.numel() for p in model.parameters())

    counts = apply_freeze(model, "classifier-only")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.fc.1.weight", "classifier.fc.1.bias"}
    assert counts["trainable_params"] == sum(p.numel() for p in model.classifier.parameters())
    assert counts["frozen_params"] + counts["trainable_params"] == total

    counts = apply_freeze(model, "first-50")
    frozen = [n for n, m in layers if not any(p.requires_grad for p in m.parameters(recurse=False))]
    assert frozen == [n for n, _ in layers[:50]] and counts["frozen_layers"] == 50
    assert frozen[-1] == "backbone.features.denseblock2.denselayer6.conv1"  # as documented

    norm0 = model.backbone.features.norm0
    before = norm0.running_mean.clone()
    model.train()
    assert not norm0.training and model.backbone.features.norm5.training
    model(image(1))
    assert torch.equal(norm0.running_mean, before), "a frozen BatchNorm keeps its statistics"

    counts = apply_freeze(model, "no-train")
    assert counts["trainable_params"] == 0 and counts["frozen_params"] == total
    counts = apply_freeze(model, "none")
    assert counts["trainable_params"] == total and counts["frozen_layers"] == 0
    model.train()
    assert norm0.training
    with pytest.raises(ValueError, match="only 242 layers"):
        apply_freeze(model, "first-1000")
    with pytest.raises(ValueError, match="unknown freeze policy"):
        apply_freeze(model, "last-3")


# --- Gaussian attention --------------------------------------------------------------

BOXES = pd.DataFrame(
    {
        "image_id": ["a.png", "b.png", "c.png", "d.png"],
        "finding": ["Cardiomegaly", "Cardiomegaly", "Infiltrate", "Mass"],
        "x": [412.0, 452.0, 100.0, 700.0],
        "y": [500.0, 540.0, 200.0, 150.0],
        "w": [300.0, 260.0, 100.0, 50.0],
        "h": [200.0, 180.0, 100.0, 50.0],
    }
)
TARGETS = ("Cardiomegaly", "Infiltration", "Mass", "Hernia")


def test_box_priors_sit_where_the_boxes_are():
    priors = fit_box_priors(BOXES, TARGETS, image_size=1024)
    card = priors["Cardiomegaly"]
    assert card["n_boxes"] == 2
    assert card["mean"] == pytest.approx([(562 + 582) / 2 / 1024, (600 + 630) / 2 / 1024])
    cov = torch.tensor(card["cov"])
    assert torch.allclose(cov, cov.T) and torch.linalg.eigvalsh(cov).min() > 0
    assert cov[0, 0] > cov[1, 1]  # wider boxes than tall ones
    assert priors["Infiltration"]["mean"] == pytest.approx([150 / 1024, 250 / 1024])
    # one box: its extent alone
    assert priors["Mass"]["cov"][0][0] == pytest.approx((50 / 1024) ** 2 / 12)
    assert priors["Hernia"] == {
        "mean": [0.5, 0.5],
        "cov": [[1 / 12, 0.0], [0.0, 1 / 12]],
        "n_boxes": 0,
    }


def test_attention_maps_start_at_the_priors_and_sum_to_one():
    priors = fit_box_priors(BOXES, TARGETS)
    model = create_model("gaussian_attention", findings=TARGETS, box_priors=priors)
    x = image(1, batch=3)
    maps = model.attention_maps(x)
    assert maps.shape == (3, len(TARGETS), SIZE // 8, SIZE // 8)
    assert torch.allclose(maps.sum((-2, -1)), torch.ones(3, len(TARGETS)), atol=1e-5)
    assert (maps >= 0).all()
    h, w = maps.shape[-2:]
    for k, finding in enumerate(("Cardiomegaly", "Infiltration", "Mass")):
        row, col = divmod(int(maps[0, k].argmax()), w)
        mx, my = priors[finding]["mean"]
        assert col == int(mx * w) and row == int(my * h), finding
    card_cov = torch.tensor(priors["Cardiomegaly"]["cov"])
    assert torch.allclose(model.attention.covariance()[0], card_cov)
    model(x)  # attention_maps and forward agree on the grid
    assert model.attention_maps(x).shape[-2:] == (h, w)


def test_box_supervision_loss_prefers_attention_inside_the_box():
    priors = fit_box_priors(BOXES, TARGETS)
    model = create_model("gaussian_attention", findings=TARGETS, box_priors=priors)
    x = image(1, batch=1)
    maps = model.attention_maps(x)
    inside = torch.zeros(1, len(TARGETS), SIZE, SIZE)  # masks at input resolution
    outside = torch.zeros_like(inside)
    inside[0, 0, 36:52, 28:44] = 1  # around Cardiomegaly's prior
    outside[0, 0, 0:16, 0:16] = 1  # the top-left corner
    loss_in, loss_out = box_attention_loss(maps, inside), box_attention_loss(maps, outside)
    assert 0 <= loss_in < loss_out

    opt = torch.optim.Adam(model.attention.parameters(), lr=0.02)
    for _ in range(25):  # the loss pulls the Gaussian towards the box
        opt.zero_grad()
        loss = box_attention_loss(model.attention_maps(x), outside)
        loss.backward()
        opt.step()
    assert loss.item() < loss_out.item()
    assert model.attention.loc[0, 0] < priors["Cardiomegaly"]["mean"][0]

    empty = box_attention_loss(maps, torch.zeros_like(inside))
    assert empty.item() == 0 and empty.requires_grad


def test_attention_probe_leaves_batchnorm_alone():
    model = create_model("gaussian_attention").train()
    bn = model.backbone.blocks[0].bn
    before = bn.running_mean.clone()
    model.attention_maps(image(1))
    assert torch.equal(bn.running_mean, before) and model.training


def test_models_import_only_downward():
    """models/ may import labels and _compat, never data/, engine/ or anything above."""
    root = Path(__file__).resolve().parents[1] / "src" / "cxrkit" / "models"
    above = (
        "cxrkit.data",
        "cxrkit.engine",
        "cxrkit.evaluate",
        "cxrkit.explain",
        "cxrkit.cli",
        "cxrkit.inference",
        "cxrkit.serve",
        "cxrkit.config",
    )
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.startswith(above)], path.name


def test_a_model_declares_that_it_uses_box_priors():
    """Training asks the registry (``uses_box_priors``), not the model's name."""
    from cxrkit.models import list_models, uses_box_priors

    assert [n for n in list_models() if uses_box_priors(n)] == ["gaussian_attention"]
    with pytest.raises(UnknownModelError, match="unknown model"):
        uses_box_priors("not_a_model")
