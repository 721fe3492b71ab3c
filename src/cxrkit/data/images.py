"""Image files on disk -> 8-bit greyscale arrays -> the square images the cache holds.

Four jobs, each done in exactly one place:

:func:`find_images`  index a release's image files by name, whatever the folder layout;
:func:`read_xray`    decode one file to ``uint8`` ``(H, W)`` greyscale, or raise
                     :class:`ImageReadError` naming the file;
:func:`to_uint8`     the one rule that maps a higher bit depth (16-bit PNG now, 12/16-bit
                     DICOM later) to 8 bits;
:func:`preprocess`   optional chest crop, resize to a square, optional CLAHE. What it did
                     is described by :class:`PreprocessSettings`, which the cache manifest
                     and checkpoints store, so prediction repeats training's preprocessing.

Coordinates are pixels, ``x`` to the right and ``y`` down, origin at the top-left corner
of the top-left pixel. :class:`PixelMap` maps a point of the decoded file to the
preprocessed image (and back), so NIH's boxes (1024 space) can follow a crop.

Decoding uses Pillow. ``cv2.imread`` was measured on the 39 NIH originals (1024 px PNG,
one core, ``bench/bench_cache.py``): 9.5-10.5 ms against Pillow's 10.8-11.5 ms CPU per
image, about 10 % faster, but it returns ``None`` without a reason on bad files, prints
libpng warnings for the RGBA files' ICC profiles and has no pixel-count guard; Pillow
gives a reason for every failure.
"""

from __future__ import annotations

import errno
import io
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

# the cache stage's settings and version live with the rest of the contract; here for the
# readers below and for the code that imports them from this module
from cxrkit.data.preprocessing import PREPROCESS_VERSION, PreprocessSettings  # noqa: F401

log = logging.getLogger(__name__)

#: File name endings that :func:`find_images` indexes (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

#: Largest image :func:`read_xray` decodes, in pixels (width x height). The largest
#: radiographs are about 4300 x 3500 = 15 Mpx; 64 Mpx leaves room and still stops a
#: decompression bomb (a small file that claims billions of pixels) before it allocates.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

#: Shortest side, in pixels, of an image the cache accepts; smaller ones are recorded as
#: bad images (``status`` error, with the reason) instead of being stretched into the
#: cache. Why 32: a chest radiograph at 32 px still shows the lungs, heart and diaphragm
#: (the phantom tests train at 32 px), while a 1 x 1 or 8 x 8 "image" is a thumbnail, an
#: icon or a broken export, whose stretched pixels would be trained on as an X-ray.
#: Real files are far larger (NIH's are 1024 px; detector images 2000-4300 px).
MIN_IMAGE_SIDE = 32

#: CLAHE clip limit (contrast limit per tile, in multiples of the mean histogram bin) and
#: tile grid. 8x8 is OpenCV's default grid; 2.0 is the clip limit CXR work usually uses
#: (OpenCV's default of 40 hardly clips: close to plain adaptive equalisation, which
#: amplifies noise in flat regions). CLAHE runs on the resized image, so a tile is always
#: 1/8 of the side (32 px at 256) whatever the source resolution.
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = (8, 8)

#: The crop never removes more than this fraction of the width or height from any one
#: side, so at least half of each axis always survives a wrong border estimate.
CROP_MAX_SIDE_FRACTION = 0.25


