"""Decoding, finding and preprocessing X-ray files (real NIH sample + synthetic files)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from cxrkit.data.images import (
    CROP_MAX_SIDE_FRACTION,
    DuplicateImageError,
    ImageReadError,
    PixelMap,
    PreprocessSettings,
    crop_box,
    find_images,
    preprocess,
    read_xray,
    to_uint8,
)


@pytest.fixture(scope="module")
def originals(nih_sample):
    paths = sorted((nih_sample / "originals" / "images_001" / "images").glob("*.png"))
    assert len(paths) == 39
    return paths


def _texture(h, w, seed=0):
    """A chest-like textured greyscale image (no flat rows or columns)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    return np.clip(base + rng.normal(0, 15, (h, w)), 30, 255).astype(np.uint8)


# ---------------------------------------------------------------- read_xray


def test_originals_read_as_1024_uint8_greyscale(originals):
    modes = {}
    for p in originals:
        img = read_xray(p)
        assert img.dtype == np.uint8 and img.shape == (1024, 1024), p.name
        with Image.open(p) as im:
            modes[p.name] = im.mode
    assert sum(m == "RGBA" for m in modes.values()) == 7
    assert set(modes.values()) == {"L", "RGBA"}


def test_rgba_original_is_the_luminance_of_its_rgb(originals):
    for p in originals:
        with Image.open(p) as im:
            if im.mode != "RGBA":
                continue
            expected = np.asarray(im.convert("RGB").convert("L"))
        np.testing.assert_array_equal(read_xray(p), expected, err_msg=p.name)


def test_colour_png_uses_601_luminance_and_drops_alpha(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (32, 40, 1), dtype=np.uint8)  # not opaque: still dropped
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(tmp_path / "c.png")
    got = read_xray(tmp_path / "c.png").astype(float)
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    assert got.shape == (32, 40) and np.abs(got - lum).max() <= 1.0


def test_16bit_png_is_scaled_to_the_full_8bit_range(tmp_path):
    a = np.linspace(1000, 3000, 64 * 48).reshape(48, 64).astype(np.uint16)  # 12-bit-ish
    Image.fromarray(a).save(tmp_path / "x16.png")
    with Image.open(tmp_path / "x16.png") as im:
        assert im.mode.startswith("I")
    img = read_xray(tmp_path / "x16.png")
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255
    assert np.all(np.diff(img.ravel().astype(int)) >= 0)  # monotonic: order preserved


def test_la_p_and_1bit_modes(tmp_path):
    grey = np.arange(200, dtype=np.uint8).reshape(10, 20)
    la = np.stack([grey, np.full_like(grey, 7)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_xray(tmp_path / "la.png"), grey)

    p_img = Image.fromarray(grey).convert("P")  # palette image
    p_img.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(read_xray(tmp_path / "p.png"), expected)

    Image.fromarray(grey > 100).save(tmp_path / "b.png")  # mode 1
    got = read_xray(tmp_path / "b.png")
    assert set(np.unique(got)) == {0, 255}
    np.testing.assert_array_equal(got == 255, grey > 100)


def _broken_files(tmp_path, nih_sample):
    data = (nih_sample / "images_256" / "00000001_000.png").read_bytes()
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 200] = bytes(200)
    files = {
        "corrupt.png": bytes(corrupt),
        "truncated.png": data[: len(data) // 2],
        "empty.png": b"",
        "text.png": b"this is not a PNG\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return [tmp_path / n for n in files] + [tmp_path / "missing.png"]


def test_broken_files_raise_image_read_error_naming_the_file(tmp_path, nih_sample):
    for path in _broken_files(tmp_path, nih_sample):
        with pytest.raises(ImageReadError, match=path.name) as info:
            read_xray(path)
        assert info.value.path == path and isinstance(info.value, ValueError)


def test_max_pixels_guards_against_decompression_bombs(tmp_path):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_xray(tmp_path / "big.png", max_pixels=5_000)
    assert read_xray(tmp_path / "big.png", max_pixels=10_000).shape == (100, 100)


# ---------------------------------------------------------------- to_uint8


def test_to_uint8_rule():
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert to_uint8(u8) is u8  # unchanged
    np.testing.assert_array_equal(to_uint8(np.array([[True, False]])), [[255, 0]])
    np.testing.assert_array_equal(to_uint8(np.array([[4095, 0, 2048]], np.uint16)), [[255, 0, 128]])
    np.testing.assert_array_equal(to_uint8(np.full((3, 3), 777, np.uint16)), 0)  # constant
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 1.0])), [0, 255])
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([0.0, np.nan]))


