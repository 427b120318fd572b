"""``trainer.precision``: which float format the forward passes compute in.

``bf16`` runs each training step's forward pass (and so the loss) under bfloat16 autocast: matmuls and
convolutions take bf16 inputs, while the parameters, their gradients and the AdamW state stay float32, so an update
too small for bf16 is not lost. Reductions that need range stay float32: autocast keeps norms' statistics, softmax
cross-entropy, CTC and the STFT in float32, and the recipes' losses cast their inputs up themselves. Validation
runs in float32, so its numbers compare across precisions.

``auto`` picks bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX)
and float32 elsewhere: a CPU with only AVX2 emulates bf16, several times slower than float32.
On CPUs, bf16 training first makes every torch convolution of the model probe its configuration against float32
(:func:`seqwin.cpu_bf16.guard_convs`): torch 2.9.1's AMX bf16 convolutions are wrong for some shapes.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from torch import nn

from seqwin.cpu_bf16 import cpu_has_bf16_instructions, guard_convs

log = logging.getLogger("seqwin.train")

Precision = Literal["fp32", "bf16", "auto"]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16_instructions()


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` made concrete for ``device``; a bf16 run where bf16 is emulated is allowed, with a warning."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        log.warning("trainer.precision bf16: %s has no bf16 instructions, so bf16 is emulated and slower than fp32 "
                    "(precision: auto picks fp32 here)", device.type)
    return precision


class MixedPrecision:
    """The resolved precision of one training run: the context its forward passes run in."""

    def __init__(self, precision: Precision, device: torch.device, modules: list[nn.Module]) -> None:
        """``modules``: what the training step runs (the model, and a GAN's discriminators)."""
        self.device = device
        self.name = resolve_precision(precision, device)
        if self.name == "bf16" and device.type == "cpu":
            for module in modules:
                guard_convs(module)
        log.info("precision %s%s", self.name, " (autocast; float32 weights, gradients and optimizer state)"
                 if self.name == "bf16" else "")

    def autocast(self) -> AbstractContextManager:
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)
