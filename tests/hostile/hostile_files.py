"""Builders of hostile input files for the hostile suite (issue 19), and a bounded runner.

(Imported by the tests as ``hostile_files``; tests/conftest.py holds the shared fixtures.)

Each builder writes a small file that once broke cxrkit (hang, memory blow-up, traceback);
the tests run cxrkit on them through the CLI (in a subprocess with a hard timeout, so the
suite cannot hang) or through the service.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

#: Hard wall-clock bound of one CLI run in these tests, seconds.
CLI_TIMEOUT_S = 120


def dicom_dataset(pixels: np.ndarray, transfer_syntax=None):
    """A minimal secondary-capture dataset holding ``pixels`` (uint8 or uint16, grey)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        SecondaryCaptureImageStorage,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "DX"
    ds.PatientAge, ds.PatientSex, ds.ViewPosition = "058Y", "M", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ts = ds.file_meta.TransferSyntaxUID
    encoding = {} if ts.is_transfer_syntax else {"implicit_vr": False, "little_endian": True}
    ds.save_as(buf, enforce_file_format=True, **encoding)
    return buf.getvalue()


def good_dicom(size: int = 64) -> bytes:
    """A valid 8-bit DICOM with a gradient, ``size`` px square."""
    ramp = np.add.outer(np.arange(size), np.arange(size)).astype(np.float64)
    return dicom_bytes(dicom_dataset((ramp * 255 / ramp.max()).astype(np.uint8)))


def j2k_zero_box_dicom() -> bytes:
    """A JPEG 2000 DICOM whose JP2 codestream has a zero-length box after the signature:
    pydicom's J2K parameter parser (``get_j2k_parameters``) loops on it for ever."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    codestream = (
        b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # the JP2 signature box
        b"\x00\x00\x00\x00ftyp" + b"\x00" * 16
    )  # a box of length 0
    ds = dicom_dataset(np.zeros((8, 8), np.uint8), JPEG2000Lossless)
    ds.PixelData = encapsulate([codestream])
    return dicom_bytes(ds)


def deflate_bomb_dicom(
    inflated_mb: int = 300, rows: int = 64, cols: int = 64, bits: int = 8
) -> bytes:
    """A Deflated Explicit VR DICOM declaring ``rows x cols`` pixels whose pixel data
    inflates to ``inflated_mb`` MB of zeros (the file is ~1000x smaller)."""
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dtype = np.uint8 if bits == 8 else np.uint16
    ds = dicom_dataset(np.zeros((1, 1), dtype), DeflatedExplicitVRLittleEndian)
    ds.Rows, ds.Columns = rows, cols
    del ds.PixelData
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    header = body.getvalue()
    size = inflated_mb * 2**20
    # PixelData (7FE0,0010) OB, explicit VR: tag, 'OB', 2 reserved bytes, 4-byte length
    pixel_head = b"\xe0\x7f\x10\x00OB\x00\x00" + size.to_bytes(4, "little")
    z = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [z.compress(header + pixel_head)]
    chunk = bytes(2**20)
    parts += [z.compress(chunk) for _ in range(inflated_mb)]
    parts.append(z.flush())
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(parts)


def exif_rotated_jpeg(orientation: int = 6) -> tuple[bytes, np.ndarray]:
    """A JPEG stored sideways with EXIF ``Orientation`` = ``orientation`` and the upright
    grey image a viewer shows (a bright band at the top)."""
    from PIL import Image

    upright = np.full((96, 64), 30, np.uint8)
    upright[:24] = 230  # the bright band: top of the film
    stored = np.rot90(upright, 1)  # what the camera wrote; Orientation 6 turns it back
    im = Image.fromarray(np.ascontiguousarray(stored))
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=98)
    return buf.getvalue(), upright


def run_cli(
    *args, timeout: float = CLI_TIMEOUT_S, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``python -m cxrkit.cli ARGS`` under a hard wall-clock bound (the suite never hangs:
    a run over ``timeout`` fails the test instead)."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONWARNINGS": "ignore",
        **(env or {}),
    }
    try:
        return subprocess.run(
            [sys.executable, "-m", "cxrkit.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"cxrkit {' '.join(map(str, args))} did not finish within {timeout} s "
            f"(hung); stderr: {(e.stderr or b'')[-2000:]!r}"
        )
