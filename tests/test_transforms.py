"""Batch train/eval transforms: shapes, ranges, determinism, geometry."""

from __future__ import annotations

import pytest
import torch

from cxrkit.data.transforms import AugmentSettings, EvalTransform, TrainTransform, presets, ten_crop


def batch(n=4, size=64):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)


def test_train_shapes_channels_and_seeded_randomness():
    x = batch()
    t = TrainTransform(32, mean=0.5, std=0.25, channels=3)
    a = t(x, torch.Generator().manual_seed(1))
    b = t(x, torch.Generator().manual_seed(1))
    c = t(x, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 0], a[:, 1])  # grey replicated
    assert a.min() >= (0 - 0.5) / 0.25 - 1e-5 and a.max() <= (1 - 0.5) / 0.25 + 1e-5


def test_identity_augmentation_is_a_resize():
    """With every range at its neutral value the warp reproduces the image."""
    x = batch(2, 32)
    neutral = AugmentSettings(
        scale=(1, 1), ratio=(1, 1), rotate_deg=0, translate=0, brightness=0, contrast=0
    )
    t = TrainTransform(32, mean=0.0, std=1.0, augment=neutral)
    assert torch.allclose(t(x), x.float() / 255, atol=1e-5)


def test_crop_zooms_in():
    """A crop of a quarter of the area shows half the field of view, at twice the scale."""
    ramp = torch.linspace(0, 1, 64).expand(1, 1, 64, 64).contiguous()  # intensity = x position
    zoom = AugmentSettings(
        scale=(0.25, 0.25), ratio=(1, 1), rotate_deg=0, translate=0, brightness=0, contrast=0
    )
    t = TrainTransform(64, mean=0.0, std=1.0, augment=zoom)
    theta = t.sample_theta(1, torch.Generator().manual_seed(0), "cpu")
    assert theta[0, 0, 0] == pytest.approx(0.5) and theta[0, 1, 1] == pytest.approx(0.5)
    out = t(ramp, torch.Generator().manual_seed(0))[0, 0]
    span = (out[:, -1] - out[:, 0]).mean()
    assert span == pytest.approx(0.5, abs=0.03)
    # rows are unchanged by a pure crop of a horizontal ramp
    assert torch.allclose(out[0], out[-1], atol=1e-5)


def test_eval_resize_and_centre_crop():
    x = batch(2, 64)
    t = EvalTransform(48, resize=56, mean=0.0, std=1.0)
    out = t(x)
    assert out.shape == (2, 1, 48, 48)
    assert torch.equal(out, t(x))  # deterministic
    with pytest.raises(ValueError, match="resize"):
        EvalTransform(64, resize=32)


def test_float_input_out_of_range_warns():
    t = EvalTransform(16)
    with pytest.warns(UserWarning, match="expected \\[0, 1\\]"):
        t(torch.full((1, 1, 16, 16), 200.0))


def test_ten_crop():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    crops = ten_crop(x, 6)
    assert crops.shape == (2, 10, 1, 6, 6)
    assert torch.equal(crops[:, 0], x[..., :6, :6])
    # the mirrored crops are the crops of the mirrored image (torchvision's TenCrop)
    assert torch.equal(crops[:, 5], x[..., :6, 2:].flip(-1))
    assert torch.equal(crops[:, 9], x.flip(-1)[..., 1:7, 1:7])
    assert torch.equal(crops[:, 4], x[..., 1:7, 1:7])


def test_presets_share_geometry():
    from cxrkit.data.images import PreprocessSettings
    from cxrkit.data.preprocessing import Preprocessing

    p = Preprocessing(
        cache=PreprocessSettings(size=48),
        input_size=32,
        eval_resize=40,
        tencrop_resize=40,
        mean=0.5,
        std=0.25,
        channels=3,
    )
    train, evaluate = presets(p)
    assert train.size == evaluate.size == 32 and evaluate.resize == 40


def test_affine_grid_matches_torch():
    from cxrkit.data.transforms import affine_grid

    theta = TrainTransform(16).sample_theta(5, torch.Generator().manual_seed(0), "cpu")
    ref = torch.nn.functional.affine_grid(theta, [5, 1, 16, 16], align_corners=False)
    assert torch.allclose(affine_grid(theta, 16), ref, atol=1e-6)


def test_cpu_uint8_warp_matches_grid_sample():
    """The OpenCV fast path and the device path agree to about one grey level."""
    from cxrkit.data.transforms import affine_grid, warp_uint8_cpu

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8, generator=g)
    x = torch.nn.functional.avg_pool2d(x.float(), 5, 1, 2).to(torch.uint8)  # smooth image
    theta = TrainTransform(48).sample_theta(3, torch.Generator().manual_seed(1), "cpu")
    fast = warp_uint8_cpu(x, theta, 48).float()
    ref = torch.nn.functional.grid_sample(
        x.float(),
        affine_grid(theta, 48),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    assert (fast - ref).abs().max() <= 2.0
    assert (fast - ref).abs().mean() < 0.6
