"""The image cache: contents, errors, crash-resume, up-to-date detection, pickling."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cxrkit.data._cache_build as build_mod
import cxrkit.data.cache as cache_mod
from cxrkit.data.cache import CacheNotReadyError, ImageCache, build_cache
from cxrkit.data.images import PreprocessSettings, preprocess, read_xray

SIZE = 64
SETTINGS = PreprocessSettings(size=SIZE)


@pytest.fixture(scope="module")
def items(nih_sample):
    """39 originals (1024 px, 7 RGBA) and 40 other real images (256 px), real names."""
    orig = sorted((nih_sample / "originals" / "images_001" / "images").glob("*.png"))
    names = {p.name for p in orig}
    small = [p for p in sorted((nih_sample / "images_256").glob("*.png")) if p.name not in names][
        :40
    ]
    return [(p.name, str(p)) for p in orig + small]


@pytest.fixture(scope="module")
def expected(items):
    return {i: preprocess(read_xray(p), size=SIZE) for i, p in items}


@pytest.fixture
def count_decodes(monkeypatch):
    """Count read_xray calls made by an in-process (workers=0) build."""
    calls = []

    def counting(path, **kw):
        calls.append(path)
        return read_xray(path, **kw)

    monkeypatch.setattr(build_mod, "read_xray", counting)
    return calls


def _check_pixels(cache, expected):
    for image_id, want in expected.items():
        np.testing.assert_array_equal(cache.image(image_id), want, err_msg=image_id)


def test_build_in_process_matches_preprocess(tmp_path, items, expected):
    cache = build_cache(
        items,
        tmp_path / "c",
        SETTINGS,
        workers=0,
        progress=False,
        inputs_fingerprint={"labels_sha256": "abc"},
    )
    assert len(cache) == len(items) == 79 and cache.size == SIZE
    assert cache.images.shape == (79, SIZE, SIZE) and cache.images.dtype == np.uint8
    _check_pixels(cache, expected)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["counts"] == {"total": 79, "ok": 79, "error": 0}
    assert m["settings"] == SETTINGS.to_dict() and m["inputs"] == {"labels_sha256": "abc"}
    assert {"numpy", "pillow", "opencv"} <= set(m["versions"]) and m["cxrkit_version"]
    assert len(m["fingerprint"]["sha256"]) == 64
    index = pd.read_csv(tmp_path / "c" / "index.csv")
    assert list(index.columns[:6]) == ["row", "image_id", "status", "error", "height", "width"]
    assert (index["height"].iloc[:39] == 1024).all() and (index["height"].iloc[39:] == 256).all()
    assert not list(tmp_path.joinpath("c").glob("*partial*"))


def test_rows_lookup_is_vectorised_and_names_unknown_ids(tmp_path, items):
    cache = build_cache(items[:10], tmp_path / "c", SETTINGS, workers=0, progress=False)
    ids = [i for i, _ in items[:10]]
    np.testing.assert_array_equal(cache.rows(ids[::-1]), np.arange(10)[::-1])
    assert cache.ids == ids
    with pytest.raises(KeyError, match="nope.png"):
        cache.rows([ids[0], "nope.png"])


def test_corrupt_image_is_recorded_and_excluded_with_a_warning(tmp_path, items, expected):
    bad = tmp_path / "00099999_000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    mixed = items[:20] + [(bad.name, str(bad))] + items[20:]
    with pytest.warns(UserWarning, match=bad.name):
        cache = build_cache(mixed, tmp_path / "c", SETTINGS, workers=2, progress=False)
    assert len(cache) == len(items) and bad.name not in cache.ids
    _check_pixels(cache, expected)  # every other image is cached
    assert list(cache.errors["image_id"]) == [bad.name]
    index = pd.read_csv(tmp_path / "c" / "index.csv", keep_default_na=False)
    row = index.loc[index["image_id"] == bad.name].iloc[0]
    assert row["status"] == "error" and row["error"] and row["row"] == 20
    with pytest.raises(KeyError, match="failed to decode"):
        cache.rows([bad.name])


_KILL_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import cxrkit.data._cache_build as B
    from cxrkit.data.cache import build_cache
    from cxrkit.data.images import PreprocessSettings

    B.CHECKPOINT_SECONDS = 0            # checkpoint after every chunk
    original = B.PartialBuild.checkpoint
    calls = []

    def checkpoint_then_die(self, *, force=False):
        original(self, force=force)
        calls.append(1)
        if len(calls) == 10:
            os._exit(9)                 # like kill -9: no cleanup, no finally

    B.PartialBuild.checkpoint = checkpoint_then_die
    items, out, size, workers = json.loads(sys.argv[1])
    build_cache(items, out, PreprocessSettings(size=size), workers=workers, progress=False)
""")


