"""Hostile image files against ``cxrkit predict``/``explain`` (issue 19, items 1, 2, 10-13).

Every CLI run is a subprocess under a hard timeout (:func:`hostile_files.run_cli`), so a
regression that hangs fails the test instead of the suite.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from hostile_files import (
    deflate_bomb_dicom,
    dicom_bytes,
    dicom_dataset,
    exif_rotated_jpeg,
    good_dicom,
    j2k_zero_box_dicom,
    run_cli,
)


@pytest.fixture
def run_copy(phantom_run, tmp_path) -> Path:
    """A private copy of the shared phantom run (tests may write beside its checkpoint).

    Here, not in a ``tests/hostile/conftest.py``: a second module named ``conftest`` shadows
    ``tests/conftest.py`` for the test files that import its constants."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(phantom_run, dst)
    return dst


def _read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {Path(r["image"]).name: r for r in csv.DictReader(f)}


def _good_png(folder: Path, name: str = "good.png") -> Path:
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
    path = folder / name
    Image.fromarray(ramp).save(path)
    return path


def _predict(run: Path, *inputs, out: Path, extra=(), timeout: float = 120):
    """``cxrkit predict`` in a subprocess under a hard timeout (the DoS cases)."""
    return run_cli("predict", run, *inputs, "--out", out, "--no-progress", *extra, timeout=timeout)


def _invoke(*args):
    """The CLI in this process (cases that cannot hang): ``(exit code, stdout, stderr)``."""
    from typer.testing import CliRunner

    from cxrkit.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


def _predict_here(run: Path, *inputs, out: Path):
    return _invoke("predict", run, *inputs, "--out", out, "--no-progress")


def _assert_good_predicted(rows: dict, names):
    for n in names:
        assert rows[n]["error"] == "", rows[n]
        assert rows[n]["Effusion"] != "", rows[n]  # a probability was written


def _assert_one_line_errors(res, rows: dict, names):
    for n in names:
        err = rows[n]["error"]
        assert err and "\n" not in err, (n, err)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]


# -- 1: a JPEG 2000 DICOM that loops pydicom's parser for ever; a file that never ends -----------
def test_j2k_zero_length_box_fails_alone(run_copy, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "hostile.dcm").write_bytes(j2k_zero_box_dicom())
    _good_png(folder)
    out = tmp_path / "p.csv"
    res = _predict(run_copy, folder, out=out, extra=("--decode-timeout", "5"), timeout=90)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = _read_csv(out)
    _assert_good_predicted(rows, ["good.png"])
    err = rows["hostile.dcm"]["error"]
    assert "JPEG 2000" in err or "longer than 5 s" in err, err


def test_decode_deadline_stops_a_file_that_never_ends(run_copy, tmp_path):
    """The deadline itself: a FIFO named as an image blocks its reader for ever (no data,
    no end); the worker is killed at the deadline and the next file still decodes."""
    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)
    good = _good_png(tmp_path)
    out = tmp_path / "p.csv"
    res = _predict(run_copy, fifo, good, out=out, extra=("--decode-timeout", "2"), timeout=90)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = _read_csv(out)
    _assert_good_predicted(rows, ["good.png"])
    assert "longer than 2 s" in rows["stuck.png"]["error"], rows["stuck.png"]


