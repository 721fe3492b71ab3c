"""``cxrkit import``: published model files in their real layouts -> run folders.

Each format's test writes a file laid out exactly as the public code writes it (random
weights), imports it, and compares the imported run's probabilities on real NIH images
with a reference network built and fed the way that code builds and feeds it (written
here, independently of cxrkit.importer), within 1e-5.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxrkit._compat import ensure_torchvision
from cxrkit.importer import (
    CheckImages,
    ImportFormatError,
    UntrainedModelWarning,
    import_model,
    read_published,
    untrained_check,
)
from cxrkit.labels import FINDINGS

ensure_torchvision()
import torchvision  # noqa: E402  (after ensure_torchvision)
from torchvision import transforms as T  # noqa: E402

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
#: arnoweng/CheXNet's test transform, its centre crop (one of its TenCrop's ten), and
#: torchvision's ImageNet evaluation transform: the same geometry
RESIZE256 = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(*IMAGENET)])
#: jrzech/reproduce-chexnet's val transform (Scale(224) is today's Resize(224))
RESIZE224 = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(*IMAGENET)])
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real_files(nih_sample) -> list[Path]:
    """Four real 256 px NIH images, spread over the sample."""
    return sorted((nih_sample / "images_256").glob("*.png"))[::400][:4]


def at_side(files, side: int) -> list[np.ndarray]:
    """The images as grey uint8 at ``side`` px (PIL resize: the authors' own resampler), so
    that neither pipeline resamples again."""
    out = []
    for f in files:
        im = Image.open(f).convert("L")
        out.append(
            np.asarray(im if im.size == (side, side) else im.resize((side, side), Image.BILINEAR))
        )
    return out


def checks(images) -> CheckImages:
    return CheckImages([f"img{i}" for i in range(len(images))], list(images), None, "test")


def cxrkit_probs(run, images) -> np.ndarray:
    import cxrkit

    lm = cxrkit.load(run, precision="fp32")
    z = lm.logits_from_cached(np.stack(images)[:, None])
    return torch.sigmoid(torch.from_numpy(z).double()).numpy()


def authors_x(tf, images, *, rgb: bool = True) -> torch.Tensor:
    return torch.stack([tf(Image.fromarray(a).convert("RGB" if rgb else "L")) for a in images])


def authors_probs(net: nn.Module, tf, images, *, rgb: bool = True, sigmoid: bool = False):
    x = authors_x(tf, images, rgb=rgb)
    with torch.no_grad():
        out = net.eval()(x)
    return (torch.sigmoid(out) if sigmoid else out).double().numpy()


def chexnet_densenet() -> nn.Module:
    """torchvision DenseNet-121 with CheXNet's head: Linear(1024, 14) then Sigmoid."""
    net = torchvision.models.densenet121(weights=None)
    net.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())
    return net


def perturb_batchnorm(net: nn.Module, seed: int = 0) -> None:
    """Fresh BatchNorm statistics are 0/1: make them matter, as trained ones do."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.05)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.4 + 0.8)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.8)


def densenet_features(net, x):
    return F.adaptive_avg_pool2d(F.relu(net.features(x)), 1).flatten(1)


def calibrate_head(linear: nn.Linear, features: torch.Tensor, seed: int = 0) -> None:
    """Random weights give logits far from 0 (saturated probabilities, where any two
    pipelines agree): choose the head so each logit has spread 1 around a small offset
    over ``features``, the images the test compares on."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(linear.weight.shape, generator=g, dtype=torch.float64)
        f = features.double()
        w /= (f @ w.T).std(0)[:, None]
        b = -(f @ w.T).mean(0) + 0.5 * torch.randn(w.shape[0], generator=g, dtype=torch.float64)
        linear.weight.copy_(w.float())
        linear.bias.copy_(b.float())


def assert_informative(p: np.ndarray) -> None:
    """Probabilities away from 0 and 1 that vary over the images: a parity that means something."""
    assert 0.02 < np.median(p) < 0.98, p
    assert (p.std(0) > 1e-3).mean() > 0.5, p.std(0)


# -- chexnet-state-dict: arnoweng/CheXNet's model.pth.tar ------------------------------------
class ArnowengDenseNet121(nn.Module):
    """Their model class: torchvision densenet121 as attribute ``densenet121``."""

    def __init__(self):
        super().__init__()
        self.densenet121 = chexnet_densenet()

    def forward(self, x):
        return self.densenet121(x)


def old_names(key: str) -> str:
    return re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", key)


def new_names(key: str) -> str:
    return re.sub(r"\.(norm|conv)\.([12])\.", r".\1\2.", key)


