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

from cxrkit.data.images import DEFAULT_MAX_PIXELS, ImageReadError, os_reason, read_xray, to_uint8
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


def read_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None
) -> np.ndarray:
    """Any supported file (PNG, JPEG, ..., or DICOM) -> grey ``uint8`` ``(H, W)``.

    ``data``: the file's bytes (then DICOM is recognised by its preamble alone, and
    ``path`` only names the file in messages). In this process, unbounded in time: see
    :class:`cxrkit.data.decoder.Decoder` for untrusted files."""
    dicom = has_dicom_preamble(data) if data is not None else is_dicom(path)
    if dicom:
        return read_dicom(path, max_pixels=max_pixels, data=data)
    return read_xray(path, max_pixels=max_pixels, data=data)


def grey_uint8(image) -> np.ndarray:
    """An array -> grey ``uint8`` ``(H, W)``: RGB(A) ``(H, W, 3|4)`` becomes luminance
    (:data:`LUMINANCE`, alpha dropped), other depths go through :func:`to_uint8`."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        lum = arr[..., :3].astype(np.float64) @ LUMINANCE
        arr = np.rint(lum).clip(0, 255).astype(np.uint8) if arr.dtype == np.uint8 else lum
    if arr.ndim != 2:
        raise ValueError(
            f"expected a grey (H, W) or colour (H, W, 3|4) image, got shape {arr.shape}"
        )
    return to_uint8(arr)


def read_dicom(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None
) -> np.ndarray:
    """Decode one DICOM radiograph to grey ``uint8`` ``(H, W)`` (steps: module docstring).

    ``data``: the file's bytes, when they are in memory (an upload); ``path`` then only
    names it in messages. Raises :class:`~cxrkit.data.images.ImageReadError` naming the
    file for: a file that is not DICOM or is truncated or corrupt anywhere, no pixel data,
    an empty or missing ``Rows``/``Columns``, more than one frame, more than
    ``max_pixels`` pixels, an unknown photometric interpretation or transfer syntax, or
    pixel data that cannot be decoded (for a compressed transfer syntax without a plugin:
    which one, and what to install). Deflated files are inflated under a bound
    (:func:`read_dataset`). No other exception escapes for a bad file, but
    ``MemoryError`` (the caller's memory bound: :mod:`cxrkit.data.decoder` reports it).

    Not bounded in time (the JPEG 2000 box that loops pydicom's parser is refused here,
    but a decoder may have other loops): untrusted files go through
    :class:`cxrkit.data.decoder.Decoder`, which runs this in a worker process with a
    deadline and a memory bound.
    """
    return grey_from_dataset(
        read_dataset(path, data=data, max_pixels=max_pixels), path, max_pixels=max_pixels
    )


def grey_from_dataset(ds, path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`read_dicom`'s steps on a dataset already read (:func:`read_dataset`)."""
    try:
        return _pixels_to_grey(ds, Path(path), max_pixels)
    except (ImageReadError, MemoryError):  # MemoryError: the caller's bound (the decoder's)
        raise
    except Exception as e:  # noqa: BLE001 - pydicom and its plugins raise anything on bad data
        raise ImageReadError(path, f"corrupt DICOM pixel data ({_why(e)})") from None


def dicom_tags(ds) -> dict:
    """``{"age", "sex", "view"}``: a pydicom dataset's ``PatientAge``, ``PatientSex`` and
    ``ViewPosition`` as stored (None where absent)."""
    return {
        "age": ds.get("PatientAge"),
        "sex": ds.get("PatientSex"),
        "view": ds.get("ViewPosition"),
    }


def _why(e: BaseException) -> str:
    """``Type: message`` on one line, cut (no traceback)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _int_tag(ds, keyword: str, path, default: int | None = None) -> int:
    """An integer tag (``Rows``, ``Columns``, ...), or ImageReadError naming the tag when it
    is empty, missing (without a default) or not a number."""
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise ImageReadError(path, f"DICOM tag {keyword} is empty or missing")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageReadError(
            path, f"DICOM tag {keyword} is not a number ({quote(str(value))})"
        ) from None


def image_size(ds, path) -> tuple[int, int, int]:
    """``(columns, rows, frames)`` of a DICOM dataset, checked (one-line errors)."""
    rows, cols = _int_tag(ds, "Rows", path), _int_tag(ds, "Columns", path)
    frames = (
        _int_tag(ds, "NumberOfFrames", path, 1) if ds.get("NumberOfFrames") not in (None, "") else 1
    )
    if rows < 0 or cols < 0 or frames < 0:
        raise ImageReadError(path, f"negative size ({cols}x{rows}, {frames} frames)")
    return cols, rows, frames


def _pixels_to_grey(ds, path, max_pixels: int) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds:
        raise ImageReadError(
            path,
            "DICOM file without pixel data (not an image: a report, "
            "a structured document or a presentation state?)",
        )
    cols, rows, frames = image_size(ds, path)
    if rows * cols > max_pixels:
        raise ImageReadError(
            path, f"{cols}x{rows} pixels is over the limit of {max_pixels:,} (max_pixels)"
        )
    if rows == 0 or cols == 0:
        raise ImageReadError(path, f"image has no pixels ({cols}x{rows})")
    if frames != 1:
        raise ImageReadError(
            path, f"{frames} frames; a radiograph has one (multi-frame DICOM is not supported)"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in _MONOCHROME + _COLOUR:
        raise ImageReadError(
            path,
            f"photometric interpretation {quote(photometric)} is not "
            "supported (only MONOCHROME1/2, RGB and YBR)",
        )
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    _check_jp2_boxes(ds, ts, path)
    try:
        pixels = ds.pixel_array
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - plugins raise anything; the reason is kept
        raise ImageReadError(path, _pixel_error(ts, e)) from None
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
        raise ImageReadError(
            path, f"cannot apply its modality/VOI LUT ({type(e).__name__}: {e})"
        ) from None
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return np.ascontiguousarray(grey, dtype=np.uint8)


#: JPEG 2000 transfer syntaxes (their first fragment may be a JP2 file with boxes).
_J2K_SYNTAXES = (
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
)
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _check_jp2_boxes(ds, ts, path) -> None:
    """Refuse a JP2-wrapped JPEG 2000 frame whose box lengths would loop pydicom's
    parameter parser (``get_j2k_parameters`` steps by each box's length: a zero-length box
    before the codestream never advances). The decoder's deadline bounds any other loop;
    this check keeps the in-process readers (``cxrkit.load(run).predict(paths)``) safe from
    the known one."""
    if ts is None or str(ts) not in _J2K_SYNTAXES:
        return
    from pydicom.encaps import generate_frames

    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    except Exception:  # noqa: BLE001 - malformed encapsulation: pydicom says why later
        return
    if not first.startswith(_JP2_SIGNATURE):
        return
    offset = len(_JP2_SIGNATURE)
    while offset + 8 <= len(first):
        length = int.from_bytes(first[offset : offset + 4], "big")
        if first[offset + 4 : offset + 8] == b"jp2c":
            return
        if length < 8 and length != 1:  # 1: an extended length follows
            raise ImageReadError(
                path,
                f"malformed JPEG 2000 data: a box of length {length} "
                f"at byte {offset} of the first frame",
            )
        if length == 1:
            length = int.from_bytes(first[offset + 8 : offset + 16], "big")
            if length < 16:
                raise ImageReadError(
                    path,
                    f"malformed JPEG 2000 data: a box of extended length {length} at byte {offset}",
                )
        offset += length


def _pixel_error(ts, e: BaseException) -> str:
    """Why ``pixel_array`` failed, naming the transfer syntax (and a plugin to install when
    one is missing). Never raises itself: an unknown UID has no ``is_compressed``."""
    if ts is None:
        name, known, compressed = "unknown transfer syntax", False, False
    else:
        known = bool(getattr(ts, "is_transfer_syntax", False))
        name = f"{ts.name} ({ts})" if known else f"transfer syntax {quote(str(ts))}"
        compressed = known and bool(ts.is_compressed)
    if not known and ts is not None:
        hint = (
            "not a transfer syntax pydicom knows (a private or invalid UID), so the "
            "pixel data cannot be decoded"
        )
    elif compressed and "missing dependencies" in str(e):
        hint = (
            "no installed pydicom plugin decodes it; install one, e.g. "
            "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or "
            "`pip install python-gdcm`"
        )
    else:
        hint = "the pixel data could not be decoded (corrupt or truncated?)"
    return f"{name}: {hint} [{_why(e)}]"


#: Deflated DICOM: bytes inflated before the header is parsed for ``Rows``/``Columns``.
INFLATE_HEADER_BYTES = 1 << 20
#: Slack allowed above the pixel data ``Rows x Columns x samples x bytes`` needs (the header
#: before it, elements after it, padding).
INFLATE_SLACK_BYTES = 16 << 20


def read_dataset(
    path: str | Path,
    *,
    data: bytes | None = None,
    stop_before_pixels=False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
):
    """pydicom's dataset of a file (or of ``data``, its bytes), or ImageReadError naming it.

    Every exception pydicom raises on a truncated, byte-flipped or otherwise corrupt file
    (``struct.error``, ``BytesLengthException``, ``KeyError``, ...) becomes one line.
    Deflated Explicit VR files (the whole dataset zlib-compressed) are inflated here, in
    chunks, never past what the image can need: first :data:`INFLATE_HEADER_BYTES` to read
    ``Rows``/``Columns``/``SamplesPerPixel``/``BitsAllocated``, then up to their product
    plus :data:`INFLATE_SLACK_BYTES` (or, without them, ``2 x max_pixels`` plus the
    slack). A deflate bomb (a 1 MB file that inflates to gigabytes) is refused at that
    size, before the memory is taken. ``stop_before_pixels`` reads the header only.
    """
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        fp = io.BytesIO(data) if data is not None else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not a file") from None
    except OSError as e:
        raise ImageReadError(path, os_reason(e, path)) from None
    try:
        with fp:
            inflated = _inflate_deflated(fp, path, max_pixels, stop_before_pixels)
            if inflated is not None:
                return inflated
            fp.seek(0)
            return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
    except (ImageReadError, MemoryError):  # MemoryError: the caller's bound (the decoder's)
        raise
    except InvalidDicomError as e:
        raise ImageReadError(path, f"not a DICOM file ({e})") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on corrupt files
        raise ImageReadError(path, f"corrupt or truncated DICOM file ({_why(e)})") from None


def _inflate_deflated(fp, path: Path, max_pixels: int, stop_before_pixels: bool):
    """The dataset of a Deflated Explicit VR Little Endian file, inflated under the bound of
    :func:`read_dataset`; None (``fp`` untouched in meaning) for any other file."""
    import zlib

    import pydicom
    from pydicom.filereader import read_preamble, read_dataset as read_body
    from pydicom.filereader import _read_file_meta_info  # pydicom's own meta reader
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    preamble = read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()

    def inflate(limit: int) -> bool:
        """Inflate until ``limit`` bytes are out; True when the stream ends within it."""
        while len(out) < limit and not inflater.eof:
            chunk = inflater.unconsumed_tail or fp.read(1 << 16)
            if not chunk:
                return True  # input ended (a truncated stream ends here too)
            out.extend(inflater.decompress(chunk, limit - len(out)))
        if inflater.eof:
            return True
        # at the limit: the stream ends only when nothing more comes out
        probe = inflater.unconsumed_tail or fp.read(1 << 16)
        return not probe or not inflater.decompress(probe, 1)

    def parse(stop: bool):
        meta_copy = copy.deepcopy(meta)
        body = read_body(
            io_bytes(bytes(out)), False, True, stop_when=_stop_at_pixels if stop else None
        )
        meta_copy.TransferSyntaxUID = ExplicitVRLittleEndian  # what it is, inflated
        ds = pydicom.dataset.FileDataset(str(path), body, preamble, meta_copy, False, True)
        ds.set_original_encoding(False, True, body._character_set)
        return ds

    ended = inflate(INFLATE_HEADER_BYTES)
    if ended:
        return parse(stop_before_pixels)
    try:  # the header, from the first bytes (a header longer than them: no sizes)
        head = parse(True)
        cols, rows, frames = image_size(head, path)
    except Exception:  # noqa: BLE001 - then the hard cap below bounds it
        head, cols, rows, frames = None, 0, 0, 0
    if stop_before_pixels and head is not None:
        return head
    if cols * rows > max_pixels:
        raise ImageReadError(
            path, f"{cols}x{rows} pixels is over the limit of {max_pixels:,} (max_pixels)"
        )
    if rows and cols:
        samples = int(head.get("SamplesPerPixel", 1) or 1)
        bits = int(head.get("BitsAllocated", 16) or 16)
        need = rows * cols * max(frames, 1) * samples * ((bits + 7) // 8)
    else:
        need = 2 * max_pixels
    limit = need + INFLATE_SLACK_BYTES
    if not inflate(limit):
        raise ImageReadError(
            path,
            f"deflated data inflates past {limit:,} bytes, more than "
            f"its {cols}x{rows} pixels can need (a decompression "
            "bomb?); not inflated further",
        )
    return parse(stop_before_pixels)


def _stop_at_pixels(tag, vr, length) -> bool:
    return tag == 0x7FE00010


def io_bytes(data: bytes):
    """A file-like object over ``data`` (pydicom's own, so reads past the end raise)."""
    from pydicom.filebase import DicomBytesIO

    return DicomBytesIO(data)


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


__all__ = [
    "DICOM_EXTENSIONS",
    "INFLATE_HEADER_BYTES",
    "INFLATE_SLACK_BYTES",
    "LUMINANCE",
    "dicom_tags",
    "grey_from_dataset",
    "grey_uint8",
    "has_dicom_preamble",
    "image_size",
    "is_dicom",
    "read_dataset",
    "read_dicom",
    "read_image",
]
