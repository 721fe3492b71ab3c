"""A published file run the way its authors' code runs it: their network, their preprocessing.

This is the other side of the import's parity check. Nothing here goes through cxrkit's
model or preprocessing: the network is the torchvision (or timm) class the authors used,
loaded from the file's weights in their key layout, fed through their transforms on a
PIL image, and its output is read as they read it (their Sigmoid, torchxrayvision's
operating-point rescaling). Each image is given at the size the authors resize to first,
so the resampling step (PIL or skimage there, OpenCV/torch in cxrkit) is an identity on
both sides and the comparison is of everything else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cxrkit.importer.formats import Published


def reference_model(pub: Published) -> nn.Module:
    """The authors' network with the file's weights, in eval mode (their ``model.eval()``)."""
    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    import torchvision

    if pub.module is not None:  # chexnet-pickled: the unpickled model is theirs
        return pub.module.eval()
    n_out = pub.authors_state[f"{pub.classifier}.weight"].shape[0]
    if pub.format == "timm":
        import timm

        from cxrkit.models.backbones import ARCHS

        a = ARCHS[pub.arch]
        net = timm.create_model(
            f"{a.timm_name}.{a.tag}", pretrained=False, num_classes=n_out, in_chans=pub.in_chans
        )
    else:
        net = getattr(torchvision.models, pub.arch)(weights=None, num_classes=n_out)
        if pub.in_chans == 1:  # torchxrayvision's DenseNet takes one channel
            old = net.features.conv0
            net.features.conv0 = nn.Conv2d(
                1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
        if pub.classifier == "classifier.0":  # CheXNet: Linear then Sigmoid
            net.classifier = nn.Sequential(net.classifier, nn.Sigmoid())
    net.load_state_dict(pub.authors_state, strict=True)
    return net.eval()


def authors_input(pub: Published, image: np.ndarray) -> torch.Tensor:
    """One grey ``uint8`` image -> the tensor the authors' transforms make of it."""
    from cxrkit._compat import ensure_torchvision

    ensure_torchvision()
    from PIL import Image
    from torchvision import transforms as T

    if pub.format == "torchxrayvision":
        # their normalize(img, 255): 8 bit -> [-1024, 1024]; centre crop of the long side;
        # resize to 224 with skimage (an identity at 224 px)
        x = (2 * (image.astype(np.float32) / 255) - 1.0) * 1024
        h, w = x.shape
        s = min(h, w)
        x = x[h // 2 - s // 2 : h // 2 - s // 2 + s, w // 2 - s // 2 : w // 2 - s // 2 + s]
        if s != pub.input_size:
            import skimage.transform

            x = skimage.transform.resize(
                x[None], (1, pub.input_size, pub.input_size), mode="constant", preserve_range=True
            )[0]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    pil = Image.fromarray(image)
    pil = pil.convert("RGB") if pub.in_chans == 3 else pil.convert("L")
    tf = T.Compose(
        [
            T.Resize(pub.resize),
            T.CenterCrop(pub.input_size),
            T.ToTensor(),
            T.Normalize(list(pub.channel_mean), list(pub.channel_std)),
        ]
    )
    return tf(pil)


def reference_probabilities(pub: Published, images: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, len(pub.outputs))`` probabilities, as the authors' code computes them."""
    net = reference_model(pub)
    x = torch.stack([authors_input(pub, im) for im in images])
    with torch.no_grad():
        out = net(x).float()
    if not pub.sigmoid_in_model:
        out = torch.sigmoid(out)
    if pub.op_thresholds is not None:  # torchxrayvision: operating point -> 0.5
        t = torch.tensor(pub.op_thresholds, dtype=out.dtype).expand_as(out)
        low = out / (t * 2)
        high = 1.0 - (1.0 - out) / ((1 - t) * 2)
        out = torch.where(
            torch.isnan(t), torch.full_like(out, 0.5), torch.where(out < t, low, high)
        )
    return out.numpy()


__all__ = ["authors_input", "reference_model", "reference_probabilities"]