def _processes_holding(path) -> list[int]:
    """Pids with ``path`` open (Linux /proc; others skip the check)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_build_resumes_without_decoding_finished_images(
    tmp_path, items, expected, count_decodes, workers
):
    out = tmp_path / "c"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, json.dumps([items, str(out), SIZE, workers])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 9, proc.stderr
    if workers and Path("/proc/self/fd").exists():  # workers must not outlive the build
        deadline = time.monotonic() + 10
        while _processes_holding(out / "images.npy.partial") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_holding(out / "images.npy.partial") == []
    assert not (out / "manifest.json").exists() and not (out / "images.npy").exists()
    with pytest.raises(CacheNotReadyError, match="unfinished"):
        ImageCache(out)
    done = int((np.load(out / "status.partial.npy")[:, 0] != 0).sum())
    assert 0 < done < len(items)

    cache = build_cache(items, out, SETTINGS, workers=0, progress=False)
    assert len(count_decodes) == len(items) - done  # only the remaining images
    _check_pixels(cache, expected)
    assert json.loads((out / "manifest.json").read_text())["build"]["resumed_with"] == done


def test_interrupted_build_with_other_settings_starts_afresh(
    tmp_path, items, count_decodes, monkeypatch
):
    out = tmp_path / "c"
    monkeypatch.setattr(build_mod, "CHECKPOINT_SECONDS", 0)
    real = build_mod.read_xray

    def failing(path, **kw):
        if len(count_decodes) >= 5:
            raise KeyboardInterrupt
        return real(path, **kw)

    monkeypatch.setattr(build_mod, "read_xray", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cache(items[:20], out, SETTINGS, workers=0, progress=False)
    monkeypatch.setattr(build_mod, "read_xray", real)
    cache = build_cache(items[:20], out, PreprocessSettings(size=32), workers=0, progress=False)
    assert cache.images.shape == (20, 32, 32)
    assert cache.manifest["build"]["resumed_with"] == 0


def test_not_a_cache_is_refused(tmp_path):
    with pytest.raises(CacheNotReadyError, match="does not exist"):
        ImageCache(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheNotReadyError, match="manifest.json"):
        ImageCache(tmp_path / "empty")


def test_rerun_with_same_inputs_does_nothing(tmp_path, items, count_decodes, caplog):
    out = tmp_path / "c"
    build_cache(items[:12], out, SETTINGS, workers=0, progress=False)
    before = (out / "images.npy").stat().st_mtime_ns
    count_decodes.clear()
    with caplog.at_level(logging.INFO, logger="cxrkit.data.cache"):
        build_cache(items[:12], out, SETTINGS, workers=0, progress=False)
    assert count_decodes == [] and "up to date" in caplog.text
    assert (out / "images.npy").stat().st_mtime_ns == before

    # other caller inputs (e.g. a label-file hash), same images: manifest refreshed only
    cache = build_cache(
        items[:12],
        out,
        SETTINGS,
        workers=0,
        progress=False,
        inputs_fingerprint={"labels_sha256": "new"},
    )
    assert count_decodes == [] and cache.manifest["inputs"] == {"labels_sha256": "new"}
    assert (out / "images.npy").stat().st_mtime_ns == before


def test_changed_settings_or_files_rebuild(tmp_path, items, count_decodes):
    src = tmp_path / "src"
    src.mkdir()
    local = []
    for image_id, path in items[39:45]:
        shutil.copy(path, src / image_id)
        local.append((image_id, str(src / image_id)))
    out = tmp_path / "c"
    build_cache(local, out, SETTINGS, workers=0, progress=False)
    cache = build_cache(
        local, out, PreprocessSettings(size=48, clahe=True), workers=0, progress=False
    )
    assert len(count_decodes) == 12 and cache.images.shape == (6, 48, 48)
    assert cache.settings == PreprocessSettings(size=48, clahe=True)
    np.testing.assert_array_equal(
        cache.image(local[0][0]), preprocess(read_xray(local[0][1]), size=48, clahe=True)
    )

    st = os.stat(local[0][1])  # a file replaced in place
    os.utime(local[0][1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    build_cache(local, out, PreprocessSettings(size=48, clahe=True), workers=0, progress=False)
    assert len(count_decodes) == 18


def test_crop_boxes_are_recorded_and_map_nih_boxes(tmp_path, items):
    ((image_id, path),) = [it for it in items if it[0] == "00000001_000.png"]
    cache = build_cache(
        [(image_id, path)], tmp_path / "c", PreprocessSettings(size=SIZE), workers=0, progress=False
    )
    boxes = pd.DataFrame(
        {"image_id": [image_id], "x": [512.0], "y": [256.0], "w": [128.0], "h": [64.0]}
    )
    moved = cache.map_boxes(boxes, source_size=1024)
    np.testing.assert_allclose(moved[["x", "y", "w", "h"]].iloc[0], [32, 16, 8, 4])
    pmap = cache.pixel_map(image_id, source_size=1024)
    np.testing.assert_allclose(pmap.to_output(512, 256), (32, 16))


def test_bad_items_are_rejected(tmp_path, items):
    with pytest.raises(ValueError, match="more than once"):
        build_cache([items[0], items[0]], tmp_path / "c", SETTINGS, workers=0)
    with pytest.raises(ValueError, match="empty"):
        build_cache([], tmp_path / "c", SETTINGS, workers=0)
    with pytest.raises(ValueError, match=r"items\[0\]"):
        build_cache(["just-a-name"], tmp_path / "c", SETTINGS, workers=0)


def test_concurrent_builds_into_one_folder_are_refused(tmp_path, items):
    out = tmp_path / "c"
    out.mkdir()
    with cache_mod._BuildLock(out):
        with pytest.raises(RuntimeError, match="another process"):
            build_cache(items[:2], out, SETTINGS, workers=0, progress=False)


def test_cache_pickles_without_pixels_and_reopens_lazily(tmp_path, items, expected):
    cache = build_cache(items[:30], tmp_path / "c", SETTINGS, workers=0, progress=False)
    cache.images  # opened in this process
    blob = pickle.dumps(cache)
    assert len(blob) < cache.images.nbytes / 4
    clone = pickle.loads(blob)
    assert clone._images is None and clone.ids == cache.ids
    np.testing.assert_array_equal(clone.image(items[3][0]), expected[items[3][0]])
    assert isinstance(clone.images, np.memmap)


def test_images_below_the_minimum_size_are_bad_images_with_the_reason(tmp_path, items):
    from PIL import Image

    from cxrkit.data.images import MIN_IMAGE_SIDE

    rng = np.random.default_rng(0)
    tiny = {
        "00090001_000.png": (1, 1),
        "00090002_000.png": (MIN_IMAGE_SIDE - 1, 400),
        "00090003_000.png": (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE),
    }
    extra = []
    for name, (h, w) in tiny.items():
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(tmp_path / name)
        extra.append((name, str(tmp_path / name)))
    with pytest.warns(UserWarning, match="00090001_000.png"):
        cache = build_cache(items[:3] + extra, tmp_path / "c", SETTINGS, workers=0, progress=False)
    index = pd.read_csv(tmp_path / "c" / "index.csv", keep_default_na=False).set_index("image_id")
    assert index.loc["00090001_000.png", "status"] == "error"
    assert (
        f"1x1 pixels is below the minimum of {MIN_IMAGE_SIDE} px a side"
        in index.loc["00090001_000.png", "error"]
    )
    assert index.loc["00090002_000.png", "status"] == "error"
    assert f"400x{MIN_IMAGE_SIDE - 1} pixels" in index.loc["00090002_000.png", "error"]
    assert index.loc["00090003_000.png", "status"] == "ok"  # exactly the minimum is fine
    assert len(cache) == 4
