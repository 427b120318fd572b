"""A tiny regression run through seqwin's Trainer, launched as a subprocess by the distributed/kill tests.

usage: python tests/toy_train.py OUT [--steps N] [--sleep S]   (also under torchrun: data is sharded by rank)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from seqwin.training import Trainer, TrainerConfig

GLOBAL_BATCH = 8


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--sleep", type=float, default=0.0)
    args = p.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    trainer: Trainer

    def batches(epoch: int, skip: int):
        g = torch.Generator().manual_seed(1000 + epoch)
        xs = torch.randn(10, GLOBAL_BATCH, 3, generator=g)  # the same global batches on every rank
        per_rank = GLOBAL_BATCH // trainer.world_size
        for x in xs[skip:]:
            yield x[trainer.rank * per_rank : (trainer.rank + 1) * per_rank]

    def step(m, x):
        time.sleep(args.sleep)
        target = torch.sin(x).sum(-1, keepdim=True)
        return ((m(x) - target) ** 2).mean(), {}, x.shape[0]

    cfg = TrainerConfig(max_steps=args.steps, warmup_steps=2, lr=0.02, checkpoint_every=3, log_every=3)
    trainer = Trainer(cfg, model, args.out, step_fn=step, batches=batches)
    trainer.fit()
    if trainer.rank == 0:
        torch.save(trainer.model.state_dict(), args.out / "final.pt")


if __name__ == "__main__":
    main()
