"""DICOM files -> grey ``uint8`` ``(H, W)``, and the one reader for any image file or array.

:func:`read_dicom` turns a radiograph's stored values into what a reader sees, in the
order the DICOM standard's grey-scale pipeline applies them (PS3.4 N.2.1.1), all with
pydicom's own functions:

1. decode the pixel data (``Dataset.pixel_array``; compressed transfer syntaxes need a
   pydicom plugin: JPEG Lossless, the usual DX/CR encoding, needs ``pylibjpeg`` +
   ``pylibjpeg-libjpeg`` or ``python-gdcm``; without one the error names the file, its
   transfer syntax and what to install);
2. the modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence):
   :func:`pydicom.pixels.apply_modality_lut`;
3. the VOI LUT (a VOI LUT Sequence, else ``WindowCenter``/``WindowWidth``, first view):
   :func:`pydicom.pixels.apply_voi_lut`;
4. to 8 bits by the rule PNGs follow (:func:`cxrkit.data.images.to_uint8`): 8-bit
   pixels pass through unchanged, anything deeper is mapped linearly from the image's
   own min..max to 0..255 (a windowed image, clipped to the window's output range, so
   has its window mapped to 0..255 whenever it reaches both ends of it, as a chest film
   does). Where the LUTs of steps 2-3 are identities (``RescaleSlope=1`` /
   ``RescaleIntercept=0``, for which pydicom returns floats), the stored pixels are
   used as stored, so such tags change nothing; 8-bit means ``BitsStored <= 8``
   whatever the container. So an 8-bit PNG and a DICOM of the same pixels give the
   model the same input (:func:`_to_grey`);
5. ``MONOCHROME1`` (bright = low value) is inverted, ``255 - x``, so bone is bright like
   in NIH's PNGs. Colour (``RGB``, ``YBR_*``, which pydicom converts to RGB) becomes
   luminance with the ITU-R 601 weights Pillow uses for PNGs; LUTs do not apply to colour.

:func:`read_image` dispatches any file (PNG/JPEG via :func:`cxrkit.data.images.read_xray`,
DICOM by extension or by its ``DICM`` preamble) and :func:`grey_uint8` turns any array into
grey ``uint8``. They live here, with no torch import, so that the ONNX backend
(:mod:`cxrkit.inference.export`) repeats the checkpoint's cache stage without torch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from cxrkit.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_xray, to_uint8
from cxrkit.messages import quote

#: File name endings taken as DICOM (files without one are recognised by their preamble).
DICOM_EXTENSIONS = (".dcm", ".dicom")

#: ITU-R 601 luminance weights, the ones Pillow's ``convert("L")`` uses for PNG/JPEG.
LUMINANCE = (0.299, 0.587, 0.114)

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def has_dicom_preamble(data: bytes) -> bool:
    """DICOM Part 10 bytes: a 128-byte preamble, then ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` name or a file whose bytes 128..131 are ``DICM``."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return has_dicom_preamble(head)


def read_image(path: str | Path) -> np.ndarray:
    """Any supported file (PNG, JPEG, ..., or DICOM) -> grey ``uint8`` ``(H, W)``."""
    return read_dicom(path) if is_dicom(path) else read_xray(path)


def grey_uint8(image) -> np.ndarray:
    """An array -> grey ``uint8`` ``(H, W)``: RGB(A) ``(H, W, 3|4)`` becomes luminance
    (:data:`LUMINANCE`, alpha dropped), other depths go through :func:`to_uint8`."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        lum = arr[..., :3].astype(np.float64) @ LUMINANCE
        arr = np.rint(lum).clip(0, 255).astype(np.uint8) if arr.dtype == np.uint8 else lum
    if arr.ndim != 2:
        raise ValueError(f"expected a grey (H, W) or colour (H, W, 3|4) image, got shape "
                         f"{arr.shape}")
    return to_uint8(arr)


def read_dicom(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one DICOM radiograph to grey ``uint8`` ``(H, W)`` (steps: module docstring).

    Raises :class:`~cxrkit.data.images.ImageReadError` naming the file for: a file that is
    not DICOM, no pixel data, more than one frame, more than ``max_pixels`` pixels, an
    unknown photometric interpretation, or pixel data that cannot be decoded (for a
    compressed transfer syntax without a plugin: which one, and what to install).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not a file") from None
    except InvalidDicomError as e:
        raise ImageReadError(path, f"not a DICOM file ({e})") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise ImageReadError(path, f"corrupt DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file without pixel data (not an image: a report, "
                                   "a structured document or a presentation state?)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise ImageReadError(path, f"{cols}x{rows} pixels is over the limit of "
                                   f"{max_pixels:,} (max_pixels)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageReadError(path, f"{frames} frames; a radiograph has one (multi-frame "
                                   "DICOM is not supported)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in _MONOCHROME + _COLOUR:
        raise ImageReadError(path, f"photometric interpretation {quote(photometric)} is not "
                                   "supported (only MONOCHROME1/2, RGB and YBR)")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, TypeError) as e:
        name = f"{ts.name} ({ts})" if ts is not None else "unknown transfer syntax"
        if ts is not None and ts.is_compressed and "missing dependencies" in str(e):
            hint = ("no installed pydicom plugin decodes it; install one, e.g. "
                    "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or "
                    "`pip install python-gdcm`")
        else:
            hint = "the pixel data could not be decoded (corrupt or truncated?)"
        detail = " ".join(str(e).split())
        raise ImageReadError(path, f"{name}: {hint} [{detail}]") from None
    if photometric in _COLOUR:
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ImageReadError(path, f"{photometric} pixel data of shape {pixels.shape}")
        return grey_uint8(pixels)
    if pixels.ndim != 2:
        raise ImageReadError(path, f"decoded to shape {pixels.shape}, expected (H, W)")
    try:
        values = apply_modality_lut(pixels, ds)
        values = apply_voi_lut(values, _wide_voi_lut(ds))
        grey = _to_grey(values, pixels, ds)
    except (ValueError, NotImplementedError, AttributeError, IndexError, TypeError) as e:
        raise ImageReadError(path, f"cannot apply its modality/VOI LUT "
                                   f"({type(e).__name__}: {e})") from None
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return np.ascontiguousarray(grey, dtype=np.uint8)


def _to_grey(values: np.ndarray, pixels: np.ndarray, ds) -> np.ndarray:
    """Step 4 of the module docstring: the LUT output ``values`` of stored ``pixels`` to
    ``uint8``, by the PNG rule, with identity LUTs taken as no LUTs at all.

    Why: pydicom's ``apply_modality_lut`` returns ``float64`` whenever rescale tags are
    present, even identity ones, and :func:`to_uint8` stretches any non-``uint8`` array
    min..max; an 8-bit NIH image spanning 4..238 was stretched to 0..255 with the tags
    and not without them (probabilities moved by up to 0.011).
    """
    identity = values.shape == pixels.shape and np.array_equal(values, pixels)
    if not identity:
        return to_uint8(values)
    bits = int(ds.get("BitsStored", pixels.dtype.itemsize * 8) or 0)
    if 0 < bits <= 8 and pixels.size and pixels.min() >= 0 and pixels.max() <= 255:
        return pixels.astype(np.uint8)  # 8-bit, like an 8-bit PNG: as stored
    return to_uint8(pixels)


def _wide_voi_lut(ds):
    """``ds`` with an 8-bit VOI LUT declared 16-bit (same entries), else ``ds`` itself.

    Why: pydicom 3.0's ``apply_voi`` computes the table index in the table's own dtype,
    ``uint8`` for an 8-bit LUT, so with more than 256 entries (4096 for 12-bit data, the
    usual case) indexes above 255 wrap around and a 4095 is looked up at 255. Declaring the
    table 16-bit gives it a ``uint16`` index; the entries (0..255) are unchanged.
    """
    seq = ds.get("VOILUTSequence")
    if not seq or list(seq[0].get("LUTDescriptor") or [0, 0, 0])[2] != 8:
        return ds
    ds = copy.deepcopy(ds)
    desc = list(ds.VOILUTSequence[0].LUTDescriptor)
    ds.VOILUTSequence[0].LUTDescriptor = [desc[0], desc[1], 16]
    return ds


__all__ = ["DICOM_EXTENSIONS", "LUMINANCE", "grey_uint8", "has_dicom_preamble", "is_dicom",
           "read_dicom", "read_image"]
