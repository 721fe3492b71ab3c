"""Uploaded bytes -> grey ``uint8`` X-ray, or an :class:`UploadError` with its HTTP status.

The web service decodes exactly as training and ``cxrkit predict`` do, with the same
readers fed the bytes in memory (no temporary file): PNG/JPEG through
:func:`cxrkit.data.images.read_xray` (RGBA, 16-bit and palette files become grey the same
way; EXIF orientation applied), DICOM through :func:`cxrkit.data.dicom.read_dicom`
(modality and VOI LUTs, MONOCHROME1; Deflate inflated under a bound), recognised by its
``DICM`` preamble. The service runs :func:`decode_upload` in a worker process of
:class:`cxrkit.data.decoder.Decoder` (a deadline and a memory bound per upload), so a
hostile file costs one worker, never the service.

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
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from cxrkit.data.dicom import dicom_tags, has_dicom_preamble, image_size, read_dataset, read_image
from cxrkit.data.images import DEFAULT_MAX_PIXELS, ImageReadError

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

    def __reduce__(self):  # raised in a decoding worker process, re-raised in the service
        return (type(self), (self.status, self.detail))


@dataclass(frozen=True)
class DecodedUpload:
    """A decoded upload: the grey image and what the file was."""

    image: np.ndarray  #: grey uint8 (H, W), before the checkpoint's cache stage
    format: str  #: "PNG", "JPEG" or "DICOM"
    width: int  #: pixels
    height: int  #: pixels
    bytes: int  #: size of the uploaded file
    #: patient metadata from a DICOM's header (``age``/``sex``/``view``: the raw
    #: ``PatientAge``/``PatientSex``/``ViewPosition`` values, None where absent); empty for
    #: PNG and JPEG
    tags: dict = field(default_factory=dict)


def decode_upload(
    data: bytes,
    filename: str = "upload",
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
) -> DecodedUpload:
    """Check and decode one uploaded file; see the module docstring for the rules."""
    name = filename or "upload"
    if len(data) == 0:
        raise UploadError(
            400, f"{name}: empty file (0 bytes); upload a PNG, JPEG or DICOM chest X-ray"
        )
    if len(data) > max_upload_bytes:
        raise UploadError(
            413,
            f"{name}: {len(data):,} bytes is over the upload limit of "
            f"{max_upload_bytes:,} bytes (max_upload_bytes)",
        )
    tags: dict = {}
    if has_dicom_preamble(data):
        fmt, (w, h, frames, tags) = "DICOM", _dicom_header(data, name)
    else:
        fmt, (w, h) = _probe(data, name, max_pixels)
        frames = 1
    if w * h * frames > max_pixels:
        size = f"{w}x{h} pixels" + (f" x {frames} frames" if frames > 1 else "")
        raise UploadError(
            413, f"{name}: {size} is over the limit of {max_pixels:,} pixels (max_pixels)"
        )
    if w == 0 or h == 0:
        raise UploadError(422, f"{name}: the image has no pixels ({w}x{h})")
    image = _decode(data, name, fmt, max_pixels)
    return DecodedUpload(
        image=image,
        format=fmt,
        width=int(image.shape[1]),
        height=int(image.shape[0]),
        bytes=len(data),
        tags=tags,
    )


def _probe(data: bytes, name: str, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Format and size from the header alone (Pillow's ``open`` reads no pixel data)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, size = im.format, im.size
    except Image.DecompressionBombError as e:  # Pillow's own guard, at 2 x its warning size
        raise UploadError(
            413, f"{name}: {e} The limit here is {max_pixels:,} pixels (max_pixels)"
        ) from None
    except Image.UnidentifiedImageError:
        raise UploadError(
            415,
            f"{name}: not a recognised image (the content is neither "
            "PNG, JPEG nor DICOM, whatever its name says)",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UploadError(422, f"{name}: corrupt image header ({type(e).__name__}: {e})") from None
    if fmt not in ACCEPTED_FORMATS:
        raise UploadError(
            415,
            f"{name}: a {fmt} image; the service accepts {', '.join(ACCEPTED_FORMATS)} or DICOM",
        )
    return fmt, size


def _dicom_header(data: bytes, name: str) -> tuple[int, int, int, dict]:
    """Columns, Rows, NumberOfFrames and the patient-metadata tags from the DICOM header
    (pixel data not read; a deflated file inflated only as far as its header)."""
    try:
        ds = read_dataset(name, data=data, stop_before_pixels=True)
        cols, rows, frames = image_size(ds, name)
    except ImageReadError as e:
        raise UploadError(422, f"{name}: unreadable DICOM header ({e.reason})") from None
    return cols, rows, frames, dicom_tags(ds)


def _decode(data: bytes, name: str, fmt: str, max_pixels: int) -> np.ndarray:
    try:
        return read_image(name, data=data, max_pixels=max_pixels)
    except ImageReadError as e:
        raise UploadError(422, f"{name}: cannot decode: {e.reason}") from None


__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_MAX_UPLOAD_PIXELS",
    "DecodedUpload",
    "UploadError",
    "decode_upload",
]
