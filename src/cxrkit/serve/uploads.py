"""Uploaded bytes -> grey ``uint8`` X-ray, or an :class:`UploadError` with its HTTP status.

The web service decodes exactly as training and ``cxrkit predict`` do: the bytes go to a
private temporary file and through :func:`cxrkit.data.images.read_xray` (PNG/JPEG: RGBA,
16-bit and palette files become grey the same way). A temporary file rather than a
second, in-memory decoder, because two decoders would drift apart; it costs one small
write per request. DICOM goes through :func:`cxrkit.data.dicom.read_dicom` (modality and
VOI LUTs, MONOCHROME1), recognised by its ``DICM`` preamble.

Checks, in order, each naming what was wrong:

* **empty** upload -> 400;
* over ``max_upload_bytes`` -> 413 (the whole request body is also capped while it
  streams in, before it is buffered: :class:`cxrkit.serve.app.BodyLimit`);
* the **content** decides the format, never the file name: Pillow's header probe (no
  pixel decoding) must say PNG or JPEG, or the bytes must carry DICOM's ``DICM`` marker;
  anything else -> 415 naming what it looked like;
* the **dimensions** from the header (width x height, or DICOM Rows x Columns x frames)
  must be at most ``max_pixels`` before any pixel is decoded (decompression bombs: a
  small file that claims billions of pixels) -> 413;
* a file that then fails to decode (truncated, corrupt) -> 422.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from cxrkit.data.dicom import has_dicom_preamble, read_dicom
from cxrkit.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_xray
from cxrkit.data.metadata import dicom_tags

#: Default cap on one uploaded file, bytes. A 16-bit 4300 x 3500 PNG radiograph is about
#: 20-30 MB; DICOM originals are similar.
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: Default cap on decoded pixels (width x height), shared with the training reader.
DEFAULT_MAX_UPLOAD_PIXELS = DEFAULT_MAX_PIXELS
#: Formats accepted from Pillow's header probe (DICOM is recognised separately).
ACCEPTED_FORMATS = ("PNG", "JPEG")


class UploadError(ValueError):
    """An upload the service refuses; ``status`` is the HTTP status, ``detail`` why."""

    def __init__(self, status: int, detail: str):
        self.status = status
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class DecodedUpload:
    """A decoded upload: the grey image and what the file was."""

    image: np.ndarray   #: grey uint8 (H, W), before the checkpoint's cache stage
    format: str         #: "PNG", "JPEG" or "DICOM"
    width: int          #: pixels
    height: int         #: pixels
    bytes: int          #: size of the uploaded file
    #: patient metadata from a DICOM's header (``age``/``sex``/``view``: the raw
    #: ``PatientAge``/``PatientSex``/``ViewPosition`` values, None where absent); empty for
    #: PNG and JPEG
    tags: dict = field(default_factory=dict)


def decode_upload(data: bytes, filename: str = "upload", *,
                  max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                  max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> DecodedUpload:
    """Check and decode one uploaded file; see the module docstring for the rules."""
    name = filename or "upload"
    if len(data) == 0:
        raise UploadError(400, f"{name}: empty file (0 bytes); upload a PNG, JPEG or "
                               "DICOM chest X-ray")
    if len(data) > max_upload_bytes:
        raise UploadError(413, f"{name}: {len(data):,} bytes is over the upload limit of "
                               f"{max_upload_bytes:,} bytes (max_upload_bytes)")
    tags: dict = {}
    if has_dicom_preamble(data):
        fmt, (w, h, frames, tags) = "DICOM", _dicom_header(data, name)
    else:
        fmt, (w, h) = _probe(data, name, max_pixels)
        frames = 1
    if w * h * frames > max_pixels:
        size = f"{w}x{h} pixels" + (f" x {frames} frames" if frames > 1 else "")
        raise UploadError(413, f"{name}: {size} is over the limit of {max_pixels:,} pixels "
                               "(max_pixels)")
    if w == 0 or h == 0:
        raise UploadError(422, f"{name}: the image has no pixels ({w}x{h})")
    image = _decode(data, name, fmt, max_pixels)
    return DecodedUpload(image=image, format=fmt, width=int(image.shape[1]),
                         height=int(image.shape[0]), bytes=len(data), tags=tags)


def _probe(data: bytes, name: str, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Format and size from the header alone (Pillow's ``open`` reads no pixel data)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, size = im.format, im.size
    except Image.DecompressionBombError as e:  # Pillow's own guard, at 2 x its warning size
        raise UploadError(413, f"{name}: {e} The limit here is {max_pixels:,} pixels "
                               "(max_pixels)") from None
    except Image.UnidentifiedImageError:
        raise UploadError(415, f"{name}: not a recognised image (the content is neither "
                               "PNG, JPEG nor DICOM, whatever its name says)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UploadError(422, f"{name}: corrupt image header ({type(e).__name__}: "
                               f"{e})") from None
    if fmt not in ACCEPTED_FORMATS:
        raise UploadError(415, f"{name}: a {fmt} image; the service accepts "
                               f"{', '.join(ACCEPTED_FORMATS)} or DICOM")
    return fmt, size


def _dicom_header(data: bytes, name: str) -> tuple[int, int, int, dict]:
    """Columns, Rows, NumberOfFrames and the patient-metadata tags from the DICOM header
    (pixel data not read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        tags = dicom_tags(ds)
    except Exception as e:  # pydicom raises many types for bad headers
        raise UploadError(422, f"{name}: unreadable DICOM header ({type(e).__name__}: "
                               f"{e})") from None
    return cols, rows, frames, tags


def _decode(data: bytes, name: str, fmt: str, max_pixels: int) -> np.ndarray:
    fd, tmp = tempfile.mkstemp(prefix="cxrkit-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if fmt == "DICOM":
            return read_dicom(tmp, max_pixels=max_pixels)
        return read_xray(tmp, max_pixels=max_pixels)
    except ImageReadError as e:
        raise UploadError(422, f"{name}: cannot decode: {e.reason}") from None
    finally:
        os.unlink(tmp)


__all__ = ["ACCEPTED_FORMATS", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_UPLOAD_PIXELS",
           "DecodedUpload", "UploadError", "decode_upload"]
