"""cxrkit audit: each measure against an independent computation, the flag logic, the CLI
and the report section, and the planted-shortcut proof on phantoms."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrkit.audit.measures import (
    energy_shares,
    occlusion_peaks,
    probe,
    region_influence,
    saliency_share,
    size_detection,
    view_strata,
)


# -- measures against independent computations --------------------------------------------
def test_energy_share_by_hand():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0], maps[0, 2, 2] = 3.0, 1.0  # 1 of 4 units inside
    regions = np.zeros((2, 4, 4), bool)
    regions[:, 1:3, 1:3] = True  # 4 of 16 pixels
    share, area = energy_shares(maps, regions)
    assert share[0] == pytest.approx(0.25) and np.isnan(share[1])  # an empty map: no share
    assert area == pytest.approx([0.25, 0.25])
    s = saliency_share(maps, regions, ["a", "b"], n=50, seed=0)
    assert s["empty_maps"] == 1 and s["energy_inside"]["value"] == pytest.approx(0.25)
    assert s["excess"]["value"] == pytest.approx(0.0)


class _TinyModel:
    """What :func:`cxrkit.audit.occlusion.occlusion_maps` needs of a LoadedModel: a small
    seeded conv net with two outputs on 8 x 8 images, the identity-like transform of
    cxrkit's (0..1, normalised), no metadata."""

    def __init__(self):
        from cxrkit.data.transforms import EvalTransform

        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 3, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(3 * 64, 2),
        )
        net = self.net

        class Model(torch.nn.Module):  # cxrkit's models take (images, metadata)
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x, m=None):
                return self.net(x)

        self.model = Model()
        self.transform = EvalTransform(8)
        self.device = torch.device("cpu")

    def _meta(self, n, meta):
        return None


def test_occlusion_maps_by_hand():
    """captum's Occlusion against a loop: every window position filled with the grey,
    the logit drop spread over the window's pixels, averaged by how many windows cover
    each pixel."""
    from cxrkit.audit.occlusion import occlusion_maps

    lm = _TinyModel()
    net = lm.net
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 8, 8)).astype(np.uint8)
    got = occlusion_maps(lm, images, 1, 100, window=4, stride=2)
    want = np.zeros((2, 8, 8))
    count = np.zeros((8, 8))

    def score(img):
        x = torch.from_numpy(img.astype(np.float32) / 255.0)[None, None]
        with torch.no_grad():
            return float(net((x - 0.5) / 0.25)[0, 1])

    for k, img in enumerate(images.astype(np.float64)):
        base = score(img)
        for y in range(0, 5, 2):
            for x in range(0, 5, 2):
                hidden = img.copy()
                hidden[y : y + 4, x : x + 4] = 100
                want[k, y : y + 4, x : x + 4] += base - score(hidden)
                if k == 0:
                    count[y : y + 4, x : x + 4] += 1
    want /= count
    assert got.shape == (2, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got > 0).any() and (got < 0).any()  # signed: the audit keeps the positive part


def test_occlusion_peaks_by_hand():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0], maps[0, 2, 2] = 3.0, 1.0
    maps[1, 1, 1], maps[1, 3, 0] = 2.0, 0.5
    regions = np.zeros((2, 4, 4), bool)
    regions[:, 1:3, 1:3] = True
    got = occlusion_peaks(maps, regions, 2.0, ["a", "b"], n=50, seed=0)
    assert got["peak_outside"]["value"] == pytest.approx((3.0 + 0.5) / 2 / 2.0)
    assert got["peak_inside"]["value"] == pytest.approx((1.0 + 2.0) / 2 / 2.0)
    assert got["peak_outside"]["lo"] <= got["peak_outside"]["value"] <= got["peak_outside"]["hi"]
    assert occlusion_peaks(maps, regions, 0.0, ["a", "b"], n=10, seed=0)["peak_outside"] == {
        "value": None,
        "lo": None,
        "hi": None,
    }


