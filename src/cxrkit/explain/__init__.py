"""Explanations: saliency maps, overlays, and the localisation benchmark against NIH's boxes.

``saliency_maps`` (four attribution methods from captum / pytorch-grad-cam, in cache
pixels), ``overlay`` (heatmap over the X-ray, labelled), ``explain_images`` /
``explain_split`` (``cxrkit explain``) and ``localize_checkpoint`` (``cxrkit localize``).
"""

from cxrkit.explain.images import explain_images, explain_split
from cxrkit.explain.localize import localize_checkpoint
from cxrkit.explain.overlay import overlay
from cxrkit.explain.saliency import METHODS, attention_maps, saliency_maps

__all__ = [
    "METHODS",
    "attention_maps",
    "explain_images",
    "explain_split",
    "localize_checkpoint",
    "overlay",
    "saliency_maps",
]
