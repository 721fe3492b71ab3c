"""Autocast precision of a forward pass (training and the torch inference paths).

One definition of "bf16 on the CPU / fp16 with a scaler on CUDA without bf16", shared by
:func:`cxrkit.engine.train.fit` (``train.amp``) and :mod:`cxrkit.inference.runtime` (inference's
``precision="bf16"``). Torch-only and tiny, so inference can use it without importing the
training engine (pandas, the data loaders, TensorBoard).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Precision:
    """How the forward pass runs: autocast dtype (or None) and whether a scaler is needed."""

    dtype: torch.dtype | None
    scaler: bool

    @classmethod
    def choose(cls, mode: str, device: torch.device) -> Precision:
        """``mode``: "none" (fp32), "bf16", "fp16" (CUDA only) or "auto" (bf16, or fp16 +
        scaler on a CUDA device without bf16)."""
        if mode == "none":
            return cls(None, False)
        if device.type == "cuda":
            if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
                return cls(torch.float16, True)
            return cls(torch.bfloat16, False)
        if mode == "fp16":
            raise ValueError("fp16 autocast needs CUDA; use amp=bf16 or amp=none on the CPU")
        return cls(torch.bfloat16, False)

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=self.dtype)


__all__ = ["Precision"]