class ImageReadError(ValueError):
    """An image file could not be decoded. ``path`` is the file, ``reason`` why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # pickled from decoding worker processes (the default needs args)
        return (type(self), (str(self.path), self.reason))


class DuplicateImageError(ValueError):
    """The same image file name occurs at two or more paths under one root."""


class ImageIndex(dict):
    """What :func:`find_images` returns: image name -> path, plus ``bad`` files.

    ``bad`` maps the path of each entry that could not be indexed as a readable file
    (a symbolic link loop, a broken link, an unreadable file or folder, a FIFO ...) to
    the reason, one line. Bad entries with an image name are also in the mapping itself
    (unless a good file has that name), so the cache build records each as an error
    image with that reason instead of the row looking "not on disk".
    """

    def __init__(self, *args, bad: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad: dict[str, str] = dict(bad or {})


def os_reason(error: OSError, path: str | Path) -> str:
    """One-line reason for an ``OSError`` on ``path``, in a user's words (no traceback).

    ``ELOOP`` is a symbolic link loop; ``ENOENT`` on a path that is a link is a broken
    link (its target is named); ``EACCES``/``EPERM`` is permission denied.
    """
    path = os.fspath(path)
    if error.errno == errno.ELOOP:
        return "symbolic link loop (the link points at itself or a link to it)"
    if error.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (not readable)"
    return f"{error.strerror or type(error).__name__} (errno {error.errno})"


def _classify(entry: os.DirEntry) -> tuple[str, str]:
    """``("dir" | "file" | "other", reason)`` for one folder entry; never raises."""
    try:
        if entry.is_dir():
            return "dir", ""
        if entry.is_file():
            if not os.access(entry.path, os.R_OK):
                return "bad", "permission denied (not readable)"
            return "file", ""
        if entry.is_symlink():  # is_dir/is_file follow links: False for a broken one
            os.stat(entry.path)  # raises the reason (ENOENT, ELOOP, EACCES)
        return "bad", "not a regular file (a FIFO, socket or device)"
    except OSError as e:
        return "bad", os_reason(e, entry.path)


def walk_files(root: str | Path):
    """Every file under the folder ``root``, as ``(path, "")``, and every entry that is not a
    readable file or folder, as ``(path, reason)``; in name order, folder by folder.

    Bounded whatever the links: symbolic links to folders are followed, but each folder
    (by device and inode) is entered once, so a link to ``.`` or to a parent, or two links
    to each other, cannot make the walk loop or grow exponentially. A link to itself (or a
    broken one, a FIFO, a socket, an unreadable file) is a bad entry with its reason; a
    folder that cannot be listed is one too (the root itself raises ``PermissionError``).
    Names starting with ``.`` are skipped.
    """
    root = str(root)
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue  # a symlink loop or a folder linked twice
            seen_dirs.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            if folder == root:
                raise PermissionError(
                    f"cannot list image folder {folder}: {os_reason(e, folder)}"
                ) from None
            yield folder, f"cannot list this folder: {os_reason(e, folder)}"
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            kind, reason = _classify(entry)
            if kind == "dir":
                subfolders.append(entry.path)
            elif kind == "bad":
                yield entry.path, reason
            else:
                yield entry.path, ""
        stack.extend(reversed(subfolders))  # depth first, in name order


def find_images(root: str | Path, *, warn: bool = True) -> ImageIndex:
    """Map each image file name (e.g. ``00000001_000.png``) to its path under ``root``.

    Works for every layout people unpack NIH into: flat ``images/``, the archive layout
    ``images_001/images/ ... images_012/images/``, or any nesting. It walks with
    ``os.scandir`` (no ``stat`` per file; 112,120 files take well under a second on a
    local disk), follows symlinked folders once, and skips names starting with ``.``
    (``.ipynb_checkpoints``, macOS ``._*`` resource forks). Extensions are in
    :data:`IMAGE_EXTENSIONS`. The same name at two paths raises
    :class:`DuplicateImageError` naming both, since either could be the wrong one.
    The result is an :class:`ImageIndex` sorted by name; entries that are not readable
    files (link loops, broken links, unreadable files or folders) are listed in its
    ``bad`` with the reason, logged as one warning (``warn=False``: the caller reports
    them), and the walk goes on.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image root not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"image root is not a folder: {root}")
    found: dict[str, str] = {}
    bad: dict[str, str] = {}
    bad_images: dict[str, str] = {}  # image name -> path of a bad entry with that name
    duplicates: list[tuple[str, str, str]] = []
    for path, reason in walk_files(root):
        name = os.path.basename(path)
        if reason:
            bad[path] = reason
            if name.lower().endswith(IMAGE_EXTENSIONS):
                bad_images.setdefault(name, path)
        elif name.lower().endswith(IMAGE_EXTENSIONS):
            if name in found:
                duplicates.append((name, found[name], path))
            else:
                found[name] = path
    if duplicates:
        duplicates.sort()
        shown = "; ".join(f"{n} at {a} and {b}" for n, a, b in duplicates[:5])
        more = f" (and {len(duplicates) - 5} more)" if len(duplicates) > 5 else ""
        raise DuplicateImageError(
            f"{len(duplicates)} image name(s) occur twice under {root}: {shown}{more}. "
            + duplicate_advice([os.path.dirname(p) for d in duplicates for p in d[1:]])
        )
    for name, path in bad_images.items():
        found.setdefault(name, path)
    if bad and warn:
        shown = "; ".join(f"{p}: {r}" for p, r in sorted(bad.items())[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        log.warning(
            "%d bad file(s) under %s, skipped or recorded as unreadable: %s%s",
            len(bad),
            root,
            shown,
            more,
        )
    return ImageIndex(
        {name: Path(found[name]) for name in sorted(found)}, bad=dict(sorted(bad.items()))
    )


def duplicate_advice(folders) -> str:
    """What to do about image names found twice: the ``--images-root`` option to pass,
    naming the folders that hold the copies (the most crowded first)."""
    counts: dict[str, int] = {}
    for f in folders:
        counts[f] = counts.get(f, 0) + 1
    ranked = sorted(counts, key=lambda f: (-counts[f], f))
    return (
        f"Pass --images-root with the folder to use (the copies are in "
        f"{', '.join(ranked[:4])}{' ...' if len(ranked) > 4 else ''}), e.g. "
        f"--images-root {ranked[0]}, or remove the copies."
    )


def find_images_in(roots, *, warn: bool = True) -> ImageIndex:
    """:func:`find_images` over several folders as one index (``--images-root`` given more
    than once); a name found under two of them raises :class:`DuplicateImageError`."""
    roots = [Path(r) for r in roots]
    merged = ImageIndex()
    for root in roots:
        index = find_images(root, warn=warn)
        twice = sorted(set(index) & set(merged))
        if twice:
            shown = "; ".join(f"{n} at {merged[n]} and {index[n]}" for n in twice[:5])
            more = f" (and {len(twice) - 5} more)" if len(twice) > 5 else ""
            raise DuplicateImageError(
                f"{len(twice)} image name(s) occur in two image roots: {shown}{more}. Each "
                "image must be under one root only: remove the copies from one of them, or "
                "leave that root out."
            )
        merged.update(index)
        merged.bad.update(index.bad)
    return ImageIndex(dict(sorted(merged.items())), bad=merged.bad)


def read_xray(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None
) -> np.ndarray:
    """Decode one image file to greyscale ``uint8`` ``(H, W)``.

    ``data``: the file's bytes, when they are in memory (an upload); ``path`` then only
    names it in messages. A JPEG (or any file) with an EXIF ``Orientation`` tag is turned
    upright first (:func:`PIL.ImageOps.exif_transpose`), as viewers and the service's page
    show it: a film saved with ``Orientation=6`` would otherwise reach the model sideways.

    Colour (RGB, RGBA, P) becomes luminance with Pillow's ITU-R 601 weights
    (0.299 R + 0.587 G + 0.114 B); alpha is dropped (the NIH RGBA files are grey with
    opaque alpha). LA drops alpha, mode 1 becomes 0/255, and 16-bit or 32-bit integer
    and float images go through :func:`to_uint8`. Missing, empty, truncated, corrupt or
    non-image files, and images over ``max_pixels`` pixels, raise
    :class:`ImageReadError` naming the file. (Truncation is only detected while Pillow's
    global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False, its default; cxrkit never sets it.)
    """
    path = Path(path)
    try:
        if (len(data) if data is not None else os.path.getsize(path)) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(
                    path, f"{w}x{h} pixels is over the limit of {max_pixels:,} (max_pixels)"
                )
            if w == 0 or h == 0:
                raise ImageReadError(path, f"image has no pixels ({w}x{h})")
            im.load()  # decode here, so truncation and CRC errors surface inside the try
            ImageOps.exif_transpose(im, in_place=True)  # upright, as viewers show it
            if im.mode == "L":
                arr = np.asarray(im)
            elif im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                arr = to_uint8(np.asarray(im))
            else:  # 1, LA, La, P, PA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr, ...
                arr = np.asarray(im.convert("L"))
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        reason = os_reason(e, path) if os.path.islink(path) else "no such file"
        raise ImageReadError(path, reason) from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not a file") from None
    except PermissionError as e:
        raise ImageReadError(path, os_reason(e, path)) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"decompression bomb guard: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(
            path, "not a recognised image format (corrupt, or not an image)"
        ) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageReadError(path, os_reason(e, path)) from None
        raise ImageReadError(path, f"corrupt or truncated ({type(e).__name__}: {e})") from None
    except (SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(path, f"corrupt or truncated ({type(e).__name__}: {e})") from None
    if arr.ndim != 2:
        raise ImageReadError(path, f"decoded to shape {arr.shape}, expected (H, W)")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def check_min_size(img: np.ndarray, path: str | Path) -> np.ndarray:
    """``img`` unchanged, or :class:`ImageReadError` when a side is under
    :data:`MIN_IMAGE_SIDE` pixels (the cache build's guard; see the constant for why)."""
    h, w = img.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ImageReadError(
            path,
            f"{w}x{h} pixels is below the minimum of {MIN_IMAGE_SIDE} "
            "px a side (too small to be a radiograph)",
        )
    return img


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Map a greyscale array of any bit depth to ``uint8`` (the one place that does it).

    Rule: ``uint8`` passes through unchanged; ``bool`` becomes 0/255; anything else is
    scaled linearly from the image's own [min, max] to [0, 255] and rounded. A constant
    image becomes all zeros (no division by zero).

    Why min-max rather than robust percentiles: it is monotonic and loses no structure
    at either end. Percentile clipping saturates the brightest 0.5-1 % of pixels, which
    in a chest film are wires, lines, pacemakers and dense bone: findings, not noise.
    A 12-bit image stored in 16 bits (values 0..4095) uses the full 8 bits this way,
    where a fixed ``>> 8`` would leave it at 0..15. DICOM windowing and MONOCHROME1
    inversion belong to the DICOM reader, before this function.
    """
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"to_uint8 needs an integer, float or bool array, got {a.dtype}")
    if a.size == 0:
        return np.zeros(a.shape, np.uint8)
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("to_uint8: the array holds NaN or infinite values")
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


@dataclass(frozen=True)
class PixelMap:
    """Where a preprocessed image came from: source ``box`` resized to ``size`` x ``size``.

    ``box = (x0, y0, x1, y1)`` is the region of the source that was cut (half-open,
    source pixels; it can reach past the image where the crop was padded, and is the
    whole frame without a crop). A source point maps to ``((x - x0) * sx, (y - y0) * sy)``
    with ``sx = size / (x1 - x0)`` output pixels per source pixel. Box corners map like
    points; widths and heights only scale.
    """

    box: tuple[float, float, float, float]
    size: int

    @property
    def sx(self) -> float:
        return self.size / float(self.box[2] - self.box[0])

    @property
    def sy(self) -> float:
        return self.size / float(self.box[3] - self.box[1])

    def to_output(self, x, y):
        """Source-pixel coordinates (scalars or arrays) -> preprocessed-image pixels."""
        return (
            (np.asarray(x, float) - self.box[0]) * self.sx,
            (np.asarray(y, float) - self.box[1]) * self.sy,
        )

    def to_source(self, x, y):
        """Preprocessed-image pixels -> source-pixel coordinates (the inverse map)."""
        return (
            np.asarray(x, float) / self.sx + self.box[0],
            np.asarray(y, float) / self.sy + self.box[1],
        )


def crop_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """The square chest region of ``img`` as ``(x0, y0, x1, y1)``, half-open, in pixels.

    Rule: on a copy shrunk to at most 256 px and blurred (Gaussian, sigma 2 px), a row
    (column) is border when under 10 % of its pixels are brighter than a tenth of the
    image's 99th percentile (black borders, rotated-scan corners) or when it is flat,
    standard deviation under 2 grey levels (black or white collimation bands). Border
    rows and columns are trimmed from each edge inwards, at most
    :data:`CROP_MAX_SIDE_FRACTION` of the axis per side. The region is then grown to a
    square around its centre, kept inside the image where it fits; where it cannot
    (a region wider than the image is tall), the box extends past the image and
    :func:`preprocess` pads with black. An image with no border gives its full frame.
    """
    img = _check_image(img)
    h, w = img.shape
    scale = min(1.0, 256.0 / max(h, w))
    small = (
        img
        if scale == 1.0
        else cv2.resize(
            img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    )
    small = cv2.GaussianBlur(small.astype(np.float32), (0, 0), 2.0)
    dark = 0.1 * float(np.percentile(small, 99))

    def trim(axis: int) -> tuple[int, int]:
        bright = (small > dark).mean(axis=axis)
        flat = small.std(axis=axis) < 2.0
        border = (bright < 0.10) | flat
        n = border.size
        limit = int(n * CROP_MAX_SIDE_FRACTION)
        lo = 0
        while lo < limit and border[lo]:
            lo += 1
        hi = n
        while n - hi < limit and border[hi - 1]:
            hi -= 1
        return lo, hi

    r0, r1 = trim(axis=1)
    c0, c1 = trim(axis=0)
    # back to full resolution, rounding outwards (never cut more than was measured)
    y0, y1 = int(np.floor(r0 / scale)), min(h, int(np.ceil(r1 / scale)))
    x0, x1 = int(np.floor(c0 / scale)), min(w, int(np.ceil(c1 / scale)))
    side = max(x1 - x0, y1 - y0)
    bx0, bx1 = _square_span(x0, x1, side, w)
    by0, by1 = _square_span(y0, y1, side, h)
    return bx0, by0, bx1, by1


def _square_span(a0: int, a1: int, side: int, n: int) -> tuple[int, int]:
    """Grow ``[a0, a1)`` to length ``side`` around its centre, inside ``[0, n)`` if it fits."""
    start = (a0 + a1 - side) // 2
    if side <= n:
        start = min(max(start, 0), n - side)
    return start, start + side


def preprocess(
    img: np.ndarray,
    *,
    size: int = 256,
    clahe: bool = False,
    crop: bool = False,
    return_map: bool = False,
):
    """Greyscale ``uint8`` ``(H, W)`` -> ``uint8`` ``(size, size)``, the cached image.

    Steps, in order: with ``crop``, cut :func:`crop_box` (padding with black where the
    square box leaves the image); resize to ``size`` x ``size`` with ``cv2.INTER_AREA``
    (area averaging: no aliasing when shrinking; a non-square image without ``crop`` is
    stretched, as NIH itself did when it made the 1024 x 1024 release); with ``clahe``,
    apply CLAHE (:data:`CLAHE_CLIP_LIMIT`, :data:`CLAHE_TILES`) to the resized image.
    With ``return_map=True`` returns ``(image, PixelMap)``, the map from ``img``'s
    pixels to the output's.
    """
    img = _check_image(img)
    PreprocessSettings(size=size, clahe=clahe, crop=crop)  # validates the arguments
    h, w = img.shape
    box = crop_box(img) if crop else (0, 0, w, h)
    region = _cut(img, box)
    if region.shape == (size, size):
        out = region.copy()
    else:
        out = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)
    if clahe:
        out = _clahe().apply(out)
    if return_map:
        return out, PixelMap(box=tuple(box), size=size)
    return out


def _cut(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``img[y0:y1, x0:x1]``, with black where the box lies outside the image."""
    x0, y0, x1, y1 = box
    h, w = img.shape
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return img[y0:y1, x0:x1]
    out = np.zeros((y1 - y0, x1 - x0), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


@lru_cache(maxsize=1)
def _clahe():
    return cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES)


def _check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(
            f"expected a greyscale uint8 (H, W) image, got {img.dtype} "
            f"{img.shape}; decode with read_xray or convert with to_uint8"
        )
    if img.size == 0:
        raise ValueError(f"empty image {img.shape}")
    return img
