"""The web service: answers equal LoadedModel.predict, bad uploads get a clear 4xx, load."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cxrkit.artefacts import file_sha256
from cxrkit.inference import load, write_thresholds
from cxrkit.serve import background_server, create_app
from cxrkit.serve.app import STATIC
from test_dicom import write_dicom

MAX_UPLOAD = 1_000_000  # bytes: the NIH originals (0.3-0.7 MB) fit
MAX_PIXELS = 1024 * 1024  # the NIH originals (1024 x 1024) just fit


@pytest.fixture(scope="module")
def lm(phantom_run):
    return load(phantom_run)


@pytest.fixture(scope="module")
def client(lm):
    return TestClient(create_app(lm, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS))


@pytest.fixture(scope="module")
def images(phantom_release) -> list[Path]:
    return sorted(phantom_release.rglob("*.png"))


def post(client, path, name, data, **form):
    return client.post(
        path, files={"file": (name, data, "application/octet-stream")}, data=form or None
    )


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def expected(lm, path) -> dict[str, float]:
    return lm.predict(path)[list(lm.findings)].iloc[0].to_dict()


def assert_matches(answer: dict, want: dict[str, float], *, tolerance: float = 1e-9):
    got = {r["finding"]: r["probability"] for r in answer["findings"]}
    assert list(got) == list(want)  # the model's order
    assert got == pytest.approx(want, rel=0, abs=tolerance)


# -- /predict --------------------------------------------------------------------------------
def test_predict_equals_loaded_model(client, lm, images):
    r = post(client, "/predict", "scan.png", images[0].read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert_matches(body, expected(lm, images[0]))
    assert body["model"] == "cnn4" and body["checkpoint"] == lm.checkpoint.name
    assert body["checkpoint_sha256"] == file_sha256(lm.checkpoint)
    assert body["input_size"] == lm.input_size
    assert body["image"] == {
        "filename": "scan.png",
        "format": "PNG",
        "width": 64,
        "height": 64,
        "bytes": images[0].stat().st_size,
    }
    assert "not a medical device" in body["disclaimer"].lower()
    # no thresholds chosen for this run: 0.5 everywhere, and the response says so
    assert "0.5" in body["warning"] and "thresholds" in body["warning"]
    for row in body["findings"]:
        assert row["threshold"] == 0.5 and row["positive"] == (row["probability"] >= 0.5)


def test_thresholds_from_the_sidecar(phantom_run, tmp_path, images):
    run = shutil.copytree(phantom_run, tmp_path / "run")
    lm = load(run)
    chosen = {f: 0.1 + 0.05 * i for i, f in enumerate(lm.findings)}
    write_thresholds(lm, chosen, method="youden", chosen_on="val")
    c = TestClient(create_app(run, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS))
    body = post(c, "/predict", "a.png", images[1].read_bytes()).json()
    assert body["warning"] is None and "youden" in body["thresholds_source"]
    for row in body["findings"]:
        assert row["threshold"] == pytest.approx(chosen[row["finding"]])
        assert row["positive"] == (row["probability"] >= row["threshold"])
    assert c.get("/info").json()["thresholds"] == pytest.approx(chosen)


def test_odd_png_modes_and_jpeg_decode_like_the_training_reader(client, lm, images, tmp_path):
    grey = np.asarray(Image.open(images[2]))
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    sixteen = grey.astype(np.uint16) * 257 + 3
    files = {"rgba.png": png_bytes(rgba), "16bit.png": png_bytes(sixteen)}
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=90)
    files["scan.jpg"] = buf.getvalue()
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        r = post(client, "/predict", name, data)
        assert r.status_code == 200, (name, r.text)
        assert_matches(r.json(), expected(lm, path))  # read_xray on the same file


def test_real_rgba_nih_original(client, lm, nih_sample):
    path = nih_sample / "originals" / "images_001" / "images" / "00000004_000.png"
    assert Image.open(path).mode == "RGBA"
    r = post(client, "/predict", path.name, path.read_bytes())
    assert r.status_code == 200, r.text
    assert_matches(r.json(), expected(lm, path))
    assert r.json()["image"]["width"] == 1024


def test_dicom_upload(client, lm, images, tmp_path):
    pixels = np.asarray(Image.open(images[3])).astype(np.uint16) * 16  # 12-bit values
    path = write_dicom(tmp_path / "scan.dcm", pixels, bits_stored=12)
    ds = pydicom.dcmread(path)
    r = post(client, "/predict", "no-extension", path.read_bytes())
    assert r.status_code == 200, r.text
    assert r.json()["image"]["format"] == "DICOM"
    assert_matches(r.json(), expected(lm, path))
    # the header's Rows x Columns are checked before the pixel data is read
    ds.Rows, ds.Columns = 3000, 3000
    ds.save_as(path, enforce_file_format=True)
    r = post(client, "/predict", "huge.dcm", path.read_bytes())
    assert r.status_code == 413 and "3000x3000 pixels" in r.json()["detail"]
    del ds.Rows
    ds.save_as(path, enforce_file_format=True)
    r = post(client, "/predict", "norows.dcm", path.read_bytes())
    assert r.status_code == 422 and "DICOM header" in r.json()["detail"]


# -- refused uploads ---------------------------------------------------------------------------
def forged_png(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 256))
        + chunk(b"IEND", b"")
    )


def test_bad_uploads_get_a_clear_4xx_and_the_service_keeps_serving(client, lm, images):
    good = images[0].read_bytes()
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    cases = [
        ("empty.png", b"", 400, "empty file"),
        ("notes.png", b"these are not pixels\n" * 20, 415, "not a recognised image"),
        ("anim.png", gif.getvalue(), 415, "GIF"),
        ("cut.png", good[: len(good) // 2], 422, "cannot decode"),
        ("bomb.png", forged_png(100_000, 100_000), 413, "max_pixels"),  # Pillow's own guard
        ("claims.png", forged_png(3000, 3000), 413, "3000x3000 pixels"),  # ours, header only
        ("wide.png", png_bytes(np.zeros((1100, 1000), np.uint8)), 413, "1000x1100 pixels"),
        ("big.png", good + b"\0" * MAX_UPLOAD, 413, "max_upload_bytes"),
    ]
    for name, data, status, words in cases:
        for path in ("/predict", "/explain"):
            r = post(client, path, name, data)
            assert r.status_code == status, (name, path, r.text)
            detail = r.json()["detail"]
            assert words in detail, (name, detail)
            if status != 413 or "request body" not in detail:
                assert name in detail  # names the file
    r = client.post("/predict", data={"x": "1"})
    assert r.status_code == 422 and "file" in r.text  # no file field at all
    assert client.get("/healthz").json()["status"] == "ok"
    assert_matches(post(client, "/predict", "ok.png", good).json(), expected(lm, images[0]))


def multipart_stream(n_chunks: int, counter: list):
    """A well-formed multipart body whose file part is ``n_chunks`` x 10 kB."""
    yield (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    for _ in range(n_chunks):
        counter.append(1)
        yield b"x" * 10_000
    yield b"\r\n--b--\r\n"


def test_upload_size_limit_while_streaming(lm):
    """A body without Content-Length (chunked) is cut off at the limit, not buffered."""
    app = create_app(lm, max_upload_bytes=100_000, max_pixels=MAX_PIXELS)
    headers = {"content-type": "multipart/form-data; boundary=b"}
    with background_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/predict", content=multipart_stream(100, []), headers=headers)
        assert r.status_code == 413 and "max_upload_bytes" in r.json()["detail"]
        # a declared Content-Length over the limit is refused before the body is read
        r = c.post("/predict", content=b"x" * 200_000, headers=headers)
        assert r.status_code == 413 and "request body of 200,000 bytes" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200

    # at the ASGI level: the app stops reading at the limit (~17 of 1,000 chunks)
    consumed, sent = [], []
    body = multipart_stream(1000, consumed)

    async def receive():
        chunk = next(body, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", headers["content-type"].encode())],
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert len(consumed) <= 100_000 // 10_000 + 8 + 2  # limit + form overhead, not 10 MB


# -- /explain ----------------------------------------------------------------------------------
def test_explain_overlay_and_probability(client, lm, images):
    want = expected(lm, images[4])
    r = post(client, "/explain", "x.png", images[4].read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["finding"] == max(want, key=want.get)  # default: the most probable
    assert body["probability"] == pytest.approx(want[body["finding"]], abs=1e-9)
    png = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert png.format == "PNG" and png.mode == "RGB"
    assert png.size == (body["overlay_width"], body["overlay_height"]) == (512, 512)
    rgb = np.asarray(png).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 50  # colour heat, not the grey image

    r = post(client, "/explain", "x.png", images[4].read_bytes(), finding="pleural thickening")
    assert r.status_code == 200 and r.json()["finding"] == "Pleural_Thickening"
    assert r.json()["probability"] == pytest.approx(want["Pleural_Thickening"], abs=1e-9)
    r = post(client, "/explain", "x.png", images[4].read_bytes(), finding="Broken heart")
    assert r.status_code == 422 and "'Broken heart'" in r.json()["detail"]
    assert "Effusion" in r.json()["detail"]  # lists the model's findings


# -- page, schema ------------------------------------------------------------------------------
def test_openapi_lists_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/explain", "/healthz", "/info"} <= set(schema["paths"])
    predict = schema["paths"]["/predict"]["post"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"200", "400", "413", "415", "422"} <= set(predict["responses"])
    assert "not a medical device" in schema["info"]["description"].lower()


def test_page_is_self_contained_and_says_research_use_only(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "Research use only" in r.text and "not a medical device" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        # nothing from the internet: the only absolute URL is the SVG namespace name
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (name, urls)
        assert client.get(f"/static/{name}").status_code == 200
    for ref in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        assert ref.startswith("/"), ref


# -- under load, over real HTTP on loopback ------------------------------------------------
N_CONCURRENT = 24


def test_concurrent_uploads_on_loopback(lm, images):
    app = create_app(lm, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    chosen = images[:N_CONCURRENT]
    want = [expected(lm, p) for p in chosen]
    # distinct answers per image, so a mixed-up response could not pass
    assert len({round(w["Atelectasis"], 9) for w in want}) == len(chosen)

    async def hammer(url):
        limits = httpx.Limits(max_connections=N_CONCURRENT)
        async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as c:
            good = [
                c.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")})
                for p in chosen
            ]
            bad = [
                c.post("/predict", files={"file": (f"junk{i}.png", b"junk" * 40, "image/png")})
                for i in range(4)
            ]
            return await asyncio.gather(*good, *bad)

    with background_server(app, host="127.0.0.1") as url:
        assert url.startswith("http://127.0.0.1:")
        answers = asyncio.run(hammer(url))
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    for path, w, r in zip(chosen, want, answers):
        assert r.status_code == 200, r.text
        assert r.json()["image"]["filename"] == path.name
        # concurrent requests share batched forward passes: float rounding of another
        # batch size (measured 7e-8), nothing more (cxrkit.serve.batching)
        assert_matches(r.json(), w, tolerance=1e-6)
    assert [r.status_code for r in answers[len(chosen) :]] == [415] * 4


# -- the command -------------------------------------------------------------------------------
def test_cli_serve(phantom_run, images, tmp_path):
    from typer.testing import CliRunner

    from cxrkit.cli import app as cli

    r = CliRunner().invoke(cli, ["serve", str(tmp_path / "nothing-here")])
    assert r.exit_code == 2 and "checkpoint not found" in r.output

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cxrkit.cli",
            "serve",
            str(phantom_run),
            "--port",
            str(port),
            "--max-upload-mb",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["max_upload_bytes"] == 1024 * 1024 and info["model"] == "cnn4"
        r = httpx.post(
            f"{url}/predict", files={"file": ("a.png", images[0].read_bytes())}, timeout=30
        )
        assert r.status_code == 200 and len(r.json()["findings"]) == 14
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "research use only" in out


def test_a_huge_finding_field_is_cut_in_the_422(client, images):
    r = post(client, "/explain", "x.png", images[4].read_bytes(), finding="Q" * 500_000)
    assert r.status_code == 422 and "500,000 characters" in r.json()["detail"]
    assert len(r.text) < 2000


# -- slow connections ---------------------------------------------------------------------------
def _closed_within(sock, seconds: float) -> tuple[bool, bytes, float]:
    """Read until the server closes the socket or ``seconds`` pass: (closed, data, elapsed)."""
    sock.settimeout(0.2)
    data, t0 = b"", time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, data, time.monotonic() - t0
        if not chunk:
            return True, data, time.monotonic() - t0
        data += chunk
    return False, data, time.monotonic() - t0


def test_slow_connections_are_closed_after_the_header_and_read_timeouts(lm, images):
    app = create_app(lm, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    with background_server(app, header_timeout=1.0, read_timeout=1.0) as url:
        host, port = url.removeprefix("http://").split(":")
        # 1. headers that never finish (slowloris)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multi")
            closed, data, took = _closed_within(s, 6.0)
        assert closed and took < 4.0, (closed, took)
        assert data.startswith(b"HTTP/1.1 408")
        # 2. a body that stops arriving
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 100
            )
            closed, _, took = _closed_within(s, 6.0)
        assert closed and took < 4.0, (closed, took)
        # 3. headers that trickle in, each byte inside the read timeout, still time out
        with socket.create_connection((host, int(port))) as s:
            s.settimeout(0.2)
            t0, dead = time.monotonic(), False
            for byte in b"GET /info HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100:
                try:
                    s.sendall(bytes([byte]))
                    if s.recv(4096) == b"":
                        dead = True
                        break
                except TimeoutError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    dead = True
                    break
            assert dead and time.monotonic() - t0 < 4.0
        # the service still answers a normal request (and a keep-alive one after it)
        with httpx.Client(base_url=url) as c:
            assert c.get("/info").status_code == 200
            r = c.post("/predict", files={"file": ("x.png", images[0].read_bytes())})
            assert r.status_code == 200, r.text


def test_a_body_trickled_inside_the_pause_limit_still_has_a_deadline(lm, images):
    """Each chunk arrives well inside the 1 s pause limit, but the whole body is due in 2 s."""
    app = create_app(lm, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    with background_server(app, header_timeout=5.0, read_timeout=1.0, body_timeout=2.0) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n"
            )
            t0, dead = time.monotonic(), False
            while time.monotonic() - t0 < 8.0:
                try:
                    s.sendall(b"x" * 10)
                except (BrokenPipeError, ConnectionResetError):
                    dead = True
                    break
                s.settimeout(0.3)
                try:
                    if s.recv(4096) == b"":
                        dead = True
                        break
                except TimeoutError:
                    pass
            took = time.monotonic() - t0
        assert dead and 1.5 < took < 4.0, (dead, took)
        with httpx.Client(base_url=url) as c:
            assert c.get("/info").status_code == 200
            r = c.post("/predict", files={"file": ("x.png", images[0].read_bytes())})
            assert r.status_code == 200, r.text


def test_the_foreground_server_has_timeouts_too():
    from cxrkit.serve.runner import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, READ_TIMEOUT_S, server_config

    config = server_config(object(), host="127.0.0.1", port=8000)
    assert config.timeout_keep_alive > 0
    proto = config.http
    assert proto.header_timeout == HEADER_TIMEOUT_S and proto.read_timeout == READ_TIMEOUT_S
    assert proto.body_timeout == BODY_TIMEOUT_S
    assert 0 < HEADER_TIMEOUT_S <= 30 and 0 < READ_TIMEOUT_S <= 120
    assert READ_TIMEOUT_S < BODY_TIMEOUT_S <= 600
