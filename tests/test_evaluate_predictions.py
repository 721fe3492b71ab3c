"""``cxrkit evaluate PREDICTIONS.csv --release DIR``: any model's predictions, scored on NIH's protocol.

The real CheXNet's probabilities (``../shared/chexnet``) against the real label file and
the radiologists' labels (``../shared/nih``), each figure recomputed here independently
(scikit-learn, pandas on the raw files); and every malformed-file case of the strict
reader, each message checked for the line and the column.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import NIH
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrkit.artefacts import read_csv
from cxrkit.data.splits import LeakageError
from cxrkit.evaluate.predictions_file import PredictionsFormatError, read_predictions
from cxrkit.labels import FINDINGS

CHEXNET = NIH.parent / "chexnet" / "predictions.csv"
FAST = {"bootstrap": 20, "subgroup_bootstrap": 5}


def _need_chexnet():
    if not CHEXNET.exists() or not NIH.exists():
        pytest.skip(f"the shared CheXNet predictions or NIH sample are absent ({CHEXNET})")


@pytest.fixture(scope="module")
def release():
    _need_chexnet()
    from cxrkit.data.release import load_release

    return load_release(NIH)


@pytest.fixture(scope="module")
def nih_labels():
    """NIH's labels read independently: one 0/1 column per finding from Finding Labels."""
    _need_chexnet()
    raw = pd.read_csv(
        NIH / "meta" / "Data_Entry_2017.csv", usecols=["Image Index", "Finding Labels"]
    )
    found = raw["Finding Labels"].str.split("|")
    table = pd.DataFrame({f: found.apply(lambda s, f=f: f in s).astype(int) for f in FINDINGS})
    table.index = raw["Image Index"]
    return table


@pytest.fixture(scope="module")
def all_rows(release, tmp_path_factory):
    """The CheXNet file scored on every row (``--rows all``), report included."""
    from cxrkit.evaluate.external import evaluate_predictions

    out = tmp_path_factory.mktemp("chexnet") / "all"
    metrics = evaluate_predictions(
        CHEXNET, release=release, rows="all", out=out, name="CheXNet", **FAST
    )
    return out, metrics


def test_rows_all_auroc_equals_scikit_learn(all_rows, nih_labels):
    out, metrics = all_rows
    preds = pd.read_csv(CHEXNET)
    y = nih_labels.loc[preds["Image Index"]]
    assert metrics["n_images"] == len(preds) == 14_789
    assert metrics["protocol"]["rows"] == "all"
    for f in FINDINGS:
        expected = roc_auc_score(y[f], preds[f"prob_{f}"])
        assert abs(metrics["auroc"][f]["value"] - expected) < 1e-9, f
    table = pd.read_csv(out / "auroc.csv").set_index("finding")
    assert abs(table.loc["Hernia", "auroc"] - metrics["auroc"]["Hernia"]["value"]) < 1e-12
    cov = metrics["protocol"]["coverage"]
    assert (cov["scored_official_test"], cov["scored_train_val"]) == (3_429, 11_360)
    line = metrics["protocol"]["line"]
    assert "3,429 of the 25,596 official test images and 11,360 train_val images" in line
    assert "Not comparable" in line
    assert line in (out / "summary.md").read_text()
    assert metrics["thresholds"]["chosen_on"] is None and metrics["threshold_metrics"] == {}
    assert "not fitted" in (out / "report.html").read_text()
    assert metrics["calibration"]["ece"]["Effusion"] is not None  # ECE without fitting
    gallery = pd.read_csv(out / "gallery.csv")  # threshold-free: no threshold was fitted
    assert len(gallery) == 14 * 2 * 2 and gallery["threshold"].isna().all()
    assert "scored highest" in (out / "report.html").read_text()


def _expert(path, id_col: str, finding: str) -> pd.Series:
    raw = pd.read_csv(path, dtype=str)
    values = raw[finding].str.strip().map({"YES": 1.0, "NO": 0.0})
    return pd.Series(values.to_numpy(), index=raw[id_col]).dropna()


