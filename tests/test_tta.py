"""Test-time augmentation in the inference core: flip and TenCrop against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrkit._compat import ensure_torchvision
from cxrkit.data.transforms import EvalTransform, ten_crop
from cxrkit.inference import load


def test_ten_crop_refuses_a_crop_larger_than_the_image():
    with pytest.raises(ValueError, match="larger than image"):
        ten_crop(torch.rand(1, 1, 20, 20), 24)


@pytest.fixture(scope="module")
def model(phantom_run):
    return load(phantom_run)


@pytest.fixture(scope="module")
def images(phantom_prepared):
    return torch.from_numpy(np.asarray(phantom_prepared.cache.images[:5]).copy())[:, None]


def test_flip_is_the_mean_of_image_and_mirror(model, images):
    tf = model.transform
    with torch.no_grad():
        x = tf(images)
        ref = (model.model(x, None) + model.model(x.flip(-1), None)) / 2
    got = model.logits_from_cached(images, tta="flip")
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
    assert not np.allclose(got, model.logits_from_cached(images, tta="none"))


def test_tencrop_is_the_mean_over_chexnet_geometry(model, images):
    """Resize to 256/224 of the input size, ten crops of the input size, mean of logits."""
    ensure_torchvision()
    from torchvision.transforms.v2 import functional as tvf

    size = model.input_size
    resize = model.preprocessing.tencrop_resize
    assert resize == int(round(size * 256 / 224))  # no eval_resize: CheXNet's ratio
    big = EvalTransform(resize, mean=model.mean, std=model.std, channels=model.channels)(images)
    with torch.no_grad():
        views = [model.model(v, None) for v in tvf.ten_crop(big, [size, size])]
    ref = torch.stack(views).mean(0).numpy()
    np.testing.assert_allclose(model.logits_from_cached(images, tta="tencrop"), ref, atol=1e-5)
    with pytest.raises(ValueError, match="tta must be one of"):
        model.logits_from_cached(images, tta="twelvecrop")
