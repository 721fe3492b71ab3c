"""Train and eval presets that work on whole batches, on whatever device the batch is on.

Why batches and not per-image transforms: a per-sample torchvision pipeline runs Python
for every image in loader workers on the CPU, which is what starves a GPU. Here the
loader only slices uint8 arrays out of the cache; the random resized crop, small affine
(rotation, translation) and brightness/contrast jitter are fused into one
``affine_grid`` + ``grid_sample`` per batch, on the GPU when training there. No library
does "one fused warp for a batch with per-sample random parameters" with a seeded
generator on any device in a few lines, so it is written here.

Inputs are ``uint8`` batches ``(B, 1, H, W)`` straight from the cache (0..255) or float
batches already in [0, 1]. Outputs are float ``(B, C, size, size)`` normalised with the
model's own mean/std, replicated to ``C`` channels if the model wants 3.

Horizontal flips are off by default: the heart sits on the patient's left, so a flipped
radiograph is not a plausible radiograph (``hflip=True`` restores the CheXNet recipe).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.data.preprocessing import Preprocessing


@dataclass(frozen=True)
class AugmentSettings:
    """Random augmentation ranges (training only). Fractions are of the image side."""

    scale: tuple[float, float] = (0.75, 1.0)  #: area fraction kept by the random crop
    ratio: tuple[float, float] = (0.85, 1.18)  #: aspect ratio range of the crop
    rotate_deg: float = 7.0  #: max absolute rotation, degrees
    translate: float = 0.04  #: max shift, fraction of the side
    brightness: float = 0.15  #: additive, in [0, 1] intensity units
    contrast: float = 0.15  #: multiplicative, 1 +- contrast
    hflip: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float input is checked for the expected range."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    images = images.float()
    if images.numel() and float(images.max()) > 1.5:
        warnings.warn(
            f"float images with max {float(images.max()):.1f}: expected [0, 1] "
            "(uint8 images are scaled automatically)",
            stacklevel=3,
        )
    return images


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, size, size), align_corners=False)``, built by broadcasting.

    Same values; on the CPU about 5x faster than torch's batched-matmul version, which
    was the single largest cost of a training batch's augmentation at 224 px.
    """
    c = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
    xs, ys = c.view(1, 1, size), c.view(1, size, 1)
    t = theta.unsqueeze(-1).unsqueeze(-1)  # (B, 2, 3, 1, 1)
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return torch.stack((gx, gy), dim=-1)