def test_region_influence_by_hand():
    rng = np.random.default_rng(3)
    full = rng.normal(size=(40, 2))
    chest = full + rng.normal(0, 2.0, size=(40, 2))  # hiding the outside moves it a lot
    outside = full + rng.normal(0, 0.5, size=(40, 2))
    groups = np.repeat(np.arange(20), 2)
    got = region_influence(
        full, chest, outside, np.full(40, 0.3), groups, ["A", "B"], n=200, seed=0
    )
    for j, f in enumerate(["A", "B"]):
        d_out, d_in = np.abs(full[:, j] - chest[:, j]), np.abs(full[:, j] - outside[:, j])
        r = got[f]
        assert r["outside_share"]["value"] == pytest.approx(
            d_out.sum() / (d_out.sum() + d_in.sum())
        )
        assert r["mean_shift_outside_blanked"]["value"] == pytest.approx(d_out.mean())
        assert r["mean_shift_chest_blanked"]["value"] == pytest.approx(d_in.mean())
        assert r["outside_area"] == pytest.approx(0.7) and r["images"] == 40
        sd = full[:, j].std()
        drop = (full[:, j] - chest[:, j]).clip(0) / sd
        assert r["evidence_outside"]["value"] == pytest.approx(drop.mean())
        assert r["evidence_chest"]["value"] == pytest.approx(
            ((full[:, j] - outside[:, j]).clip(0) / sd).mean()
        )
        assert r["logit_sd"] == pytest.approx(sd)
        s = r["outside_share"]
        assert s["lo"] < s["value"] < s["hi"] and s["lo"] > 0.6  # the outside dominates
    # the patient bootstrap by hand: the same resamples, the ratio of sums in each
    from cxrkit.metrics import patient_resamples

    d_out, d_in = np.abs(full[:, 0] - chest[:, 0]), np.abs(full[:, 0] - outside[:, 0])
    reps = [
        d_out[i].sum() / (d_out[i].sum() + d_in[i].sum()) for i in patient_resamples(groups, 200, 0)
    ]
    assert got["A"]["outside_share"]["lo"] == pytest.approx(np.quantile(reps, 0.025))


def test_probe_matches_scikit_learn_run_directly():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(60), 2)
    view = np.where(rng.uniform(size=60) < 0.4, "AP", "PA")[patients]
    x = rng.normal(size=(120, 6))
    x[:, 0] += 1.5 * (view == "AP")  # the features know the view
    got = probe(x, pd.Series(view), patients, seed=3, n=200)
    # by hand: the same folds, a fresh model per fold, AUROC of the out-of-fold P(PA)
    oof = np.zeros(120)
    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=3).split(
        x, view, patients
    ):
        m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        m.fit(x[train], view[train])
        oof[test] = m.predict_proba(x[test])[:, list(m.classes_).index("PA")]
    assert got["auroc"]["value"] == pytest.approx(roc_auc_score(view == "PA", oof), abs=1e-9)
    assert got["auroc"]["lo"] < got["auroc"]["value"] < got["auroc"]["hi"]
    assert got["auroc"]["value"] > 0.75 and got["classes"] == ["AP", "PA"]
    # a target the features do not know stays near chance
    noise = probe(x[:, 1:], pd.Series(view), patients, seed=3, n=200)
    assert noise["auroc"]["lo"] < 0.5 < noise["auroc"]["hi"] + 0.05


def test_probe_drops_classes_with_too_few_patients():
    rng = np.random.default_rng(1)
    y = pd.Series(["a"] * 30 + ["b"] * 30 + ["c"] * 2)
    got = probe(rng.normal(size=(62, 3)), y, np.arange(62), n=20)
    assert got["dropped"] == ["c"] and got["classes"] == ["a", "b"] and got["images"] == 60


def test_view_strata_match_scikit_learn_within_each_view():
    rng = np.random.default_rng(2)
    n = 200
    views = np.where(rng.uniform(size=n) < 0.5, "AP", "PA")
    y = (rng.uniform(size=(n, 1)) < 0.3).astype(float)
    p = y * 0.3 + rng.uniform(size=(n, 1)) + 0.5 * (views == "AP")[:, None]
    got = view_strata(y, p, np.arange(n), views, ["Mass"], n=100, seed=0)["Mass"]
    for name, rows in (("pooled", slice(None)), ("AP", views == "AP"), ("PA", views == "PA")):
        assert got[name]["value"] == pytest.approx(roc_auc_score(y[rows, 0], p[rows, 0]))
        assert got[name]["positives"] == int(y[rows, 0].sum())