@pytest.fixture(scope="module")
def arnoweng_file(tmp_path_factory, real_files):
    torch.manual_seed(1)
    model = nn.DataParallel(ArnowengDenseNet121())  # trained under DataParallel
    perturb_batchnorm(model)
    net = model.module.densenet121.eval()
    with torch.no_grad():
        feats = densenet_features(net, authors_x(RESIZE256, at_side(real_files, 256)))
    calibrate_head(net.classifier[0], feats, 1)
    state = {old_names(k): v for k, v in model.state_dict().items()}  # pre-0.4 names
    assert any(".norm.1." in k for k in state) and all(
        k.startswith("module.densenet121.") for k in state
    )
    path = tmp_path_factory.mktemp("arno") / "model.pth.tar"
    torch.save({"epoch": 9, "arch": "densenet121", "state_dict": state, "best_loss": 0.151}, path)
    return path


@pytest.fixture(scope="module")
def arnoweng_theirs(arnoweng_file, real_files):
    """The file loaded as their code loads it (strip ``module.``, rename the old keys, into
    their class) and its probabilities on the 256 px images (one DenseNet forward pass,
    shared by the torchvision test, whose file holds the same weights)."""
    ck = torch.load(arnoweng_file, weights_only=True)
    theirs = ArnowengDenseNet121()
    theirs.load_state_dict(
        {new_names(k.split("module.", 1)[-1]): v for k, v in ck["state_dict"].items()}
    )
    want = authors_probs(theirs, RESIZE256, at_side(real_files, 256))  # their Sigmoid
    assert_informative(want)
    return theirs, want


def test_chexnet_state_dict(arnoweng_file, arnoweng_theirs, real_files, tmp_path):
    images = at_side(real_files, 256)
    assert all(im.shape == (256, 256) for im in images)  # the files as they are
    m = import_model(arnoweng_file, "chexnet-state-dict", tmp_path / "run", images=checks(images))
    assert m["parity"]["passed"] and m["parity"]["max_abs_diff_probability"] <= TOL
    assert m["source"]["format"] == "chexnet-state-dict" and len(m["source"]["sha256"]) == 64
    assert [r["finding"] for r in m["outputs"]] == list(FINDINGS)
    # the whole public path: files -> cache stage -> contract -> probabilities (the files
    # are 256 px, so this is the same input as ``images``)
    import cxrkit
    from cxrkit.inference.predictor import OodMissingWarning

    with pytest.warns(OodMissingWarning, match="cxrkit ood"):  # an import fits no record
        table = cxrkit.load(tmp_path / "run", precision="fp32").predict(real_files)
    assert np.abs(table[list(FINDINGS)].to_numpy() - arnoweng_theirs[1]).max() <= TOL


# -- chexnet-pickled: jrzech/reproduce-chexnet's results/checkpoint --------------------------
@pytest.fixture(scope="module")
def jrzech_file(tmp_path_factory, arnoweng_theirs):
    """Their whole DenseNet object pickled: the arnoweng network's weights (its head was
    calibrated at 256 px; at their 224 px the logits still spread: assert_informative)."""
    model = copy.deepcopy(arnoweng_theirs[0].densenet121)
    path = tmp_path_factory.mktemp("jrzech") / "checkpoint"
    torch.save(
        {
            "model": model,
            "best_loss": 0.148,
            "epoch": 6,
            "rng_state": torch.get_rng_state(),
            "LR": 0.001,
        },
        path,
    )
    return path


def test_chexnet_pickled(jrzech_file, real_files, tmp_path):
    images = at_side(real_files, 224)  # their Resize(224), CenterCrop(224)
    m = import_model(jrzech_file, "chexnet-pickled", tmp_path / "run", images=checks(images))
    assert m["parity"]["passed"]
    assert m["source"]["wrapper"] == {"best_loss": 0.148, "epoch": 6, "LR": 0.001}
    theirs = torch.load(jrzech_file, weights_only=False)["model"]  # how their code loads it
    theirs.train(False)
    want = authors_probs(theirs, RESIZE224, images)
    assert_informative(want)
    assert np.abs(cxrkit_probs(tmp_path / "run", images) - want).max() <= TOL


def _payload_ran(path: str) -> str:
    Path(path).write_text("the pickled payload ran")
    return "boom"


