"""The ``trainer:`` section every recipe config shares, and the learning-rate schedule it describes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_seconds: float | None = None
    """Wall-clock budget: stop (with a checkpoint) when it runs out, even before ``max_steps``."""
    anneal_by_time: bool = False
    """With ``max_seconds``: the LR schedule follows steps or time, whichever is further along, so a run that
    its time budget stops early still ends with a decayed LR. Single process only (ranks' clocks differ)."""
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    log_every: int = 10
    valid_every: int = 0
    """0: validate only at the end."""
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20
    """Steps with a NaN/inf loss or gradient are skipped and counted; past this many training stops."""
    seed: int = 0
    device: str = "auto"
    update_freq: int = 1
    """Micro-batches per optimizer step (gradient accumulation): the global batch is world size x update_freq
    batches, so a 1-process run with ``update_freq: N`` matches an N-process run with ``update_freq: 1``."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """``bf16``: training forward passes under bfloat16 autocast, float32 weights and optimizer state; ``auto``:
    bf16 where the CPU or GPU computes it natively, float32 elsewhere (see :mod:`seqwin.training.precision`)."""
    data_parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: ``ddp`` replicates the model; ``fsdp`` shards parameters, gradients and optimizer state
    (fairseq2's FSDP2) for models too large to replicate. Ignored in a single process."""

    def validate(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0 <= self.warmup_steps < self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps), got {self.warmup_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.update_freq < 1:
            raise ValueError(f"update_freq must be >= 1, got {self.update_freq}")


def lr_factor(step: int, cfg: TrainerConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay
