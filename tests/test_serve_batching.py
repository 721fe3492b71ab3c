"""Batched serving (cxrkit.serve.batching): concurrent /predict requests share one forward
pass; each answer equals the image alone; a failing image fails only its own request."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from cxrkit.inference import load
from cxrkit.serve import background_server, create_app
from cxrkit.serve.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, Batcher

N = 8


@pytest.fixture(scope="module")
def lm(phantom_run):
    return load(phantom_run)


@pytest.fixture(scope="module")
def images(phantom_release):
    return sorted(phantom_release.rglob("*.png"))[:N]


def _alone(lm, path) -> np.ndarray:
    """The image's probabilities from a forward pass of its own (batch of one)."""
    return lm.predict(path)[list(lm.findings)].to_numpy()[0]


def test_batched_answers_equal_single_answers_over_http(lm, images):
    want = [_alone(lm, p) for p in images]
    assert len({round(float(w[0]), 9) for w in want}) == len(images)  # all different
    app = create_app(lm, max_batch=N, max_wait_ms=500)

    async def together(url):
        async with httpx.AsyncClient(
            base_url=url, timeout=60.0, limits=httpx.Limits(max_connections=N)
        ) as c:
            return await asyncio.gather(
                *[
                    c.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")})
                    for p in images
                ]
            )

    with background_server(app) as url:
        answers = asyncio.run(together(url))
        info = httpx.get(f"{url}/info", timeout=10).json()
    for path, w, r in zip(images, want, answers, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["image"]["filename"] == path.name
        got = [row["probability"] for row in r.json()["findings"]]
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-6)
    b = info["batching"]
    assert b["enabled"] and b["max_batch"] == N and b["images"] == N
    assert b["batches"] < N and b["largest_batch"] > 1  # they really shared passes
    assert info["precision"]["used"] == lm.precision["used"]


def test_a_bad_upload_inside_a_batch_fails_alone(lm, images):
    app = create_app(lm, max_batch=N, max_wait_ms=500)
    bad = [(f"junk{i}.png", b"\x89PNG\r\n\x1a\n" + b"junk" * 40) for i in range(2)]

    async def mixed(url):
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as c:
            good = [
                c.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")})
                for p in images[:4]
            ]
            junk = [c.post("/predict", files={"file": (n, d, "image/png")}) for n, d in bad]
            return await asyncio.gather(*good[:2], *junk, *good[2:])

    with background_server(app) as url:
        answers = asyncio.run(mixed(url))
    codes = [r.status_code for r in answers]
    assert codes[:2] == [200, 200] and codes[4:] == [200, 200], codes
    assert all(400 <= c < 500 for c in codes[2:4]) and "detail" in answers[2].json()


class _Flaky:
    """A model whose forward pass fails for any batch holding an all-255 image."""

    def __init__(self, lm):
        self.lm, self.calls = lm, []

    def score_cached(self, images, meta=None, *, tta="none"):
        self.calls.append(len(images))
        if (np.asarray(images).reshape(len(images), -1) == 255).all(axis=1).any():
            raise ValueError("this image breaks the network")
        return self.lm.score_cached(images, meta, tta=tta)


def test_a_failing_forward_fails_only_its_own_request(lm, images):
    model = _Flaky(lm)
    batcher = Batcher(model, max_batch=N, max_wait_ms=300)
    good = lm.cached_batch(images[:3])
    poison = np.full_like(good[0], 255)
    inputs = [good[0], good[1], poison, good[2]]
    out: dict[int, object] = {}

    def one(i):
        with batcher.incoming():
            time.sleep(0.01 * i)
        try:
            out[i] = batcher.score(inputs[i])
        except ValueError as e:
            out[i] = e

    with batcher.incoming():  # hold the gathering open until all four are queued
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(30)
    assert isinstance(out[2], ValueError) and "breaks" in str(out[2])
    for i in (0, 1, 3):
        z = out[i][0]
        np.testing.assert_allclose(z, lm.logits_from_cached(inputs[i][None])[0], atol=1e-6)
    assert max(model.calls) > 1 and model.calls.count(1) >= 4  # batched, then one by one


def test_a_lone_request_does_not_wait(lm, images):
    batcher = Batcher(lm, max_batch=16, max_wait_ms=1000)
    x = lm.cached_batch(images[:1])[0]
    batcher.score(x)  # warm
    t = time.perf_counter()
    batcher.score(x)
    assert time.perf_counter() - t < 0.5  # far below the 1 s it could have waited


def test_options_are_checked_and_the_cli_defaults_are_the_modules():
    import inspect

    from cxrkit.cli.serve import serve

    params = inspect.signature(serve).parameters
    assert params["max_batch"].default == DEFAULT_MAX_BATCH
    assert params["max_wait_ms"].default == DEFAULT_MAX_WAIT_MS
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(object(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Batcher(object(), max_wait_ms=-1)
    assert not Batcher(object(), max_batch=1).enabled