# ---------------------------------------------------------------- find_images


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_find_images_flat_nested_and_arbitrary_layouts(tmp_path):
    flat = [_touch(tmp_path / "flat" / "images" / f"{i:08d}_000.png") for i in range(3)]
    assert find_images(tmp_path / "flat") == {p.name: p for p in flat}

    nih = [
        _touch(tmp_path / "nih" / f"images_{k:03d}" / "images" / f"{k:08d}_00{i}.png")
        for k in (1, 2, 12)
        for i in range(2)
    ]
    _touch(tmp_path / "nih" / "Data_Entry_2017.csv")
    assert find_images(tmp_path / "nih") == {p.name: p for p in nih}

    mixed = [
        _touch(tmp_path / "any" / "a" / "b" / "c" / "deep.PNG"),
        _touch(tmp_path / "any" / "x.JPG"),
        _touch(tmp_path / "any" / "y" / "z.jpeg"),
    ]
    _touch(tmp_path / "any" / "notes.txt")
    _touch(tmp_path / "any" / "._deep.png")  # macOS resource fork
    _touch(tmp_path / "any" / ".ipynb_checkpoints" / "x.JPG")  # hidden copy
    found = find_images(tmp_path / "any")
    assert found == {p.name: p for p in mixed} and list(found) == sorted(found)


def test_find_images_duplicate_names_error_names_both_paths(tmp_path):
    a = _touch(tmp_path / "images_001" / "images" / "00000001_000.png")
    b = _touch(tmp_path / "copy" / "00000001_000.png")
    with pytest.raises(DuplicateImageError) as info:
        find_images(tmp_path)
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_find_images_on_the_real_sample(nih_sample):
    assert len(find_images(nih_sample / "originals")) == 39
    assert len(find_images(nih_sample / "images_256")) == 1789
    with pytest.raises(DuplicateImageError, match="00000001_000.png"):
        find_images(nih_sample)  # the 256 px copies and the originals share names


def test_find_images_reports_link_loops_and_broken_links_and_goes_on(tmp_path, caplog):
    good = _touch(tmp_path / "images" / "00000001_000.png")
    loop = tmp_path / "images" / "00000002_000.png"
    loop.symlink_to(loop)  # points at itself: ELOOP
    loop_dir = tmp_path / "images" / "sub"
    loop_dir.symlink_to(loop_dir)  # a self-pointing "folder"
    broken = tmp_path / "images" / "00000003_000.png"
    broken.symlink_to(tmp_path / "gone.png")
    with caplog.at_level("WARNING", logger="cxrkit.data.images"):
        found = find_images(tmp_path)
    assert found["00000001_000.png"] == good
    assert set(found.bad) == {str(loop), str(loop_dir), str(broken)}
    assert "symbolic link loop" in found.bad[str(loop)]
    assert "broken symbolic link" in found.bad[str(broken)]
    assert str(tmp_path / "gone.png") in found.bad[str(broken)]
    # image-named bad files stay in the index, so the cache records each one's reason
    assert found["00000002_000.png"] == loop and found["00000003_000.png"] == broken
    assert "3 bad file(s)" in caplog.text and str(loop) in caplog.text
    with pytest.raises(ImageReadError, match="symbolic link loop"):
        read_xray(loop)
    with pytest.raises(ImageReadError, match="broken symbolic link"):
        read_xray(broken)


def test_find_images_reports_unreadable_files(tmp_path, monkeypatch):
    """An unreadable file is a bad file (simulated: the suite may run as root)."""
    import os

    good = _touch(tmp_path / "00000001_000.png")
    locked = _touch(tmp_path / "00000002_000.png")
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode, **kw: False if os.fspath(p) == str(locked) else real_access(p, mode, **kw),
    )
    found = find_images(tmp_path)
    assert found["00000001_000.png"] == good
    assert found.bad == {str(locked): "permission denied (not readable)"}


def test_read_xray_names_an_unreadable_file(tmp_path, monkeypatch):
    locked = tmp_path / "x.png"
    Image.fromarray(_texture(8, 8)).save(locked)

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied", str(locked))

    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(ImageReadError, match="permission denied"):
        read_xray(locked)


def test_find_images_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images(tmp_path / "nowhere")


# ---------------------------------------------------------------- preprocess


@pytest.mark.parametrize("size", [64, 224, 256, 512])
def test_preprocess_sizes(size):
    out = preprocess(_texture(300, 200), size=size)
    assert out.shape == (size, size) and out.dtype == np.uint8


def test_preprocess_rejects_non_uint8_and_bad_settings():
    with pytest.raises(ValueError, match="to_uint8"):
        preprocess(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="size"):
        preprocess(np.zeros((8, 8), np.uint8), size=2)


def test_clahe_changes_the_histogram(originals):
    img = read_xray(originals[0])
    plain, eq = preprocess(img, size=256), preprocess(img, size=256, clahe=True)
    h0 = np.bincount(plain.ravel(), minlength=256)
    h1 = np.bincount(eq.ravel(), minlength=256)
    assert not np.array_equal(h0, h1)
    assert h1.max() < h0.max()  # equalisation flattens the tallest peaks


