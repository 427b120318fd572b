"""A tiny regression run through seqwin's Trainer, launched as a subprocess by the distributed/kill tests.

usage: python tests/toy_train.py OUT [--steps N] [--stop-after K] [--sleep S] [--update-freq A]
[--data-parallel ddp|fsdp] [--stall-checkpoint K] [--critic] (also under torchrun); ``--stop-after K`` exits cleanly
before step K + 1, as a preempted job would (the LR schedule still spans N steps). ``--stall-checkpoint K`` writes
half of checkpoint ``step_K.pt``'s temporary file, prints ``stalled`` and waits forever: a kill then lands
mid-write. ``--critic`` adds a second network, handed to the trainer as an extra with its own Adam, that the step
function updates itself once per micro-batch through the module the trainer hands it (``final.pt`` then also holds
``critic.*``).

Every step sees the same global batch of 8 rows whatever the number of ranks and the update frequency: it is cut
into ``world_size x update_freq`` micro-batches, and rank ``r`` gets micro-batches ``j * world_size + r`` (the
trainer's global micro-batch order).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import torch
from torch import nn

from seqwin.training import StepContext, Trainer, TrainerConfig

GLOBAL_BATCH = 8


class Toy(nn.Module):
    """Two blocks in a ModuleList, so FSDP has per-block units besides the root."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Tanh(), nn.Linear(16, 16)) for _ in range(2))
        self.out = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def stall_checkpoint_write(step: int) -> None:
    """Make the trainer's write of ``step_<step>.pt`` stop half way through its temporary file, for good."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if not Path(getattr(f, "name", "")).name.startswith(f".step_{step}.pt.tmp."):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.fsync(f.fileno())
        print("stalled", flush=True)
        while True:
            time.sleep(1)

    torch.save = save


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--update-freq", type=int, default=1)
    p.add_argument("--data-parallel", choices=["ddp", "fsdp"], default="ddp")
    p.add_argument("--stall-checkpoint", type=int, default=None)
    p.add_argument("--critic", action="store_true")
    args = p.parse_args()
    if args.stall_checkpoint is not None:
        stall_checkpoint_write(args.stall_checkpoint)

    torch.manual_seed(0)
    model = Toy()
    critic = nn.Linear(3, 1)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=0.02)
    extras = {"critic": critic, "critic_optimizer": critic_opt} if args.critic else {}
    context: list[StepContext] = []

    def batches(epoch: int, skip: int, *, rank: int, world_size: int):
        g = torch.Generator().manual_seed(1000 + epoch)
        xs = torch.randn(10, GLOBAL_BATCH, 3, generator=g)  # the same global batches on every rank
        w, a = world_size, args.update_freq
        micro = [x.chunk(w * a)[j * w + rank] for x in xs for j in range(a)]
        yield from micro[skip:]

    def step(m, x):
        time.sleep(args.sleep)
        target = torch.sin(x).sum(-1, keepdim=True)
        if args.critic:
            critic_loss = ((context[0].extras["critic"](x) - target) ** 2).mean()
            critic_opt.zero_grad()
            critic_loss.backward()
            critic_opt.step()
        return ((m(x) - target) ** 2).mean(), {}, x.shape[0]

    def stop(ctx: StepContext) -> None:
        if ctx.step == args.stop_after:
            raise SystemExit(0)
        context[:] = [ctx]

    cfg = TrainerConfig(max_steps=args.steps, warmup_steps=2, lr=0.02, checkpoint_every=3, log_every=3,
                        keep_checkpoints=10, update_freq=args.update_freq, data_parallel=args.data_parallel)
    trainer = Trainer(cfg, model, args.out, step_fn=step, batches=batches, before_step=stop, extras=extras)
    trainer.fit()
    if trainer.rank == 0:  # under FSDP, fit() leaves rank 0 a plain module with the gathered weights
        final = trainer.model.state_dict()
        if args.critic:
            final.update({f"critic.{k}": v for k, v in critic.state_dict().items()})
        torch.save(final, args.out / "final.pt")


if __name__ == "__main__":
    main()
