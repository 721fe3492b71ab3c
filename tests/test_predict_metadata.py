"""Patient metadata at prediction: CSV beside the images, --metadata, DICOM tags, Python API."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import cxrkit
from cxrkit.cli import app
from cxrkit.data.metadata import metadata_vector, parse_age, resolve_metadata
from cxrkit.inference.predict import MetadataMissingWarning, predict_files
from test_dicom import write_dicom
from test_export import make_checkpoint


@pytest.fixture(scope="module")
def meta_model(tmp_path_factory):
    """A cnn4 with metadata fusion (random weights: metadata moves its logits)."""
    folder = tmp_path_factory.mktemp("meta")
    return make_checkpoint(folder, "cnn4", cache=32, input_size=32, model_kw={"meta_features": 4})


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / "imgs" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_parse_age_reads_dicom_and_nih_forms():
    assert parse_age("058Y") == 58 and parse_age("006M") == 0.5 and parse_age(45) == 45
    assert parse_age("014D") == pytest.approx(14 / 365.25)
    assert np.isnan(parse_age("414")) and np.isnan(parse_age("")) and np.isnan(parse_age(None))


def test_csv_beside_the_images_is_used_and_missing_fields_are_named(meta_model, images):
    pd.DataFrame(
        {
            "image": ["im0.png", "im1.png"],
            "age": ["071Y", ""],
            "sex": ["M", "F"],
            "view": ["AP", "PA"],
        }
    ).to_csv(images[0].parent / "metadata.csv", index=False)
    lm = cxrkit.load(meta_model)
    with pytest.warns(
        MetadataMissingWarning,
        match=r"2 image\(s\) lacked.*im1.png: age; "
        r"im2.png: age, sex, view",
    ):
        res = predict_files(lm, images, progress=False)
    assert res.metadata_missing == {str(images[1]): ["age"], str(images[2]): ["age", "sex", "view"]}
    want = metadata_vector(
        pd.DataFrame({"age": [71, None, None], "sex": ["M", "F", None], "view": ["AP", "PA", None]})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lm.predict(images, meta=want)[list(lm.findings)].to_numpy()
        default = lm.predict(images)[
            list(lm.findings)
        ].to_numpy()  # no metadata: the training defaults
    np.testing.assert_allclose(res.probabilities, ref, atol=1e-6)
    assert not np.allclose(res.probabilities[0], default[0])  # the CSV changed image 0
    np.testing.assert_allclose(res.probabilities[2], default[2], atol=1e-6)


def test_explicit_metadata_option_and_nih_columns(meta_model, images, tmp_path):
    csv = tmp_path / "Data_Entry.csv"
    pd.DataFrame(
        {
            "Image Index": [p.name for p in images],
            "Patient Age": [30, 40, 50],
            "Patient Gender": ["M", "F", "M"],
            "View Position": ["PA", "AP", "AP"],
        }
    ).to_csv(csv, index=False)
    out = tmp_path / "p.json"
    res = CliRunner().invoke(
        app,
        ["predict", str(meta_model), *map(str, images), "--metadata", str(csv), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "lacked patient metadata" not in res.output
    rec = json.loads(out.read_text())
    assert rec["metadata_missing"] == {}
    lm = cxrkit.load(meta_model)
    ref = lm.predict(
        images,
        meta=[
            {"age": 30, "sex": "M", "view": "PA"},
            {"age": 40, "sex": "F", "view": "AP"},
            {"age": 50, "sex": "M", "view": "AP"},
        ],
    )
    got = np.array([[r["probabilities"][f] for f in lm.findings] for r in rec["predictions"]])
    np.testing.assert_allclose(got, ref[list(lm.findings)].to_numpy(), atol=1e-6)


def test_dicom_tags_give_age_sex_and_view(meta_model, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    tagged = write_dicom(
        tmp_path / "a.dcm", pixels, PatientAge="058Y", PatientSex="M", ViewPosition="AP"
    )
    bare = write_dicom(tmp_path / "b.dcm", pixels)
    r = resolve_metadata([tagged, bare])
    np.testing.assert_allclose(r.vectors, [[0.58, 0, 1, 1], [0, 1, 0, 0]], atol=1e-6)
    assert r.missing == {str(bare): ["age", "sex", "view"]}
    assert r.sources == {str(tagged): "DICOM tags"}
    lm = cxrkit.load(meta_model)
    with pytest.warns(MetadataMissingWarning, match="b.dcm"):
        res = predict_files(lm, [tagged, bare], progress=False)
    assert not np.allclose(res.probabilities[0], res.probabilities[1])


def test_a_model_without_metadata_ignores_it_with_a_warning(tmp_path, images):
    ck = make_checkpoint(tmp_path, "cnn4", cache=32, input_size=32)
    with pytest.warns(MetadataMissingWarning, match="trained without patient metadata"):
        predict_files(
            cxrkit.load(ck),
            images,
            progress=False,
            metadata=pd.DataFrame({"image": ["im0.png"], "age": [3]}),
        )


def test_onnx_backend_takes_the_same_metadata(meta_model, images):
    from cxrkit.inference.export import export_onnx
    from cxrkit.inference.onnx_backend import load_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(meta_model, n_phantoms=1)
    meta = [{"age": "070Y", "sex": "F", "view": "AP"}] * len(images)
    om, lm = load_onnx(meta_model), cxrkit.load(meta_model)
    np.testing.assert_allclose(
        om.predict(images, meta=meta)[list(lm.findings)].to_numpy(),
        lm.predict(images, meta=meta)[list(lm.findings)].to_numpy(),
        atol=1e-5,
    )