def test_crop_removes_a_synthetic_black_border():
    img = np.zeros((1024, 1024), np.uint8)
    img[150:874, 200:824] = _texture(724, 624)  # 624 wide, 724 tall
    x0, y0, x1, y1 = crop_box(img)
    assert (x1 - x0) == (y1 - y0)  # square
    # tight on the long axis, up to the blur (sigma 2 px at 256 = 8 px here), outwards
    assert 150 - 16 <= y0 <= 150 and 874 <= y1 <= 874 + 16
    assert x0 <= 200 and x1 >= 824  # never cuts the chest
    cropped, pmap = preprocess(img, size=256, crop=True, return_map=True)
    plain = preprocess(img, size=256)
    assert (cropped < 10).mean() < 0.5 * (plain < 10).mean()
    assert pmap.box == (x0, y0, x1, y1)


def test_crop_keeps_images_without_border_and_is_bounded(originals):
    for p in originals[:5]:
        img = read_xray(p)
        assert crop_box(img) == (0, 0, 1024, 1024)
    dot = np.zeros((400, 400), np.uint8)
    dot[195:205, 195:205] = 255  # almost all border
    x0, y0, x1, y1 = crop_box(dot)
    assert x1 - x0 >= 400 * (1 - 2 * CROP_MAX_SIDE_FRACTION)


def test_pixel_map_follows_a_point_through_crop_and_resize():
    img = np.zeros((1000, 800), np.uint8)
    img[100:900, 60:740] = _texture(800, 680, seed=2)
    img[500:510, 300:310] = 255  # a marker at (305, 505)
    out, pmap = preprocess(img, size=200, crop=True, return_map=True)
    x, y = pmap.to_output(305, 505)
    assert out[int(y), int(x)] > 200  # marker where the map says
    np.testing.assert_allclose(pmap.to_source(x, y), (305, 505))
    full = preprocess(img, size=200, return_map=True)[1]
    assert full == PixelMap(box=(0, 0, 800, 1000), size=200)
    np.testing.assert_allclose(full.to_output(800, 1000), (200, 200))


# ---------------------------------------------------------------- settings


def test_preprocess_settings_round_trip_and_validation():
    s = PreprocessSettings(size=224, clahe=True, crop=False)
    assert PreprocessSettings.from_dict(s.to_dict()) == s
    assert s.to_dict()["version"] >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.size = 128
    with pytest.raises(ValueError, match="colour"):
        PreprocessSettings.from_dict({"size": 256, "colour": True})
    with pytest.raises(ValueError, match="version"):
        PreprocessSettings.from_dict({**s.to_dict(), "version": 999})
    with pytest.raises(TypeError, match="clahe"):
        PreprocessSettings(clahe="yes")
    with pytest.raises(ValueError, match="size"):
        PreprocessSettings(size=0)


# ---------------------------------------------------------------- libpng iCCP warnings

_DECODE_SCRIPT = """
import sys, cv2
from cxrkit.data.libpng import quiet_iccp_warnings
from cxrkit.data.images import read_xray
quiet, rgba, broken = sys.argv[1] == "1", sys.argv[2], sys.argv[3]
def decode():
    assert cv2.imread(rgba, cv2.IMREAD_UNCHANGED).shape == (1024, 1024, 4)
    assert cv2.imread(broken, cv2.IMREAD_UNCHANGED) is None
    read_xray(rgba)
    print("python stderr still works", file=sys.stderr)
if quiet:
    with quiet_iccp_warnings():
        decode()
else:
    decode()
"""


def test_iccp_warnings_are_silenced_on_fd2_but_real_errors_are_not(nih_sample, tmp_path):
    """Captured as the process's fd 2 (libpng writes there from C, not via sys.stderr)."""
    import subprocess
    import sys

    rgba = nih_sample / "originals/images_001/images/00000004_000.png"  # RGBA + ICC profile
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDRgarbagegarbage")

    def stderr_of(quiet: bool) -> str:
        r = subprocess.run(
            [sys.executable, "-c", _DECODE_SCRIPT, str(int(quiet)), str(rgba), str(broken)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return r.stderr

    loud = stderr_of(False)
    assert "libpng warning: iCCP: profile 'ICC Profile'" in loud  # the defect, unfiltered
    quiet = stderr_of(True)
    assert "iCCP" not in quiet
    assert "IHDR" in quiet and "readHeader" in quiet  # OpenCV's error for the broken file
    assert "python stderr still works" in quiet


def test_prepare_on_real_nih_originals_prints_no_libpng_warnings(nih_sample, tmp_path):
    """The whole `cxrkit prepare` process's fd 2 on the 39 originals (7 with the profile),
    with a corrupt PNG among them: no iCCP line, the corrupt file still named."""
    import shutil
    import subprocess
    import sys

    images = tmp_path / "rel" / "images_001" / "images"
    shutil.copytree(nih_sample / "originals" / "images_001" / "images", images)
    (images / "00000001_001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrkit.cli",
            "prepare",
            str(tmp_path / "rel"),
            "--labels",
            str(nih_sample / "meta" / "Data_Entry_2017.csv"),
            "--on-missing",
            "drop",
            "--protocol",
            "random",
            "--size",
            "64",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "prep"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "libpng" not in r.stderr and "iCCP" not in r.stderr
    assert "00000001_001.png" in r.stderr and "cannot be cached" in r.stderr