# -- 2: Deflate bomb ----------------------------------------------------------------------------
def test_deflate_bomb_is_refused_before_it_inflates(run_copy, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.dcm").write_bytes(deflate_bomb_dicom(64))  # 64x64 px, 64 MB inflated
    (folder / "big.dcm").write_bytes(deflate_bomb_dicom(64, rows=4096, cols=8192, bits=16))
    _good_png(folder)
    out = tmp_path / "p.csv"
    # a small memory bound: the 64 Mpx image (allowed by max_pixels) needs more than 48 MiB
    res = _predict(run_copy, folder, out=out, extra=("--decode-memory", "48"))
    assert res.returncode == 1, res.stderr[-3000:]
    rows = _read_csv(out)
    _assert_good_predicted(rows, ["good.png"])
    assert "inflates past" in rows["bomb.dcm"]["error"], rows["bomb.dcm"]
    assert "decompression bomb" in rows["bomb.dcm"]["error"]
    assert "memory" in rows["big.dcm"]["error"] and "48 MiB" in rows["big.dcm"]["error"]


def test_deflated_dicom_still_reads(tmp_path):
    """The bound refuses bombs, not deflated files: a real deflated DICOM decodes as before."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from cxrkit.data.dicom import read_dicom, read_image

    ramp = np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8)
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(dicom_bytes(dicom_dataset(ramp)))
    deflated = tmp_path / "deflated.dcm"
    deflated.write_bytes(dicom_bytes(dicom_dataset(ramp, DeflatedExplicitVRLittleEndian)))
    assert np.array_equal(read_dicom(deflated), read_image(plain))
    assert np.array_equal(read_dicom(deflated), ramp)


# -- 10: EXIF orientation -------------------------------------------------------------------------
def test_exif_rotated_jpeg_reaches_the_model_upright(run_copy, tmp_path):
    data, upright = exif_rotated_jpeg(6)
    jpg = tmp_path / "film.jpg"
    jpg.write_bytes(data)
    png = tmp_path / "upright.png"
    Image.fromarray(upright).save(png)
    from cxrkit.data.images import read_xray

    img = read_xray(jpg)
    assert img.shape == upright.shape  # 96 high, 64 wide: turned upright
    assert np.abs(img.astype(int) - upright).mean() < 3  # JPEG noise only (sideways: ~75)
    out = tmp_path / "p.json"
    res = _invoke("predict", run_copy, jpg, png, "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    pred = {
        Path(r["image"]).name: r["probabilities"]
        for r in json.loads(out.read_text())["predictions"]
    }
    a, b = (np.array(list(pred[n].values())) for n in ("film.jpg", "upright.png"))
    assert np.abs(a - b).max() < 0.02, (a, b)


# -- 11: broken DICOMs: one-line errors, and every good result kept ------------------------------
def _broken_dicoms(folder: Path) -> list[str]:
    good = good_dicom()
    ds = dicom_dataset(np.zeros((32, 32), np.uint8))
    ds.Rows = None  # an empty Rows tag (TypeError before)
    files = {"empty_rows.dcm": dicom_bytes(ds)}
    for cut in (140, 200, 330, len(good) // 2, len(good) - 7):
        files[f"truncated_{cut}.dcm"] = good[:cut]
    rng = np.random.default_rng(0)
    for k in range(6):  # byte-flipped headers (struct.error, BytesLengthException, ...)
        b = bytearray(good)
        for pos in rng.integers(132, 420, size=3):
            b[pos] ^= 0xFF
        files[f"flipped_{k}.dcm"] = bytes(b)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return list(files)


def test_broken_dicoms_give_error_rows_and_keep_good_results(run_copy, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    names = _broken_dicoms(folder)
    (folder / "good.dcm").write_bytes(good_dicom())
    _good_png(folder, "a_good.png")
    _good_png(folder, "z_good.png")
    out = tmp_path / "p.csv"
    res = _predict_here(run_copy, folder, out=out)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = _read_csv(out)
    _assert_good_predicted(rows, ["a_good.png", "z_good.png", "good.dcm"])
    must_fail = ["empty_rows.dcm"] + [n for n in names if n.startswith("truncated")]
    _assert_one_line_errors(res, rows, must_fail)
    assert "Rows" in rows["empty_rows.dcm"]["error"]
    for n in names:  # a flip may land in a harmless byte; then the row is a prediction
        assert rows[n]["error"] or rows[n]["Effusion"], rows[n]
    assert "Traceback" not in res.stderr


def test_explain_keeps_good_images_when_one_is_broken(run_copy, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = _good_png(folder)
    bad = folder / "truncated.dcm"
    bad.write_bytes(good_dicom()[:200])
    out = tmp_path / "explain"
    res = _invoke(
        "explain",
        run_copy,
        good,
        bad,
        folder / "missing.png",
        "--out",
        out,
        "--finding",
        "Effusion",
        "--no-progress",
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    import pandas as pd

    index = pd.read_csv(out / "index.csv")
    assert list(index["image"]) == [str(good)] and (out / index["overlay"][0]).exists()
    errors = pd.read_csv(out / "errors.csv")
    assert set(errors["image"]) == {str(bad), str(folder / "missing.png")}
    assert f"{bad}" in res.stderr


# -- 12: unknown transfer syntax ----------------------------------------------------------------
def test_unknown_transfer_syntax_is_an_error_row(run_copy, tmp_path):
    ds = dicom_dataset(np.zeros((32, 32), np.uint8))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    path = tmp_path / "odd.dcm"
    path.write_bytes(dicom_bytes(ds))
    good = _good_png(tmp_path)
    out = tmp_path / "p.csv"
    res = _predict_here(run_copy, path, good, out=out)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = _read_csv(out)
    _assert_good_predicted(rows, ["good.png"])
    assert "1.2.3.4.5.6.7" in rows["odd.dcm"]["error"]


# -- 13: symbolic link loops and ** globs -------------------------------------------------------
_COLLECT = """
import json, sys
from cxrkit.inference.predict import collect_inputs
out = {}
for form in sys.argv[1:]:
    got = collect_inputs([form])
    out[form] = {"files": sorted(p.name for p in got.files),
                 "problems": {p.rsplit("/", 1)[-1]: why for p, why in got.problems}}
print(json.dumps(out))
"""


def test_symlink_loops_and_globs_are_bounded(run_copy, tmp_path):
    import subprocess
    import sys

    from hostile_files import REPO

    folder = tmp_path / "in"
    sub = folder / "sub"
    sub.mkdir(parents=True)
    _good_png(folder)
    _good_png(sub, "deep.png")
    os.symlink(".", folder / "loop1")  # two links to the folder itself
    os.symlink("..", sub / "loop2")  # and one to its parent
    os.symlink("self.png", folder / "self.png")  # a file link to itself
    forms = [str(folder), f"{folder}/**/*.png", f"{folder}/**"]
    try:  # file discovery alone, bounded (it looped exponentially before)
        r = subprocess.run(
            [sys.executable, "-c", _COLLECT, *forms],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("collecting the inputs did not finish within 30 s (symlink loop)")
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout)
    for form in forms:
        assert found[form]["files"] == ["deep.png", "good.png"], (form, found[form])
        assert "symbolic link loop" in found[form]["problems"]["self.png"], found[form]
    out = tmp_path / "p.csv"  # and the whole command, end to end
    res = _predict(run_copy, folder, out=out, timeout=90)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = _read_csv(out)
    assert sorted(rows) == ["deep.png", "good.png", "self.png"], rows
    _assert_good_predicted(rows, ["deep.png", "good.png"])
    assert "symbolic link loop" in rows["self.png"]["error"], rows["self.png"]


# -- the service: items 1, 2, 10, 11, 12 through /predict --------------------------------------
_SERVE = """
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from cxrkit.data.decoder import DecodeLimits
from cxrkit.serve import create_app
run, folder = sys.argv[1], Path(sys.argv[2])
app = create_app(run, decode_limits=DecodeLimits(timeout_s=3, memory_mb=48))
client = TestClient(app)
out = {}
for path in sorted(folder.iterdir()):
    r = client.post("/predict", files={"file": (path.name, path.read_bytes())})
    body = r.json()
    out[path.name] = {"status": r.status_code, "detail": body.get("detail"),
                      "image": body.get("image")}
out["healthz"] = client.get("/healthz").status_code
# the deadline itself: a bound no decode can meet, then the same service still answers
strict = TestClient(create_app(app.state.service.lm, decode_limits=DecodeLimits(timeout_s=0.001)))
big = (folder.parent / "big_good.dcm").read_bytes()  # 2048 px: far over 1 ms to decode
r = strict.post("/predict", files={"file": ("slow.dcm", big)})
out["deadline"] = {"status": r.status_code, "detail": r.json().get("detail"),
                   "healthz": strict.get("/healthz").status_code}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def served(phantom_run, tmp_path_factory) -> dict:
    """Every hostile upload posted to /predict of one app, in a subprocess under a hard
    timeout (a hang fails the tests, never the suite); then a good upload and /healthz."""
    import subprocess
    import sys

    from hostile_files import REPO

    folder = tmp_path_factory.mktemp("uploads")
    (folder / "j2k.dcm").write_bytes(j2k_zero_box_dicom())
    (folder / "bomb.dcm").write_bytes(deflate_bomb_dicom(64))
    (folder / "big.dcm").write_bytes(deflate_bomb_dicom(64, rows=4096, cols=8192, bits=16))
    ds = dicom_dataset(np.zeros((32, 32), np.uint8))
    ds.Rows = None
    (folder / "empty_rows.dcm").write_bytes(dicom_bytes(ds))
    (folder / "truncated.dcm").write_bytes(good_dicom()[:300])
    ds = dicom_dataset(np.zeros((32, 32), np.uint8))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    (folder / "unknown_ts.dcm").write_bytes(dicom_bytes(ds))
    data, _ = exif_rotated_jpeg(6)
    (folder / "rotated.jpg").write_bytes(data)
    (folder / "zz_good.dcm").write_bytes(good_dicom())  # after the hostile ones
    (folder.parent / "big_good.dcm").write_bytes(good_dicom(2048))
    try:
        r = subprocess.run(
            [sys.executable, "-c", _SERVE, str(phantom_run), str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"the service did not answer every upload within 120 s (hung): "
            f"{(e.stderr or b'')[-2000:]!r}"
        )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_serve_j2k_upload_is_a_422_and_the_service_keeps_serving(served):
    detail = served["j2k.dcm"]["detail"]
    assert served["j2k.dcm"]["status"] == 422 and detail.startswith("j2k.dcm")
    assert "JPEG 2000" in detail or "longer than 3 s" in detail, detail
    assert served["zz_good.dcm"]["status"] == 200 and served["healthz"] == 200


def test_serve_decode_deadline_is_a_422(served):
    d = served["deadline"]
    assert d["status"] == 422 and "slow.dcm" in d["detail"] and "longer than" in d["detail"]
    assert d["healthz"] == 200


def test_serve_deflate_bombs_are_refused(served):
    assert served["bomb.dcm"]["status"] == 422 and "inflates past" in served["bomb.dcm"]["detail"]
    assert served["big.dcm"]["status"] == 413 and "48 MiB" in served["big.dcm"]["detail"]


def test_serve_broken_dicoms_and_unknown_transfer_syntax_are_422(served):
    for name in ("empty_rows.dcm", "truncated.dcm", "unknown_ts.dcm"):
        assert served[name]["status"] == 422, (name, served[name])
        assert served[name]["detail"].startswith(name) and "\n" not in served[name]["detail"]
    assert "1.2.3.4.5.6.7" in served["unknown_ts.dcm"]["detail"]


def test_serve_exif_rotated_jpeg_is_upright(served):
    image = served["rotated.jpg"]["image"]
    assert served["rotated.jpg"]["status"] == 200
    assert (image["width"], image["height"]) == (64, 96)  # stored 96 wide, shown upright
