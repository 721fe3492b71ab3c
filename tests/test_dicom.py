"""DICOM reading: LUTs, MONOCHROME1, bit depths, colour, and clear errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxrkit.data.dicom import grey_uint8, is_dicom, read_dicom, read_image
from cxrkit.data.images import ImageReadError, to_uint8


def write_dicom(
    path,
    pixels,
    *,
    photometric="MONOCHROME2",
    bits_stored=None,
    transfer_syntax=ExplicitVRLittleEndian,
    **elements,
):
    """A minimal DX/secondary-capture DICOM file holding ``pixels`` (made with pydicom)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        SecondaryCaptureImageStorage,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    if meta.TransferSyntaxUID.is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3not-really-jpeg\xff\xd9"])
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ramp12():
    """A 12-bit ramp in 16-bit storage: 0..4095 over 64 x 64 pixels."""
    return np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)


def test_12_bit_is_mapped_like_training_images(tmp_path, ramp12):
    got = read_dicom(write_dicom(tmp_path / "a.dcm", ramp12, bits_stored=12))
    assert got.dtype == np.uint8 and got.shape == (64, 64)
    np.testing.assert_array_equal(got, to_uint8(ramp12))  # the training rule, not >> 8
    assert got.min() == 0 and got.max() == 255


def test_monochrome1_is_inverted(tmp_path, ramp12):
    m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", ramp12, bits_stored=12))
    m1 = read_dicom(
        write_dicom(tmp_path / "m1.dcm", ramp12, bits_stored=12, photometric="MONOCHROME1")
    )
    np.testing.assert_array_equal(m1, 255 - m2)


def test_rescale_then_window(tmp_path, ramp12):
    # stored 0..4095 -> 2 * v - 100; window 1000..5000 of the rescaled values
    path = write_dicom(
        tmp_path / "w.dcm",
        ramp12,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=3000,
        WindowWidth=4000,
    )
    got = read_dicom(path).astype(int)
    v = ramp12.astype(float) * 2 - 100
    below, above = v <= 1000 - 0.5, v >= 5000 - 0.5
    assert (got[below] == 0).all() and (got[above] == 255).all()  # clipped by the window
    inside = ~below & ~above
    expected = (v[inside] - 1000) / 4000 * 255  # linear across the window
    assert np.abs(got[inside] - expected).max() <= 1.0
    # without the window the same pixels span the whole range: the window did something
    plain = read_dicom(
        write_dicom(
            tmp_path / "p.dcm", ramp12, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100
        )
    )
    np.testing.assert_array_equal(plain, to_uint8(v))
    assert not np.array_equal(plain, got)


@pytest.mark.parametrize("bits", [8, 16])
def test_voi_lut_sequence(tmp_path, ramp12, bits):
    """A VOI LUT over all 4096 stored values (an 8-bit table once hit a pydicom bug)."""
    table = (np.sqrt(np.arange(4096) / 4095) * (2**bits - 1)).astype(int)  # a gamma curve
    item = Dataset()
    item.LUTDescriptor = [4096, 0, bits]
    item.LUTData = table.tolist()
    item["LUTData"].VR = "US"
    path = write_dicom(
        tmp_path / "voi.dcm",
        ramp12,
        bits_stored=12,
        VOILUTSequence=Sequence([item]),
        WindowCenter=10,
        WindowWidth=2,
    )
    got = read_dicom(path)
    np.testing.assert_array_equal(got, to_uint8(table[ramp12]))  # LUT preferred to window


def test_rgb_becomes_luminance(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (16, 20, 3)).astype(np.uint8)
    got = read_dicom(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    expected = np.rint(rgb.astype(float) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(grey_uint8(rgb), expected)


def test_8_bit_passes_through(tmp_path):
    img = np.random.default_rng(1).integers(10, 200, (8, 8)).astype(np.uint8)
    np.testing.assert_array_equal(read_dicom(write_dicom(tmp_path / "e.dcm", img)), img)


def test_read_image_finds_dicom_without_extension(tmp_path, ramp12):
    path = write_dicom(tmp_path / "IM0001", ramp12, bits_stored=12)
    assert is_dicom(path)
    np.testing.assert_array_equal(read_image(path), to_uint8(ramp12))


def test_compressed_without_plugin_names_file_and_fix(tmp_path):
    path = write_dicom(
        tmp_path / "jpegls.dcm", np.zeros((8, 8), np.uint8), transfer_syntax=JPEGLosslessSV1
    )
    with pytest.raises(ImageReadError) as e:
        read_dicom(path)
    msg = str(e.value)
    assert str(path) in msg and "JPEG Lossless" in msg and "pylibjpeg" in msg


def test_not_dicom_names_file(tmp_path):
    bad = tmp_path / "notes.dcm"
    bad.write_text("this is a text file, not a DICOM one")
    with pytest.raises(ImageReadError, match=r"notes\.dcm.*not a DICOM file"):
        read_image(bad)


def test_no_pixel_data_and_multiframe(tmp_path, ramp12):
    path = write_dicom(tmp_path / "sr.dcm", ramp12, bits_stored=12)
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="without pixel data"):
        read_dicom(path)
    multi = write_dicom(tmp_path / "mf.dcm", ramp12, bits_stored=12)
    ds = pydicom.dcmread(multi)
    ds.NumberOfFrames, ds.PixelData = 2, np.stack([ramp12, ramp12]).tobytes()
    ds.save_as(multi)
    with pytest.raises(ImageReadError, match="2 frames"):
        read_dicom(multi)


#: A real NIH original whose grey levels span 4..238, not 0..255: a min-max stretch of it
#: (what identity rescale tags used to trigger) changes every pixel.
NIH_NARROW = "originals/images_001/images/00000032_037.png"


@pytest.mark.parametrize("bits_allocated", [8, 16])
def test_identity_rescale_tags_change_nothing_on_a_real_nih_image(
    tmp_path, nih_sample, bits_allocated
):
    """One rule: the same stored pixels decode the same with or without identity
    RescaleSlope=1 / RescaleIntercept=0 (pydicom returns floats for those), and an 8-bit
    DICOM decodes exactly like the 8-bit PNG it was made from."""
    from cxrkit.data.images import read_xray

    png = read_xray(nih_sample / NIH_NARROW)
    assert png.min() > 0 and png.max() < 255  # the case that showed the bug
    pixels = png.astype(np.uint8 if bits_allocated == 8 else np.uint16)
    bare = read_dicom(write_dicom(tmp_path / "bare.dcm", pixels, bits_stored=8))
    tagged = read_dicom(
        write_dicom(
            tmp_path / "tagged.dcm",
            pixels,
            bits_stored=8,
            RescaleSlope=1,
            RescaleIntercept=0,
            RescaleType="US",
        )
    )
    np.testing.assert_array_equal(tagged, bare)
    np.testing.assert_array_equal(bare, png)


def test_identity_rescale_on_12_bit_data_keeps_the_stretch(tmp_path, ramp12):
    """Higher depths still go through to_uint8's min-max, tags or not."""
    bare = read_dicom(write_dicom(tmp_path / "a.dcm", ramp12 // 2 + 100, bits_stored=12))
    tagged = read_dicom(
        write_dicom(
            tmp_path / "b.dcm",
            ramp12 // 2 + 100,
            bits_stored=12,
            RescaleSlope=1,
            RescaleIntercept=0,
        )
    )
    np.testing.assert_array_equal(bare, tagged)
    np.testing.assert_array_equal(bare, to_uint8(ramp12 // 2 + 100))
    assert bare.min() == 0 and bare.max() == 255
