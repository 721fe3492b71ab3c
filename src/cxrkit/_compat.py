"""Make ``import torchvision`` (and so ``timm``) work next to a CPU-only torch.

The only torchvision 0.28.0 wheel on PyPI is a CUDA build. Installed beside the CPU
torch 2.13.0 wheel, its compiled extension ``_C.so`` fails to load, and torchvision's
import then dies registering a fake kernel for ``torchvision::nms`` ("operator
torchvision::nms does not exist", upstream pytorch/vision#9085).

:func:`ensure_torchvision` first tries to load the extension as torchvision would; only
if that fails does it declare the two operator schemas torchvision's import touches, so
that models and transforms work (``nms`` itself is then unavailable, which cxrkit never
uses). Where the extension loads this is a no-op. Every cxrkit module that needs
torchvision or timm imports them through here.
"""

from __future__ import annotations

import importlib.util
import os

_done = False
#: True when the torchvision extension could not be loaded and schemas were declared.
SHIMMED = False


def ensure_torchvision() -> None:
    global _done, SHIMMED
    if _done:
        return
    _done = True
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    lib_dir = os.path.dirname(spec.origin)
    so = next(
        (
            os.path.join(lib_dir, f)
            for f in os.listdir(lib_dir)
            if f.startswith("_C.") and f.endswith((".so", ".pyd"))
        ),
        None,
    )
    if so is not None:
        try:
            torch.ops.load_library(so)
            return
        except (OSError, RuntimeError):
            pass
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        # keep the library object alive for the life of the process
        globals()["_LIB"] = lib
        SHIMMED = True
    except RuntimeError:  # already defined (e.g. torchvision imported before us)
        pass
