"""The bounded decoder itself (:mod:`cxrkit.data.decoder`): order, replacement, errors.

Each test body runs in a daemon thread joined with a timeout, so a deadlocked pool fails
the test instead of hanging the suite.
"""

from __future__ import annotations

import io
import os
import pickle
import threading

import numpy as np
import pytest
from PIL import Image

from hostile_files import good_dicom, j2k_zero_box_dicom


def bounded(fn, timeout: float = 60):
    """Run ``fn()`` in a daemon thread; fail if it does not return within ``timeout``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"did not finish within {timeout} s (a deadlocked decoder?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _png(value: int, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_imap_keeps_order_and_each_bad_file_fails_alone(tmp_path):
    from cxrkit.data.decoder import DecodeLimits, Decoder
    from cxrkit.data.preprocessing import PreprocessSettings

    paths = []
    for i in range(9):
        p = tmp_path / f"{i}.png"
        p.write_bytes(_png(20 * i) if i % 3 else b"not an image")
        paths.append(p)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    paths.insert(4, fifo)

    def run():
        with Decoder(2, limits=DecodeLimits(timeout_s=2)) as dec:
            return list(dec.imap(paths, cache=PreprocessSettings(size=16), ahead=3))

    out = bounded(run)
    assert [d.source for d in out] == [str(p) for p in paths]
    for p, d in zip(paths, out, strict=True):
        if p == fifo:
            assert "longer than 2 s" in d.error
        elif int(p.stem) % 3 == 0:
            assert d.error and "not a recognised image" in d.error and d.image is None
        else:
            assert d.ok and d.image.shape == (16, 16) and (d.width, d.height) == (40, 30)
            assert d.image.mean() == pytest.approx(20 * int(p.stem), abs=1)


def test_call_reraises_and_a_killed_worker_is_replaced(tmp_path):
    from cxrkit.data.decoder import DecodeLimitError, DecodeLimits, Decoder, decode_file

    fifo = tmp_path / "a.dcm"
    os.mkfifo(fifo)

    def run():
        with Decoder(1, limits=DecodeLimits(timeout_s=1)) as strict:
            with pytest.raises(DecodeLimitError) as e:
                strict.call(decode_file, str(fifo), label="a.dcm")
            assert e.value.kind == "timeout" and "a.dcm" in str(e.value)
            assert strict.decode(good_dicom(), "after.dcm").ok  # a fresh worker
        with Decoder(1, limits=DecodeLimits(timeout_s=30)) as dec:
            first = dec.decode(good_dicom(), "b.dcm")
            with pytest.raises(ZeroDivisionError):
                dec.call(divmod, 1, 0, label="x")
            again = dec.decode(j2k_zero_box_dicom(), "c.dcm")
            return first, again, dec.decode(good_dicom(), "d.dcm")

    first, j2k, last = bounded(run)
    assert first.ok and first.format == "DICOM" and first.tags["sex"] == "M"
    assert "JPEG 2000" in j2k.error
    assert last.ok


def test_errors_cross_processes_intact():
    from cxrkit.data.decoder import DecodeLimitError
    from cxrkit.data.images import ImageReadError
    from cxrkit.serve.uploads import UploadError

    for e in (
        ImageReadError("x.png", "why"),
        DecodeLimitError("y.dcm", "slow", "timeout"),
        UploadError(413, "too big"),
    ):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)
        assert getattr(back, "kind", None) == getattr(e, "kind", None)
        assert getattr(back, "status", None) == getattr(e, "status", None)