def warp_uint8_cpu(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """The same warp as ``grid_sample(affine_grid(theta))`` for uint8 batches on the CPU.

    OpenCV's SIMD ``warpAffine`` on uint8 is several times faster than ``grid_sample`` on
    float, which dominated CPU augmentation. ``theta`` (normalised output -> input
    coordinates, ``align_corners=False``) is converted to a pixel-space inverse map;
    bilinear interpolation, border replicated, as on the GPU path (values agree to about
    one grey level, from uint8 rounding).
    """
    import cv2

    src = images.numpy()
    n, c, h, w = src.shape
    out = np.empty((n, c, size, size), dtype=np.uint8)
    t = theta.double().numpy()
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for i in range(n):
        # input pixel = S_in/2 * (theta @ [x_out, y_out, 1] + 1) - 1/2, x_out = (2u+1)/size - 1
        m = np.empty((2, 3))
        for r, s_in in ((0, w), (1, h)):
            a, b, k = t[i, r]
            m[r, 0] = s_in * a / size
            m[r, 1] = s_in * b / size
            m[r, 2] = s_in / 2 * (a * (1 / size - 1) + b * (1 / size - 1) + k + 1) - 0.5
        for ch in range(c):
            out[i, ch] = cv2.warpAffine(
                src[i, ch], m, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE
            )
    return torch.from_numpy(out)


class _Normalise(nn.Module):
    def __init__(self, mean: float, std: float, channels: int):
        super().__init__()
        self.mean, self.std, self.channels = float(mean), float(std), int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.sub(self.mean).div_(self.std)
        return x.expand(-1, self.channels, -1, -1) if self.channels != x.shape[1] else x


class TrainTransform(nn.Module):
    """Random resized crop + small affine + brightness/contrast, one warp per batch."""

    def __init__(
        self,
        size: int,
        *,
        mean: float = 0.5,
        std: float = 0.25,
        channels: int = 1,
        augment: AugmentSettings | None = None,
    ):
        super().__init__()
        self.size = int(size)
        self.augment = augment or AugmentSettings()
        self.normalise = _Normalise(mean, std, channels)

    def sample_theta(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """Per-sample 2x3 affine matrices mapping output to input coordinates ([-1, 1])."""
        a = self.augment

        def u(lo, hi):
            return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

        area = u(*a.scale)
        log_r = u(math.log(a.ratio[0]), math.log(a.ratio[1]))
        r = torch.exp(log_r)
        sx = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
        sy = torch.sqrt(area / r).clamp(max=1.0)
        # crop centre anywhere the crop fits, plus a small translation
        cx = (1 - sx) * u(-1, 1) + a.translate * 2 * u(-1, 1)
        cy = (1 - sy) * u(-1, 1) + a.translate * 2 * u(-1, 1)
        ang = torch.deg2rad(u(-a.rotate_deg, a.rotate_deg))
        cos, sin = torch.cos(ang), torch.sin(ang)
        flip = torch.ones(n, device=device)
        if a.hflip:
            flip = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
        theta = torch.stack(
            [
                torch.stack([sx * cos * flip, -sy * sin, cx], 1),
                torch.stack([sx * sin * flip, sy * cos, cy], 1),
            ],
            1,
        )
        return theta

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Augment a batch; random parameters come from ``generator`` on *its* device.

        Drawing them where the generator lives (then moving the few numbers to the batch's
        device) is what lets training pass its per-epoch CPU generator with a CUDA batch --
        ``torch.rand(generator=cpu_gen, device="cuda")`` raises -- and makes a CUDA batch
        get exactly the crops and jitter the CPU path gives for the same seed.
        """
        n, dev = images.shape[0], images.device
        rdev = generator.device if generator is not None else dev
        theta = self.sample_theta(n, generator, rdev).to(dev)
        a = self.augment
        shape = (n, 1, 1, 1)
        contrast = 1 + a.contrast * (2 * torch.rand(shape, generator=generator, device=rdev) - 1)
        bright = a.brightness * (2 * torch.rand(shape, generator=generator, device=rdev) - 1)
        contrast, bright = contrast.to(dev), bright.to(dev)
        if dev.type == "cpu" and images.dtype == torch.uint8:
            x = warp_uint8_cpu(images, theta, self.size).float().div_(255.0)
        else:
            x = to_unit_float(images)
            grid = affine_grid(theta.to(x.dtype), self.size)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        # (x - mean) * contrast + mean + bright, as one fused multiply-add, in place
        x = torch.addcmul(mean * (1 - contrast) + bright, x, contrast).clamp_(0, 1)
        return self.normalise(x)


class EvalTransform(nn.Module):
    """Deterministic: resize to ``resize`` (default ``size``), centre-crop ``size``, normalise.

    ``resize=256, size=224`` is the CheXNet evaluation geometry.
    """

    def __init__(
        self,
        size: int,
        *,
        resize: int | None = None,
        mean: float = 0.5,
        std: float = 0.25,
        channels: int = 1,
    ):
        super().__init__()
        self.size, self.resize = int(size), int(resize or size)
        if self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= crop size ({self.size})")
        self.normalise = _Normalise(mean, std, channels)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        x = to_unit_float(images)
        if x.shape[-1] != self.resize or x.shape[-2] != self.resize:
            x = F.interpolate(
                x,
                size=(self.resize, self.resize),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        if self.resize != self.size:
            off = (self.resize - self.size) // 2
            x = x[..., off : off + self.size, off : off + self.size]
        return self.normalise(x)


def ten_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """TenCrop: four corners + centre, and those of the mirrored image -> ``(B, 10, C, s, s)``.

    Averaging a model's outputs over the 10 crops is CheXNet's test-time augmentation.
    torchvision's ``ten_crop`` is used as is, so the crops are exactly the ones CheXNet
    (and every torchvision pipeline) averages -- with an odd margin its mirrored centre
    crop is taken from the mirrored image, one pixel off the mirror of the centre crop.
    """
    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.transforms.v2 import functional as tvf

    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop {size} larger than image {h}x{w}")
    return torch.stack(tvf.ten_crop(images, [size, size]), 1)


def eval_transform(p: Preprocessing) -> EvalTransform:
    """The evaluation transform of a preprocessing contract (resize, centre crop, normalise)."""
    return EvalTransform(
        p.input_size, resize=p.eval_resize, mean=p.mean, std=p.std, channels=p.channels
    )


#: Augmentation ranges that leave the image as it is (``data.augment=false``): the whole
#: cache image resized to the input size.
NO_AUGMENT = AugmentSettings(
    scale=(1, 1), ratio=(1, 1), rotate_deg=0, translate=0, brightness=0, contrast=0, hflip=False
)


def presets(p: Preprocessing, *, augment: AugmentSettings | None = None):
    """The one place train and eval geometry is built: ``(train, eval)`` transforms of the
    preprocessing contract ``p`` (its ``input_size``, ``eval_resize``, mean/std, channels)."""
    train = TrainTransform(
        p.input_size, mean=p.mean, std=p.std, channels=p.channels, augment=augment
    )
    return train, eval_transform(p)
