"""Bring a published model: import CheXNet-style, torchxrayvision, torchvision and timm files
as ordinary cxrkit run folders (``cxrkit import``), checked against their authors' code."""

from cxrkit.importer.formats import FORMATS, ImportFormatError, read_published
from cxrkit.importer.run import (
    PARITY_TOLERANCE,
    CheckImages,
    UntrainedModelWarning,
    check_images,
    import_model,
    untrained_check,
)

__all__ = [
    "FORMATS",
    "PARITY_TOLERANCE",
    "CheckImages",
    "ImportFormatError",
    "UntrainedModelWarning",
    "check_images",
    "import_model",
    "read_published",
    "untrained_check",
]