def test_size_detection_rates_by_hand():
    area = np.arange(1, 17) / 100.0
    detected = np.array([0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1], bool)
    pairs = pd.DataFrame(
        {"patient_id": np.arange(16), "finding": "Mass", "area": area, "detected": detected}
    )
    got = size_detection(pairs, n=200, seed=0)
    assert [q["pairs"] for q in got["quartiles"]] == [4, 4, 4, 4]
    assert [q["value"] for q in got["quartiles"]] == [0.25, 0.5, 0.75, 1.0]
    assert got["largest_minus_smallest"]["value"] == pytest.approx(0.75)
    assert size_detection(pairs.head(5), n=10, seed=0)["quartiles"] == []


# -- flags -----------------------------------------------------------------------------------
def _ci(v, lo, hi):
    return {"value": v, "lo": lo, "hi": hi}


def _record(
    outside=(0.5, 0.4, 0.6),
    gain=(0.0, -0.02, 0.02),
    energy=(0.5, 0.4, 0.6),
    area=0.4,
    positives=30,
    ap=(0.8, 0.7, 0.9),
    evidence=((0.01, 0.0, 0.02), (0.0, 0.0, 0.0)),
    peak=((0.05, 0.02, 0.08), (0.0, 0.0, 0.0)),
):
    return {
        "region_influence": {
            "Mass": {
                "evidence_outside": _ci(*evidence[0]),
                "evidence_chest": _ci(*evidence[1]),
                "logit_sd": 1.0,
            }
        },
        "occlusion": {"Mass": {"peak_outside": _ci(*peak[0]), "peak_inside": _ci(*peak[1])}},
        "chest_region": {"area_share": area},
        "min_positives": 10,
        "region_reliance": {
            "Mass": {
                "positives": positives,
                "negatives": 200,
                "auroc": _ci(0.8, 0.7, 0.9),
                "auroc_chest_only": _ci(0.8 + gain[0], 0.7, 0.9),
                "auroc_outside_only": _ci(*outside),
                "chest_only_gain": _ci(*gain),
            }
        },
        "saliency": {
            "Mass": {
                "energy_inside": _ci(*energy),
                "area_inside": _ci(area, area, area),
                "excess": _ci(energy[0] - area, None, None),
            }
        },
        "view_strata": {
            "Mass": {
                "pooled": {**_ci(0.8, 0.7, 0.9), "positives": 30, "images": 230},
                "AP": {**_ci(*ap), "positives": 15, "images": 100},
                "PA": {**_ci(0.8, 0.7, 0.9), "positives": 15, "images": 130},
            }
        },
        "size": {"quartiles": []},
    }


def test_flags_follow_the_stated_thresholds():
    from cxrkit.audit import flags_for

    def measures(**kw):
        return sorted(f["measure"] for f in flags_for(_record(**kw)))

    assert measures() == []
    assert measures(outside=(0.75, 0.65, 0.85)) == ["auroc_outside_only"]
    assert measures(outside=(0.62, 0.52, 0.72)) == []  # keeps < half the margin
    assert measures(gain=(0.05, 0.01, 0.09)) == ["chest_only_gain"]
    assert measures(gain=(0.05, -0.01, 0.09)) == []  # interval includes 0
    assert measures(energy=(0.1, 0.05, 0.19)) == ["saliency_energy_inside"]  # < 0.5 x 0.4
    assert measures(energy=(0.3, 0.15, 0.21)) == []  # below the area, not half
    assert measures(ap=(0.6, 0.5, 0.7)) == ["auroc_AP_only"]
    assert measures(ap=(0.6, 0.5, 0.85)) == []  # interval reaches the pooled
    big, small = (0.6, 0.4, 0.8), (0.1, 0.0, 0.2)
    assert measures(evidence=(big, small)) == ["evidence_outside"]
    assert measures(evidence=((0.6, 0.08, 0.8), small)) == []  # lower end under 0.1
    assert measures(evidence=(big, (0.7, 0.5, 0.9))) == []  # the chest holds more
    assert measures(evidence=(big, (0.25, 0.1, 0.4))) == []  # outside < 3 x the chest's
    assert measures(evidence=(big, (0.19, 0.1, 0.3))) == ["evidence_outside"]  # > 3 x
    assert measures(peak=((0.7, 0.5, 0.9), (0.1, 0.0, 0.2))) == ["occlusion_peak_outside"]
    assert measures(peak=((0.7, 0.2, 0.9), (0.1, 0.0, 0.2))) == []  # lower end under 0.25
    assert measures(peak=((0.7, 0.5, 0.9), (0.8, 0.6, 1.0))) == []  # the chest's is larger
    assert measures(evidence=(big, small), peak=((0.7, 0.5, 0.9), (0, 0, 0)), positives=5) == []
    old = _record()
    del old["region_influence"], old["occlusion"]  # a cxrkit-audit/1 record
    assert flags_for(old) == []
    # too few positives, or a region that is the whole image: no region or saliency flags
    assert measures(outside=(0.75, 0.65, 0.85), positives=5) == []
    assert measures(energy=(0.1, 0.05, 0.19), area=0.95) == []
    flag = flags_for(_record(outside=(0.75, 0.65, 0.85)))[0]
    assert flag["finding"] == "Mass" and "0.75" in flag["action"] and flag["numbers"]