@pytest.mark.parametrize(
    "set_name,finding", [("all_findings", "Effusion"), ("four_findings", "Pneumothorax")]
)
def test_radiologists_table_recomputed_independently(all_rows, nih_labels, set_name, finding):
    """The model's AUROC against the radiologists and against NIH's labels on the same
    images, as the report shows them side by side, from the raw expert files."""
    out, _ = all_rows
    folder = NIH / "expert" / set_name
    if set_name == "all_findings":
        rad = _expert(folder / "test_labels.csv", "Image ID", finding)
    else:
        rad = pd.concat(
            [
                _expert(folder / name, "Image Index", finding)
                for name in ("test_labels.csv", "validation_labels.csv")
            ]
        )
    preds = pd.read_csv(CHEXNET).set_index("Image Index")
    ids = rad.index[rad.index.isin(preds.index)]
    p = preds.loc[ids, f"prob_{finding}"]
    against_rad = roc_auc_score(rad.loc[ids], p)
    against_nih = roc_auc_score(nih_labels.loc[ids, finding], p)
    section = json.loads((out / "radiologists.json").read_text())
    rec = next(r for r in section["sets"][set_name]["findings"] if r["finding"] == finding)
    assert rec["images"] == len(ids)
    assert abs(rec["auroc_radiologists"]["value"] - against_rad) < 1e-9
    assert abs(rec["auroc_nih"]["value"] - against_nih) < 1e-9
    d = rec["difference"]
    assert abs(d["value"] - (against_rad - against_nih)) < 1e-9
    assert d["lo"] is not None and d["lo"] <= d["value"] <= d["hi"]  # a paired interval
    html = (out / "report.html").read_text()
    assert f"{against_rad:.3f} [" in html and f"{against_nih:.3f} [" in html