class Payload:
    """An object that runs ``_payload_ran`` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _payload_ran, (self.marker,)


def test_pickled_file_with_an_unlisted_class_is_refused_and_nothing_runs(tmp_path):
    model = chexnet_densenet()
    marker = tmp_path / "ran.txt"
    path = tmp_path / "checkpoint"
    torch.save({"model": model, "epoch": 1, "extra": Payload(marker)}, path)
    with pytest.raises(ImportFormatError) as e:
        import_model(path, "chexnet-pickled", tmp_path / "run")
    msg = str(e.value)
    assert str(path) in msg and "_payload_ran" in msg and "allow-list" in msg
    assert not marker.exists() and not (tmp_path / "run").exists()
    # a legacy (pre-1.6, not zip) file goes through a restricted find_class instead
    legacy = tmp_path / "legacy"
    torch.save(
        {"model": model, "epoch": 1, "extra": Payload(marker)},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(ImportFormatError, match=r"refused: .*_payload_ran"):
        read_published(legacy, "chexnet-pickled")
    assert not marker.exists()
    # the same file unpickled without the allow-list does run it: the test can fail
    torch.load(path, weights_only=False)
    assert marker.read_text() == "the pickled payload ran"


def test_a_legacy_file_with_old_layer_names_reads_like_the_new_one(jrzech_file, tmp_path):
    """As the real 2018 files are: a legacy (pre-1.6) pickle of a DenseNet object from
    torchvision < 0.4, whose layers are ``norm.1``, ``conv.2`` and whose BatchNorms have no
    ``num_batches_tracked``: read, renamed, and its parity reference rebuilt fresh (today's
    class cannot run such an object)."""
    ck = torch.load(jrzech_file, weights_only=False)
    for layer in ck["model"].modules():
        if type(layer).__name__ == "_DenseLayer":
            mods = vars(layer)["_modules"]
            for new, old in (
                ("norm1", "norm.1"),
                ("conv1", "conv.1"),
                ("norm2", "norm.2"),
                ("conv2", "conv.2"),
            ):
                mods[old] = mods.pop(new)
        if isinstance(layer, nn.BatchNorm2d):
            del vars(layer)["_buffers"]["num_batches_tracked"]
    old = tmp_path / "checkpoint"
    torch.save(ck, old, _use_new_zipfile_serialization=False)
    a, b = read_published(jrzech_file, "chexnet-pickled"), read_published(old, "auto")
    assert b.format == "chexnet-pickled" and b.sigmoid_in_model and b.module is None
    assert sorted(a.authors_state) == sorted(b.authors_state)
    assert all(
        torch.equal(a.authors_state[k], b.authors_state[k])
        for k in a.authors_state
        if not k.endswith("num_batches_tracked")
    )
    assert b.extra == {"best_loss": 0.148, "epoch": 6, "LR": 0.001}


# -- torchxrayvision ------------------------------------------------------------------------
def test_torchxrayvision(real_files, tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    n = len(xrv.datasets.default_pathologies)
    thresholds = torch.rand(n, generator=torch.Generator().manual_seed(3)) * 0.3 + 0.02
    thresholds[15] = float("nan")  # Fracture: a blank output, as in the library's NIH model
    torch.manual_seed(3)
    ref = xrv.models.DenseNet(weights=None, op_threshs=thresholds)
    perturb_batchnorm(ref, 3)
    images = at_side(real_files, 224)
    crop, resize = xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)
    x = torch.stack(
        [torch.from_numpy(resize(crop(xrv.datasets.normalize(a, 255)[None]))) for a in images]
    )  # the library's own preprocessing
    with torch.no_grad():
        calibrate_head(ref.classifier, ref.eval().features2(x), 3)
    path = tmp_path / "xrv.pth"
    torch.save(ref.state_dict(), path)
    assert "op_threshs" in torch.load(path, weights_only=True)

    m = import_model(path, "torchxrayvision", tmp_path / "run", images=checks(images))
    assert m["parity"]["passed"]
    dropped = {r["index"]: r["dropped"] for r in m["outputs"] if r["dropped"]}
    assert set(dropped) == {14, 15, 16, 17} and "blank" in dropped[15]
    assert all("not one of" in dropped[i] for i in (14, 16, 17))

    theirs = xrv.models.DenseNet(weights=None, op_threshs=thresholds)
    theirs.load_state_dict(torch.load(path, weights_only=True))
    theirs.eval()
    with torch.no_grad():
        out = theirs(x).double().numpy()  # sigmoid + op_norm inside
    cols = [xrv.datasets.default_pathologies.index(f) for f in FINDINGS]
    assert_informative(out[:, cols])
    assert np.abs(cxrkit_probs(tmp_path / "run", images) - out[:, cols]).max() <= TOL


# -- torchvision / timm classifiers trained elsewhere ----------------------------------------
def test_torchvision_densenet121(arnoweng_theirs, real_files, tmp_path):
    """A torchvision DenseNet-121's own state dict (head ``classifier``, no sigmoid), holding
    the arnoweng network's weights: torchvision's model loads it and is that network with
    the sigmoid outside, so its probabilities are the ones already computed for it."""
    arno, want = arnoweng_theirs
    state = {
        k.replace("classifier.0.", "classifier."): v
        for k, v in arno.densenet121.state_dict().items()
    }
    path = tmp_path / "tv.pth"
    torch.save(state, path)
    theirs = torchvision.models.densenet121(weights=None, num_classes=14)
    theirs.load_state_dict(torch.load(path, weights_only=True))  # strict: every key theirs
    assert isinstance(theirs.classifier, nn.Linear) and torch.equal(
        theirs.classifier.weight, arno.densenet121.classifier[0].weight
    )
    images = at_side(real_files, 256)
    m = import_model(
        path, "torchvision", tmp_path / "run", arch="densenet121", images=checks(images)
    )
    assert m["parity"]["passed"] and m["output"].startswith("logit")
    assert np.abs(cxrkit_probs(tmp_path / "run", images) - want).max() <= TOL


def test_timm_mobilenet_v2(real_files, tmp_path):
    import timm
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(5)
    net = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=14)
    perturb_batchnorm(net, 5)
    tf = create_transform(**resolve_data_config({}, model=net))  # timm's eval transform
    side = next(t.size for t in tf.transforms if isinstance(t, T.Resize))
    images = at_side(real_files, side if isinstance(side, int) else side[0])
    with torch.no_grad():
        x = authors_x(tf, images)
        calibrate_head(
            net.classifier, net.eval().forward_head(net.forward_features(x), pre_logits=True), 5
        )
    path = tmp_path / "timm.pth"
    torch.save(net.state_dict(), path)
    m = import_model(path, "timm", tmp_path / "run", arch="mobilenetv2_100", images=checks(images))
    assert m["parity"]["passed"]
    want = authors_probs(net, tf, images, sigmoid=True)
    assert_informative(want)
    assert np.abs(cxrkit_probs(tmp_path / "run", images) - want).max() <= TOL


# -- errors name the file and what was expected -----------------------------------------------
def test_errors_name_file_and_expectation(arnoweng_file, tmp_path):
    ck = torch.load(arnoweng_file, weights_only=True)
    state = dict(ck["state_dict"])
    gone = "module.densenet121.features.denseblock2.denselayer3.conv.2.weight"
    del state[gone]
    missing = tmp_path / "missing.pth"
    torch.save({"state_dict": state}, missing)
    with pytest.raises(ImportFormatError) as e:
        import_model(missing, "chexnet-state-dict", tmp_path / "r1")
    msg = str(e.value)
    assert str(missing) in msg and re.search(
        r"\b1 of the model's \d+ keys missing from the file", msg
    )
    assert "backbone.features.denseblock2.denselayer3.conv2.weight" in msg
    assert "closest present: 'backbone.features.denseblock" in msg

    state = dict(ck["state_dict"])
    key = "module.densenet121.features.norm5.weight"
    state[key] = torch.ones(512)
    wrong = tmp_path / "shape.pth"
    torch.save({"state_dict": state}, wrong)
    with pytest.raises(ImportFormatError, match=r"\(512,\) in the file.*expects \(1024,\)"):
        import_model(wrong, "chexnet-state-dict", tmp_path / "r2")

    state = dict(ck["state_dict"])
    state["module.densenet121.classifier.0.weight"] = torch.zeros(15, 1024)
    with pytest.raises(ImportFormatError, match=r"shape \(15, 1024\), expected \(14, 1024\)"):
        torch.save({"state_dict": state}, wrong)
        import_model(wrong, "chexnet-state-dict", tmp_path / "r3")

    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ImportFormatError) as e:
        read_published(other, "auto")
    msg = str(e.value)
    assert str(other) in msg and "unknown format" in msg
    for tried in ("chexnet-pickled", "chexnet-state-dict", "torchxrayvision"):
        assert tried in msg
    with pytest.raises(ImportFormatError, match="unknown format 'keras'; formats: chexnet"):
        read_published(other, "keras")
    with pytest.raises(ImportFormatError, match="needs --arch"):
        read_published(other, "timm")
    from typer.testing import CliRunner

    from cxrkit.cli import app

    r = CliRunner().invoke(app, ["import", str(other), "--out", str(tmp_path / "r4")])
    assert r.exit_code == 2 and "unknown format; tried chexnet-pickled" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "r4").exists()


# -- the untrained check ----------------------------------------------------------------------
def test_untrained_check():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 14)) < 0.3).astype(np.float32)
    findings = list(FINDINGS)
    noise = rng.random((200, 14))
    assert "chance" in untrained_check(noise, y, findings)["warning"]
    trained = untrained_check(y * 0.6 + noise * 0.4, y, findings)
    assert trained["warning"] is None and trained["mean_auroc"] > 0.9
    const = untrained_check(np.full((200, 14), 0.3), y, findings)
    assert const["constant_outputs"] and "do not vary" in const["warning"]
    unlabelled = untrained_check(noise, None, findings)
    assert unlabelled["warning"] is None and unlabelled["mean_auroc"] is None


def test_a_constant_model_warns_on_import(arnoweng_file, real_files, tmp_path):
    ck = torch.load(arnoweng_file, weights_only=True)
    ck["state_dict"]["module.densenet121.classifier.0.weight"].zero_()  # loaded wrong
    path = tmp_path / "flat.pth.tar"
    torch.save(ck, path)
    images = at_side(real_files, 256)[:2]
    with pytest.warns(UntrainedModelWarning, match="do not vary"):
        m = import_model(path, "chexnet-state-dict", tmp_path / "run", images=checks(images))
    assert m["untrained_check"]["constant_outputs"] and m["parity"]["passed"]
    with pytest.raises(FileExistsError, match="already holds a run"):
        import_model(path, "chexnet-state-dict", tmp_path / "run")


# -- the imported run in the rest of cxrkit --------------------------------------------------
def test_imported_run_evaluates_compares_explains_serves_and_exports(
    phantom_prepared, phantom_run, real_files, tmp_path
):
    """A timm file imported against the phantom prepared folder, then the usual commands."""
    import timm
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from cxrkit.cli import app
    from cxrkit.serve import create_app

    torch.manual_seed(6)
    net = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=14)
    path = tmp_path / "timm.pth"
    torch.save(net.state_dict(), path)
    run = tmp_path / "run"
    cli = CliRunner()
    r = cli.invoke(
        app,
        [
            "import",
            str(path),
            "--format",
            "timm",
            "--arch",
            "mobilenet_v2",
            "--out",
            str(run),
            "--prepared",
            str(phantom_prepared.root),
            "--check-images",
            str(real_files[0]),
            "--check-images",
            str(real_files[1]),
            "--parity-count",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "parity on 2 image(s)" in r.output and "passed" in r.output
    assert {"best.pt", "config.yaml", "run.json"} <= {p.name for p in run.iterdir()}

    r = cli.invoke(
        app,
        [
            "evaluate",
            str(run),
            "--bootstrap",
            "20",
            "--subgroup-bootstrap",
            "5",
            "--no-report",
            "--gallery",
            "0",
            "--no-progress",
            "--precision",
            "fp32",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (run / "eval" / "test" / "metrics.json").exists() and (run / "thresholds.json").exists()

    baseline = shutil.copytree(phantom_run, tmp_path / "cnn4")  # trained on the same folder
    from cxrkit.evaluate import evaluate_checkpoint

    # evaluated as cheaply as the imported run (compare would evaluate it in full: a report,
    # a saliency gallery, 1000 resamples; compare's own test_report covers that path)
    evaluate_checkpoint(
        baseline, bootstrap=20, subgroup_bootstrap=5, report=False, gallery=0, progress=False
    )
    r = cli.invoke(
        app,
        [
            "compare",
            str(baseline),
            str(run),
            "--out",
            str(tmp_path / "cmp"),
            "--bootstrap",
            "20",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cmp" / "comparison.csv").exists() and "run" in r.output

    r = cli.invoke(
        app, ["explain", str(run), "test", "--limit", "2", "--top-k", "1", "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    assert list((run / "explain").rglob("*.png"))

    import cxrkit

    lm = cxrkit.load(run, precision="fp32")
    client = TestClient(create_app(lm))
    data = real_files[0].read_bytes()
    resp = client.post("/predict", files={"file": ("scan.png", data, "image/png")})
    assert resp.status_code == 200, resp.text
    got = {row["finding"]: row["probability"] for row in resp.json()["findings"]}
    want = lm.predict(real_files[0])[list(lm.findings)].iloc[0].to_dict()
    assert got == pytest.approx(want, abs=1e-6)

    r = cli.invoke(
        app, ["export", str(run), "--parity-images", str(real_files[0]), "--phantoms", "1"]
    )
    assert r.exit_code == 0, r.output
    assert "passed" in r.output and (run / "best.onnx").exists()