# -- phantoms: chest regions and the planted token -----------------------------------------
def test_shortcut_token_is_outside_the_chest_and_planted_as_stated(tmp_path):
    from cxrkit.data.images import read_xray
    from cxrkit.data.phantoms.shortcut import Shortcut, read_chest_regions
    from cxrkit.data.phantoms import make_phantoms

    kw = {"n_patients": 40, "image_size": 32, "seed": 5, "progress": False}
    clean = make_phantoms(tmp_path / "clean", **kw)
    planted = make_phantoms(tmp_path / "planted", shortcut="Nodule:0.7", **kw)
    regions = read_chest_regions(clean.root)
    labels = pd.read_csv(clean.label_file)
    test = set(clean.test_list.read_text().split())
    changed = {}
    for image_id in labels["Image Index"]:
        a, b = (
            read_xray(next(r.root.glob(f"images_*/images/{image_id}"))) for r in (clean, planted)
        )
        diff = a != b
        changed[image_id] = diff.any()
        assert not (diff & regions[image_id]).any()  # never inside the chest region
    nodule = labels.set_index("Image Index")["Finding Labels"].str.contains("Nodule")
    marked = pd.Series(changed)
    train_val = ~marked.index.isin(test)
    assert not marked[train_val & ~nodule.reindex(marked.index).to_numpy()].any()
    assert marked[train_val & nodule.reindex(marked.index).to_numpy()].mean() > 0.4
    assert 0.5 < marked[~train_val].mean() < 0.9  # random test images at 0.7
    manifest = json.loads(planted.manifest.read_text())
    assert manifest["shortcut_images"] == int(marked.sum())
    assert manifest["settings"]["shortcut"]["finding"] == "Nodule"
    assert 0.2 < np.mean([m.mean() for m in regions.values()]) < 0.6
    with pytest.raises(ValueError, match="FINDING:STRENGTH"):
        Shortcut.parse("Nodule")
    with pytest.raises(ValueError, match="strength"):
        Shortcut.parse("Nodule:1.5")


