"""The web service takes patient metadata (age, sex, view) for a model trained with it:
form fields, else the upload's DICOM tags, else the training defaults, named in the answer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cxrkit.inference import load
from cxrkit.serve import create_app
from test_dicom import write_dicom
from test_export import make_checkpoint
from test_serve import client, images, lm  # noqa: F401 (fixtures: the phantom cnn4)
from test_serve import post, png_bytes


@pytest.fixture(scope="module")
def meta_lm(tmp_path_factory):
    """A cnn4 with metadata fusion (random weights: metadata moves its logits)."""
    folder = tmp_path_factory.mktemp("serve-meta")
    return load(
        make_checkpoint(folder, "cnn4", cache=32, input_size=32, model_kw={"meta_features": 4})
    )


@pytest.fixture(scope="module")
def meta_client(meta_lm):
    return TestClient(create_app(meta_lm))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)


def reference(lm, image, meta) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no OOD record, no thresholds
        return lm.predict(image, meta=meta)[list(lm.findings)].iloc[0].to_dict()


def probabilities(answer: dict) -> dict[str, float]:
    return {r["finding"]: r["probability"] for r in answer["findings"]}


def test_form_fields_reach_the_model(meta_client, meta_lm, image):
    info = meta_client.get("/info").json()
    assert info["takes_metadata"] is True and not (info["warning"] or "").count("does not take")
    r = post(meta_client, "/predict", "x.png", png_bytes(image), age="71", sex="male", view="ap")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"] == {
        "age": 71.0,
        "sex": "M",
        "view": "AP",
        "missing": [],
        "source": {"age": "form", "sex": "form", "view": "form"},
    }
    want = reference(meta_lm, image, [{"age": 71, "sex": "M", "view": "AP"}])
    assert probabilities(body) == pytest.approx(want, abs=1e-6)
    default = reference(meta_lm, image, [{"age": None, "sex": None, "view": None}])
    assert probabilities(body) != pytest.approx(default, abs=1e-4)  # metadata moved them

    # nothing sent: the training defaults, and the answer says which fields were missing
    r = post(meta_client, "/predict", "x.png", png_bytes(image))
    assert r.json()["metadata"]["missing"] == ["age", "sex", "view"]
    assert probabilities(r.json()) == pytest.approx(default, abs=1e-6)
    # DICOM's age form; empty fields count as not sent
    r = post(meta_client, "/predict", "x.png", png_bytes(image), age="058Y", sex="", view="")
    assert r.json()["metadata"]["age"] == 58.0
    assert r.json()["metadata"]["missing"] == ["sex", "view"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
def test_dicom_tags_fill_the_fields_not_sent(meta_client, meta_lm, image, tmp_path):
    path = write_dicom(
        tmp_path / "a.dcm", image, PatientAge="064Y", PatientSex="F", ViewPosition="AP"
    )
    r = post(meta_client, "/predict", "a.dcm", path.read_bytes(), sex="M")
    assert r.status_code == 200, r.text
    m = r.json()["metadata"]
    assert (m["age"], m["sex"], m["view"]) == (64.0, "M", "AP")
    assert m["source"] == {"age": "dicom", "sex": "form", "view": "dicom"}
    want = reference(
        meta_lm, np.asarray(Image.fromarray(image)), [{"age": 64, "sex": "M", "view": "AP"}]
    )
    assert probabilities(r.json()) == pytest.approx(want, abs=1e-6)
    # an unreadable tag is a missing value (as in cxrkit predict), not a refusal
    path = write_dicom(tmp_path / "b.dcm", image, PatientAge="abc", ViewPosition="LL")
    r = post(meta_client, "/predict", "b.dcm", path.read_bytes())
    assert r.status_code == 200 and r.json()["metadata"]["missing"] == ["age", "sex", "view"]


def test_explain_uses_the_same_metadata(meta_client, meta_lm, image):
    r = post(
        meta_client,
        "/explain",
        "x.png",
        png_bytes(image),
        age="30",
        sex="F",
        view="PA",
        finding="Effusion",
    )
    assert r.status_code == 200, r.text
    want = reference(meta_lm, image, [{"age": 30, "sex": "F", "view": "PA"}])
    assert r.json()["probability"] == pytest.approx(want["Effusion"], abs=1e-6)
    assert r.json()["metadata"]["missing"] == []


@pytest.mark.parametrize(
    "field,value,says",
    [
        ("age", "old", "not an age"),
        ("age", "414", "not an age"),
        ("age", "-3", "not an age"),
        ("sex", "X", "not a sex"),
        ("view", "LATERAL", "not a view"),
        ("age", "9" * 500, "not an age"),
    ],
)
def test_unreadable_fields_are_a_422_naming_the_field(meta_client, image, field, value, says):
    r = post(meta_client, "/predict", "x.png", png_bytes(image), **{field: value})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith(f"{field} ") and says in detail and len(detail) < 200
    assert meta_client.get("/healthz").status_code == 200  # still serving


def test_a_model_without_metadata_reports_none(client, images):
    """The phantom cnn4 takes no metadata: fields sent are ignored and the answer says so."""
    data = images[0].read_bytes()
    plain = post(client, "/predict", "p.png", data).json()
    sent = post(client, "/predict", "p.png", data, age="50", sex="M", view="AP").json()
    assert plain["takes_metadata"] is False and sent["metadata"] is None
    assert probabilities(sent) == probabilities(plain)