def test_official_test_rows_state_their_coverage(release, tmp_path):
    from cxrkit.cli import app

    out = tmp_path / "official"
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(CHEXNET),
            "--release",
            str(NIH),
            "--out",
            str(out),
            "--bootstrap",
            "10",
            "--subgroup-bootstrap",
            "3",
            "--reference",
            "nih",
        ],
    )
    assert r.exit_code == 0, r.output
    coverage = "3,429 of its 25,596 images scored"
    assert coverage in r.output and "mean AUROC" in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 3_429 and metrics["split_protocol"] == "official"
    assert coverage in (out / "summary.md").read_text()
    assert coverage in (out / "report.html").read_text()
    assert "11,360 rows of the file are not on the list" in metrics["protocol"]["line"]
    r = CliRunner().invoke(app, ["evaluate", str(CHEXNET), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "--release" in r.output
    r = CliRunner().invoke(app, ["evaluate", str(CHEXNET), "--release", str(NIH), "--tta", "flip"])
    assert r.exit_code == 2 and "--tta apply to a checkpoint, not a predictions file" in r.output


# -- the protocol's refusals --------------------------------------------------------------
@pytest.fixture(scope="module")
def small(release):
    """The CheXNet file's official-test rows whose image is in the sample's images_256/
    (208), and 300 of its train_val rows, as DataFrames."""
    preds = pd.read_csv(CHEXNET)
    on_list = preds["Image Index"].isin(set(release.test))
    on_disk = preds["Image Index"].isin(set((NIH / "images_256.txt").read_text().split()))
    return preds[on_list & on_disk].reset_index(drop=True), preds[~on_list].head(300).reset_index(
        drop=True
    )


def test_trained_on_refuses_a_scored_patient(release, small, tmp_path):
    from cxrkit.evaluate.external import evaluate_predictions

    scored, _ = small
    labels = release.labels.set_index("image_id")
    image = scored["Image Index"].iloc[5]
    patient = labels.loc[image, "patient_id"]
    sibling = labels.index[(labels["patient_id"] == patient) & (labels.index != image)]
    other = labels.index[
        ~labels["patient_id"].isin(labels.loc[scored["Image Index"], "patient_id"])
    ][:50]
    trained = tmp_path / "train.txt"
    trained.write_text("\n".join([*other, sibling[0] if len(sibling) else image]) + "\n")
    with pytest.raises(
        LeakageError,
        match=r"1 patient\(s\) with \d+ scored image\(s\).*"
        rf"patient {patient} ",
    ):
        evaluate_predictions(
            scored,
            release=release,
            out=tmp_path / "o",
            trained_on=trained,
            report=False,
            reference="nih",
            **FAST,
        )
    split = tmp_path / "split.csv"  # a split file: its train and val rows count
    pd.DataFrame({"image_id": list(other), "patient_id": 0, "split": "train"}).to_csv(
        split, index=False
    )
    m = evaluate_predictions(
        scored,
        release=release,
        out=tmp_path / "ok",
        trained_on=split,
        report=False,
        reference="nih",
        **FAST,
    )
    assert m["trained_on"]["images"] == 50 and m["n_images"] == len(scored)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{other[0]}\nnot_an_image.png\n")
    with pytest.raises(ValueError, match="bad.txt, line 2: image id 'not_an_image.png'"):
        evaluate_predictions(
            scored,
            release=release,
            out=tmp_path / "o",
            trained_on=bad,
            report=False,
            reference="nih",
            **FAST,
        )


def test_thresholds_are_fitted_only_on_other_images(release, small, tmp_path):
    from cxrkit.evaluate.external import evaluate_predictions

    scored, val = small
    m = evaluate_predictions(
        scored,
        release=release,
        out=tmp_path / "fit",
        fit_on=val,
        report=True,
        reference="nih",
        images=NIH / "images_256",
        **FAST,
    )
    assert m["thresholds"]["chosen_on"] == "val" and m["fit_on"]["images"] == 300
    from cxrkit.metrics import youden_threshold

    y = release.labels.set_index("image_id").loc[val["Image Index"], "Effusion"].to_numpy()
    assert m["thresholds"]["youden"]["Effusion"] == pytest.approx(
        youden_threshold(y, val["prob_Effusion"].to_numpy())
    )
    assert m["calibration"]["temperature"] is not None
    assert (tmp_path / "fit" / "predictions_val.csv").exists()
    # the error gallery without a model: the images themselves, at the fitted thresholds
    gallery = pd.read_csv(tmp_path / "fit" / "gallery.csv")
    assert len(gallery) and gallery["threshold"].notna().all()
    assert all((tmp_path / "fit" / o).exists() for o in gallery["overlay"])
    fp = gallery[gallery["kind"] == "false positive"]
    assert (fp["probability"] >= fp["threshold"]).all() and (fp["reference_label"] == 0).all()
    html = (tmp_path / "fit" / "report.html").read_text()
    assert "Error gallery" in html and "image/jpeg;base64" in html
    assert "<h2>Data</h2><p>The scored images (test) and those thresholds" in html
    with pytest.raises(ValueError, match="also scored.*never on the scored ones"):
        evaluate_predictions(
            scored,
            release=release,
            out=tmp_path / "x",
            fit_on=pd.concat([val, scored.head(3)]),
            report=False,
            reference="nih",
            **FAST,
        )
    with pytest.raises(ValueError, match="no image of the official test list|none of its"):
        evaluate_predictions(val, release=release, out=tmp_path / "y", report=False, **FAST)


def test_threshold_choice_applies_to_predictions_files(release, small, tmp_path):
    """h20a's threshold choice inside score(): method, overrides and the provenance record,
    fitted on --fit-on only; an override without --fit-on is refused."""
    from cxrkit.evaluate.external import evaluate_predictions
    from cxrkit.evaluate.threshold_choice import fit_threshold

    scored, val = small
    m = evaluate_predictions(
        scored,
        release=release,
        out=tmp_path / "t",
        fit_on=val,
        report=False,
        reference="nih",
        threshold_method="sensitivity=0.9",
        threshold_overrides={"Effusion": 0.42},
        **FAST,
    )
    written = m["thresholds"]["written"]
    assert written["method"] == "sensitivity=0.9" and written["overrides"] == {"Effusion": 0.42}
    assert m["thresholds"]["used"]["Effusion"] == 0.42
    y = release.labels.set_index("image_id").loc[val["Image Index"], "Atelectasis"].to_numpy()
    assert m["thresholds"]["used"]["Atelectasis"] == pytest.approx(
        fit_threshold(y, val["prob_Atelectasis"].to_numpy(), "sensitivity", 0.9)
    )
    assert written["positives"]["Atelectasis"] == int((y == 1).sum())
    with pytest.raises(ValueError, match="--fit-on"):
        evaluate_predictions(
            scored,
            release=release,
            out=tmp_path / "u",
            report=False,
            reference="nih",
            threshold_overrides={"Effusion": 0.5},
            **FAST,
        )


# -- the strict reader ---------------------------------------------------------------------
KNOWN = ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"]


def _read(tmp_path, text: str, **kw):
    path = tmp_path / "preds.csv"
    path.write_text(text)
    return path, read_predictions(path, known_ids=KNOWN, **kw)


@pytest.mark.parametrize(
    "text,where,what",
    [
        (
            "Image Index,prob_Mass\n00000001_000.png,0.2\n00000009_000.png,0.3\n",
            "line 3, column 'Image Index'",
            "'00000009_000.png' is not an image of the release",
        ),
        (
            "Image Index,prob_Mass\n00000001_000.png,0.2\n00000001_000.png,0.3\n",
            "line 3, column 'Image Index'",
            "appears twice (first at line 2)",
        ),
        (
            "Image Index,prob_Mass\nimages/00000001_000.PNG,0.2\n00000002_000.png,0.1\n00000001_000.png,0.3\n",
            "line 4, column 'Image Index'",
            "image '00000001_000.png' appears twice (first at line 2)",
        ),
        (
            "image_id,Mass\n00000001_000.png,0.2\n00000002_000.png,1.5\n",
            "line 3, column 'Mass'",
            "1.5 is not a probability in [0, 1]",
        ),
        (
            "image_id,Mass\n00000001_000.png,-0.01\n",
            "line 2, column 'Mass'",
            "-0.01 is not a probability",
        ),
        (
            "image_id,Mass,Nodule\n00000001_000.png,0.1,0.2\n00000002_000.png,0.1,NaN\n",
            "line 3, column 'Nodule'",
            "NaN is not a prediction",
        ),
        (
            "image_id,Mass\n00000001_000.png,0.1\n00000002_000.png,\n",
            "line 3, column 'Mass'",
            "empty value",
        ),
        (
            "image_id,Mass\n00000001_000.png,high\n",
            "line 2, column 'Mass'",
            "'high' is not a number",
        ),
        (
            "image_id,Mass\n00000001_000.png,0.1\n\n00000002_000.png,0.2\n",
            "line 3, column 'image_id'",
            "empty image id",
        ),
        (
            "file,prob_Mass\n00000001_000.png,0.2\n",
            "line 1 (header)",
            "no id column: expected one of ['Image Index', 'image_id']; the header has ['file', ",
        ),
        ("Image Index,score\n00000001_000.png,0.2\n", "line 1 (header)", "no finding column"),
        (
            "Image Index,prob_Mass,prob_Tumour\n00000001_000.png,0.2,0.1\n",
            "line 1 (header), column 'prob_Tumour'",
            "is not one of the 14 findings",
        ),
        (
            "Image Index,Pleural Thickening,pleural_thickening\n00000001_000.png,0.2,0.1\n",
            "line 1 (header), column 'pleural_thickening'",
            "both name Pleural_Thickening",
        ),
    ],
)
def test_malformed_files_name_the_line_and_column(tmp_path, text, where, what):
    with pytest.raises(PredictionsFormatError) as e:
        _read(tmp_path, text)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'preds.csv'}, {where}: "), message
    assert what in message, message


def test_logits_must_be_finite_and_are_read_as_scores(tmp_path):
    with pytest.raises(PredictionsFormatError, match=r"line 3, column 'Mass': inf is not a finite"):
        _read(tmp_path, "image_id,Mass\n00000001_000.png,2.5\n00000002_000.png,inf\n", logits=True)
    _, t = _read(
        tmp_path, "image_id,Mass\n00000001_000.png,2.5\n00000002_000.png,-3\n", logits=True
    )
    assert t.probabilities[:, 0] == pytest.approx(1 / (1 + np.exp([-2.5, 3.0])))


def test_spellings_subsets_prefixes_and_cxrkit_own_files(tmp_path):
    _, t = _read(
        tmp_path,
        "Image Index,prob_Pleural Thickening,p_mass,prob_No Finding\n"
        "images/00000001_000.PNG,0.2,0.1,0.5\n00000002_000.png,0.3,0.4,0.5\n",
    )
    assert t.findings == ["Mass", "Pleural_Thickening"]
    assert list(t.image_ids) == ["00000001_000.png", "00000002_000.png"]
    assert any("matched to the release's images by file name" in n for n in t.notes)
    assert any("No column for 12 of the 14 findings" in n for n in t.notes)
    assert t.absent[0] == "Atelectasis"
    # cxrkit's own predictions_<split>.csv: labels under the bare names, p_ the probabilities
    own = pd.DataFrame(
        {"image_id": KNOWN[:2], "patient_id": [1, 1], "Mass": [1, 0], "p_Mass": [0.7, 0.2]}
    )
    t = read_predictions(own, known_ids=KNOWN)
    assert t.findings == ["Mass"] and t.values[:, 0].tolist() == [0.7, 0.2]
    with pytest.raises(PredictionsFormatError, match=r"^DataFrame, row 1, column 'p_Mass': "):
        read_predictions(own.assign(p_Mass=[0.7, 2.0]), known_ids=KNOWN)


# -- compare: a cxrkit run and the CheXNet file, on the images both scored -----------------
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A cnn4 trained briefly on the real sample's official split (32 px), evaluated."""
    import warnings

    from cxrkit.config import load_config
    from cxrkit.data.preprocessing import PreprocessSettings
    from cxrkit.data.prepare import prepare
    from cxrkit.engine.train import fit
    from cxrkit.evaluate import evaluate_checkpoint

    _need_chexnet()
    root = tmp_path_factory.mktemp("real_run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # label-file images absent from the sample
        prepared = prepare(
            NIH,
            root / "prepared",
            images_root=NIH / "images_256",
            label_file=NIH / "meta" / "Data_Entry_2017.csv",
            on_missing="drop",
            settings=PreprocessSettings(size=32),
            workers=0,
            progress=False,
            val_fraction=0.2,
        )
    cfg = load_config(
        None,
        [
            f"data.prepared={prepared.root}",
            f"out={root / 'cnn4'}",
            "data.batch_size=64",
            "model.name=cnn4",
            "train.epochs=1",
            "train.threads=1",
            "train.amp=none",
        ],
    )
    fit(cfg, show_progress=False)
    evaluate_checkpoint(root / "cnn4", gallery=0, report=False, progress=False, **FAST)
    return root / "cnn4"


def test_compare_a_run_with_the_chexnet_file_on_shared_images(real_run, all_rows, tmp_path):
    from cxrkit.evaluate.compare import compare_runs

    chexnet, _ = all_rows
    run_eval = real_run / "eval" / "test"
    out = compare_runs([run_eval, chexnet], out=tmp_path / "cmp", bootstrap=20, progress=False)
    run_ids = set(read_csv(run_eval / "predictions_test.csv", dtype=str)["image_id"])
    shared = run_ids & set(pd.read_csv(CHEXNET)["Image Index"])
    assert len(shared) > 50
    board = read_csv(out / "leaderboard.csv")
    assert set(board["entry"]) == {"cnn4", "all"} and (board["images"] == len(shared)).all()
    assert board.loc[0, "entry"] == "all"  # the real CheXNet ranks first
    assert list(board["mean_auroc"]) == sorted(board["mean_auroc"], reverse=True)
    md = (out / "comparison.md").read_text()
    assert f"use the {len(shared):,} images" in md
    assert (
        "## Leaderboard (shared images)" in (out / "leaderboard.md").read_text()
        or "# Leaderboard" in (out / "leaderboard.md").read_text()
    )
    summary = read_csv(out / "comparison.csv")
    assert list(summary["kind"]) == ["run", "predictions"]
    assert summary.loc[1, "Δ mean vs cnn4 (shared images)"].startswith("+")
    experts = read_csv(out / "radiologists.csv")  # paired on the expert images both scored
    assert experts["Δ all - cnn4 (vs radiologists)"].str.contains(r"on \d+ shared images").any()


# -- one evaluation path: a run's own predictions file scores as the run did ---------------
def test_a_runs_predictions_file_scores_as_the_run(phantom_run, phantom_release, tmp_path):
    """Evaluating a run is "make predictions, then score the table": its own
    predictions_test.csv, scored as a file, gives the run's numbers, intervals included."""
    import shutil

    from cxrkit.evaluate import evaluate_checkpoint
    from cxrkit.evaluate.external import evaluate_predictions

    run = shutil.copytree(phantom_run, tmp_path / "run")
    kw = {"bootstrap": 30, "subgroup_bootstrap": 5, "seed": 3}
    ran = evaluate_checkpoint(run, gallery=0, report=False, progress=False, reference="nih", **kw)
    scored = evaluate_predictions(
        run / "eval" / "test" / "predictions_test.csv",
        release=phantom_release,
        rows="all",
        out=tmp_path / "file",
        reference="nih",
        report=False,
        **kw,
    )
    assert scored["n_images"] == ran["n_images"] and scored["findings"] == ran["findings"]
    assert scored["auroc"] == ran["auroc"] and scored["mean_auroc"] == ran["mean_auroc"]
    assert scored["subgroups"] == ran["subgroups"]
    line = scored["protocol"]["line"]
    assert line.startswith("Protocol: all ") and "25,596" not in line  # phantoms: own list
    assert any(n.startswith("Phantom") for n in scored["notes"])
