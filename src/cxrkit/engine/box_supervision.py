"""Box supervision for ``gaussian_attention``: pull each finding's attention into its boxes.

Only training images with boxes contribute (under the official split that needs a box
fold). Boxes arrive in cache pixels (``RunData.train_boxes``) and are moved to the model's
training input by the run's preprocessing contract
(:meth:`cxrkit.data.preprocessing.Preprocessing.cache_box_to_train_input`); random crops would move the anatomy away from them, so this requires
``data.augment=false``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cxrkit.config import RunConfig
    from cxrkit.data.preprocessing import Preprocessing
    from cxrkit.engine.state import RunData


def box_supervision_loss(cfg: RunConfig, data: RunData, preprocessing: Preprocessing):
    """Box attention loss for gaussian_attention on training images that have boxes."""
    from cxrkit.models import box_attention_loss

    if data.train_boxes is None or len(data.train_boxes) == 0:
        raise ValueError(
            "model.box_supervision > 0 needs boxes on training images "
            "(set data.box_fold, or use a random split)"
        )
    if cfg.data.augment:
        raise ValueError(
            "model.box_supervision needs data.augment=false: random crops move "
            "the anatomy away from the box coordinates"
        )
    by_image: dict[str, list] = {}
    for r in data.train_boxes.itertuples():
        by_image.setdefault(r.image_id, []).append(r)
    findings = data.findings
    weight = cfg.model.box_supervision
    size = preprocessing.input_size

    def aux(model, x, batch):
        core = getattr(model, "module", model)
        masks = torch.zeros(x.shape[0], len(findings), size, size, device=x.device)
        has = False
        for k, image_id in enumerate(batch["image_id"]):
            for r in by_image.get(image_id, ()):
                if r.finding in findings:
                    bx0, by0, bx1, by1 = preprocessing.cache_box_to_train_input(r.x, r.y, r.w, r.h)
                    x0, y0, x1, y1 = int(bx0), int(by0), math.ceil(bx1), math.ceil(by1)
                    masks[k, findings.index(r.finding), y0:y1, x0:x1] = 1
                    has = True
        if not has:
            return torch.zeros((), device=x.device)
        return weight * box_attention_loss(core.attention_maps(x), masks)

    return aux