# -- on a trained phantom model: occlusion AUROC by hand, outputs, CLI, report --------------
@pytest.fixture(scope="module")
def audited(phantom_run, tmp_path_factory):
    from cxrkit.audit import audit_run

    run = tmp_path_factory.mktemp("audited") / "run"
    shutil.copytree(phantom_run, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = audit_run(run, bootstrap=50, saliency_limit=8, occlusion_limit=2, progress=False)
    return run, record


def test_occlusion_auroc_by_hand(audited):
    """Blank by hand (the release's own masks, the training images' mean), run the bare
    network, score with scikit-learn: the audit's three AUROCs, to float precision."""
    from cxrkit.data.phantoms.shortcut import read_chest_regions
    from cxrkit.inference.heldout import load_held_out
    from cxrkit.inference.core import load

    run, record = audited
    lm = load(run)
    data = load_held_out(lm)
    cache = data.prepared.cache
    test, train = data.table("test"), data.table("train")
    images = np.asarray(cache.images[cache.rows(test["image_id"].tolist())])
    masks = read_chest_regions(data.prepared.info["release_root"])
    chest = np.stack([masks[i] for i in test["image_id"]])  # 64 px release, 64 px cache
    fill = round(
        float(np.asarray(cache.images[cache.rows(train["image_id"].tolist())], np.float64).mean())
    )
    assert record["chest_region"]["blank_value"] == fill
    assert record["chest_region"]["source"].startswith("true lung fields")
    assert record["chest_region"]["area_share"] == pytest.approx(chest.mean())
    versions = {
        "auroc": images,
        "auroc_chest_only": np.where(chest, images, fill),
        "auroc_outside_only": np.where(chest, fill, images),
    }
    j = next(
        j
        for j, f in enumerate(lm.findings)
        if 0 < test[f].sum() < len(test) and not test[f].isna().any()
    )
    finding = lm.findings[j]
    for key, imgs in versions.items():
        x = lm.transform(torch.from_numpy(imgs.astype(np.uint8))[:, None])
        with torch.no_grad():
            score = lm.model(x).numpy()[:, j]
        want = roc_auc_score(test[finding].to_numpy(), score)
        assert record["region_reliance"][finding][key]["value"] == pytest.approx(want, abs=1e-6)


def test_audit_writes_its_files_and_the_report_shows_them(audited):
    from cxrkit.evaluate.report import render_html

    run, record = audited
    out = run / "audit" / "test"
    assert set(record["files"]) <= {p.name for p in out.iterdir()}
    saved = json.loads((out / "audit.json").read_text())
    assert saved["format"] == "cxrkit-audit/2" and set(saved["probes"]) == {
        "view",
        "sex",
        "age_band",
        "follow_up",
    }
    assert all(v["chance_auroc"] == 0.5 for v in saved["probes"].values())
    assert {"why", "value"} <= set(saved["thresholds"]["outside_retained"])
    summary = (out / "summary.md").read_text()
    assert "## Flags" in summary and "Chest region: true lung fields" in summary
    assert "## Region influence" in summary and "## Occlusion sensitivity" in summary
    assert "shortcut.png" in record["files"] and set(saved["region_influence"]) == set(
        saved["findings"]
    )
    assert {"outside_evidence", "occlusion_peak"} <= set(saved["thresholds"])
    from cxrkit.audit.report import audit_html

    section = audit_html(run)
    assert "Shortcut audit" in section and "data:image/png;base64" in section
    assert audit_html(run / "no-such-run") == ""
    # an audit written before the occlusion and region-influence measures still renders,
    # and says what it lacks
    from cxrkit.audit.report import summary_markdown

    old = {k: v for k, v in saved.items() if k not in ("region_influence", "occlusion")}
    old["format"] = "cxrkit-audit/1"
    assert "run `cxrkit audit` again" in summary_markdown(old)
    legacy = run.parent / "legacy"
    (legacy / "audit" / "test").mkdir(parents=True, exist_ok=True)
    (legacy / "audit" / "test" / "audit.json").write_text(json.dumps(old))
    html = audit_html(legacy)
    assert "cxrkit-audit/1" in html and "older cxrkit" in html
    assert callable(render_html)  # render_html appends audit_html(run_dir) after localisation


def test_cli_audit(audited, tmp_path):
    from typer.testing import CliRunner

    from cxrkit.cli import app

    run, _ = audited
    r = CliRunner().invoke(
        app,
        [
            "audit",
            str(run),
            "--split",
            "val",
            "--bootstrap",
            "20",
            "--saliency-limit",
            "4",
            "--occlusion-limit",
            "1",
            "--out",
            str(tmp_path / "a"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "audit of cnn4 on val" in r.output and (tmp_path / "a" / "audit.json").exists()
    bad = CliRunner().invoke(app, ["audit", str(tmp_path / "missing")])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


# -- the proof: a planted shortcut is flagged, the same recipe on a clean release is not ------
#: The recipe (the README's "Shortcut audit" has the numbers per seed): 300 phantom
#: patients at 64 px, noise-free labels, 30% test and 30% of train_val as val (enough
#: positives), a binary cnn4 for Infiltration (the commonest finding), 6 epochs at batch 16,
#: lr 1e-3, no scheduler (the defaults' lr 3e-3 with the plateau scheduler left both models
#: at the constant predictor's loss: nothing learnt, token or lungs); the token on 90% of
#: the training positives and of random test images. Audited on test, where the token is
#: on random images (so no AUROC can show it): the label-free measures (the logit's drop
#: with the outside blanked, occlusion sensitivity's peak outside the chest) flag the
#: planted model and not the clean one. Occlusion on 16 of the ~29 positives (runtime).
PLANTED = "Infiltration"


@pytest.fixture(scope="module")
def planted_pair(tmp_path_factory):
    from cxrkit.audit import audit_run
    from cxrkit.config import load_config
    from cxrkit.data.cache import PreprocessSettings
    from cxrkit.data.phantoms import make_phantoms
    from cxrkit.data.prepare import prepare
    from cxrkit.engine.train import fit

    records = {}
    for kind in ("clean", "planted"):
        root = tmp_path_factory.mktemp(kind)
        make_phantoms(
            root / "release",
            n_patients=300,
            image_size=64,
            seed=1,
            test_fraction=0.3,
            label_noise="none",
            progress=False,
            shortcut=f"{PLANTED}:0.9" if kind == "planted" else None,
        )
        p = prepare(
            root / "release",
            root / "prepared",
            settings=PreprocessSettings(size=64),
            val_fraction=0.3,
            workers=0,
            progress=False,
        )
        cfg = load_config(
            None,
            [
                f"data.prepared={p.root}",
                f"out={root / 'run'}",
                "data.batch_size=16",
                "model.name=cnn4",
                "train.epochs=6",
                "train.lr=1e-3",
                "train.scheduler=none",
                "train.threads=1",
                "train.amp=none",
                "train.patience=100",
                f"data.findings={PLANTED}",
                "train.seed=1",
            ],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(cfg, show_progress=False)
            records[kind] = audit_run(
                root / "run",
                split="test",
                bootstrap=100,
                saliency_limit=16,
                occlusion_limit=16,
                progress=False,
            )
    return records


#: The flags that say "the model reads outside the chest" (chest_only_gain says something
#: outside moves the score without carrying the finding: it fired on a weak clean model's
#: test split too, README).
OUTSIDE = {
    "auroc_outside_only",
    "evidence_outside",
    "occlusion_peak_outside",
    "saliency_energy_inside",
}


@pytest.mark.slow
def test_planted_shortcut_is_flagged_and_the_clean_model_is_not(planted_pair):
    """Seeds 1-3 of this recipe measured by the bench (README, "Shortcut audit"), on test
    (token on random images): the planted model's logit drops by 0.56 / 0.60 / 0.21 SD
    when the outside is blanked (interval's lower end 0.45 / 0.53 / 0.17), the clean one's
    by at most 0.002 (this test's own clean model, trained on one thread: 0.07); one patch outside the chest lowers the planted model's logit by up to
    0.54 / 0.57 / 1.01 SD on its positives (lower end 0.40 / 0.40 / 0.85), the clean one's
    by 0.02 / 0.05 / 0.03. The test runs seed 1 (occlusion on 16 positives)."""
    flagged = {
        kind: {f["measure"] for f in r["flags"] if f["finding"] == PLANTED}
        for kind, r in planted_pair.items()
    }
    assert {"evidence_outside", "occlusion_peak_outside"} <= flagged["planted"]
    assert not flagged["clean"] & OUTSIDE
    (p_shift, c_shift), (p_occ, c_occ) = (
        [planted_pair[k][block][PLANTED] for k in ("planted", "clean")]
        for block in ("region_influence", "occlusion")
    )
    assert p_shift["evidence_outside"]["lo"] > 0.1  # seen 0.17-0.53 over seeds 1-3
    # clean: <= 0.002 (upper end 0.005) on the bench's models, 0.07 [0.045, 0.10] on this
    # test's (trained on one thread), below its chest's 0.20
    assert c_shift["evidence_outside"]["hi"] < 0.15
    assert c_shift["evidence_outside"]["value"] < 3 * c_shift["evidence_chest"]["value"]
    assert p_occ["peak_outside"]["lo"] > 0.25  # seen 0.40-0.85 (here 0.47 on 16 positives)
    assert c_occ["peak_outside"]["hi"] < 0.15  # seen <= 0.06 (here 0.009)
    assert planted_pair["planted"]["chest_region"]["source"].startswith("true lung fields")
    assert planted_pair["planted"]["format"] == "cxrkit-audit/2"
    assert "occlusion_maps.png" in planted_pair["planted"]["files"]
    assert planted_pair["planted"]["region_reliance"][PLANTED]["positives"] >= 15
