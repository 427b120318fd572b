"""The training loop every recipe shares: progress, metrics, atomic checkpoints, resume, non-finite-loss guard.

A recipe supplies a model, ``step_fn(model, batch) -> (loss, metrics, num_units)`` and
``batches(epoch, skip) -> iterable`` that yields the epoch's batches after the first ``skip`` (data order is a
function of the epoch, so skipping restores it exactly after a resume). Re-running the same command on the same
output directory resumes from the newest readable checkpoint, losing at most one checkpoint interval.

Under ``torchrun`` the trainer joins fairseq2 gangs (gloo on CPU, NCCL on GPU) and wraps the model with fairseq2's
DDP or, with ``data_parallel: fsdp``, fairseq2's FSDP2 (parameters, gradients and optimizer state sharded; checkpoints
hold the full state, gathered for rank 0). Only rank 0 writes metrics and checkpoints. ``batches`` shards by
:attr:`Trainer.rank` and :attr:`Trainer.world_size` (set before the first batch is asked for).

One optimizer step takes ``update_freq`` micro-batches on every rank (gradient accumulation). Before micro-batch ``j``
the torch and Python RNGs are seeded from ``(seed, step, j * world_size + rank)``: the global position of that batch,
so dropout and masking draw the same numbers for a batch whichever rank or accumulation slot runs it, ranks do not
draw identical masks, and a 1-process run with ``update_freq = N`` takes the same steps as an N-process run.
"""

from __future__ import annotations

import atexit
import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from seqwin.errors import UserError
from seqwin.training.checkpoint import CheckpointManager
from seqwin.training.metrics import MetricWriter
from seqwin.training.run_dir import hold_run_dir

log = logging.getLogger("seqwin.train")

StepFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, float], int]]


class TrainingError(UserError):
    pass


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def create_gangs(device: torch.device):
    """fairseq2 gangs: real ones under torchrun (gloo on CPU, NCCL on GPU), fake single-process ones otherwise."""
    from fairseq2.gang import ProcessGroupGang, create_fake_gangs, create_parallel_gangs

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return create_fake_gangs(device)
    import torch.distributed as dist

    if dist.is_initialized():  # a second Trainer in the same process reuses the group
        return create_parallel_gangs(ProcessGroupGang(dist.group.WORLD, device))
    gangs = create_parallel_gangs(ProcessGroupGang.create_default_process_group(device))
    # Destroy the group while the interpreter is still alive: left to static destructors at exit, gloo's worker
    # threads were sometimes torn down still joinable ("terminate called without an active exception", rank
    # killed with SIGABRT after training had finished; seen once in tests/test_distributed_recipes.py).
    atexit.register(_destroy_process_group)
    return gangs


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """The RNG seed of global micro-batch ``index`` (``slot * world_size + rank``) of optimizer step ``step``."""
    return ((seed * 1_000_003 + step) * 65_537 + index) % (1 << 63)


def lr_factor(step: int, cfg: TrainerConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        model: nn.Module,
        out_dir: Path,
        *,
        step_fn: StepFn,
        batches: Callable[[int, int], Iterable],
        valid_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        param_groups: list[dict] | None = None,
        extra_state: dict[str, Any] | None = None,
        before_step: Callable[[int, nn.Module], None] | None = None,
        unit: str = "items",
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.device = pick_device(cfg.device)
        self.gangs = create_gangs(self.device)
        self.rank, self.world_size = self.gangs.root.rank, self.gangs.root.size
        self.model = model.to(self.device)
        self.step_fn, self.batches, self.valid_fn = step_fn, batches, valid_fn
        self.before_step = before_step
        self.extra_state = extra_state or {}
        self.unit = unit
        self.sharded = self.world_size > 1 and cfg.data_parallel == "fsdp"
        self.wrapped = model
        self._export_template: nn.Module | None = None
        if self.sharded:
            if param_groups is not None:  # FSDP replaces the parameters: groups built from the old ones are stale
                raise UserError("trainer.data_parallel fsdp: this recipe builds its own parameter groups; use ddp")
            self.wrapped = self._shard(model)
        elif self.world_size > 1:
            from fairseq2.nn.ddp import to_ddp

            self.wrapped = to_ddp(self.model, self.gangs, find_unused_parameters=True)
        # Built after sharding: FSDP swaps in sharded parameters, which the optimizer must hold.
        params = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self._clock: tuple[float, int] | None = None  # (fit start time, step at fit start) for anneal_by_time
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(self._schedule_step(s), cfg))
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_checkpoints)
        self.metrics = MetricWriter(self.out_dir, enabled=self.rank == 0)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.nonfinite = 0

    def _shard(self, model: nn.Module) -> nn.Module:
        """fairseq2's FSDP2 over all ranks. Each element of a ``ModuleList`` (transformer layers, conv blocks) is
        one FSDP unit, gathered just for its own forward and backward; the root unit holds the rest. Only list
        elements: a module whose weight another uses outside its forward (a tied embedding) must stay in the root."""
        from fairseq2.gang import create_fsdp_gangs
        from fairseq2.nn.fsdp import to_fsdp

        if self.rank == 0:  # an empty copy to export the trained model into (see _unshard_for_export)
            self._export_template = _meta_copy(model)
        self.gangs = create_fsdp_gangs(self.gangs)

        def applier(module: nn.Module, wrap) -> nn.Module:
            layers = [layer for sub in module.modules() if isinstance(sub, nn.ModuleList) for layer in sub
                      if any(p.requires_grad for p in layer.parameters())]
            for layer in reversed(layers):  # innermost first: FSDP2 shards a module's own, not-yet-sharded params
                wrap(layer)
            return wrap(module, reshard_after_forward=False)

        return to_fsdp(model, self.gangs, applier, version="v2")

    def _unshard_for_export(self) -> None:
        """After FSDP training: gather the full weights (all ranks take part) and make :attr:`model` a plain
        module holding them on rank 0, so recipes export it as they would a single-process model."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0 or self._export_template is None:
            return
        plain = self._export_template.to_empty(device=self.device)
        plain.load_state_dict(full)
        for name, buf in self.model.named_buffers():  # FSDP does not shard buffers; non-persistent ones too
            if name not in full:
                plain.get_buffer(name).copy_(buf)
        self.model = self.wrapped = plain

    def _schedule_step(self, step: int) -> int:
        cfg = self.cfg
        if not cfg.anneal_by_time or cfg.max_seconds is None or self._clock is None or self.world_size > 1:
            return step
        start, start_step = self._clock
        done = min(1.0, (time.monotonic() - start) / cfg.max_seconds)
        return max(step, int(start_step + (cfg.max_steps - start_step) * done))

    # -- state ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The checkpoint. Under FSDP a collective: the full model and optimizer state are gathered (to CPU) from
        the shards, so the file looks like a single-process one and loads with any number of ranks."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state, optim_state = get_state_dict(self.model, self.optimizer, options=options)
        else:
            model_state, optim_state = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "nonfinite": self.nonfinite,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
            "data_parallel": "fsdp" if self.sharded else "ddp",
        }

    def resume(self) -> bool:
        found = self.ckpt.load_latest(map_location=self.device)
        if found is None:
            return False
        step, state = found
        saved_by = state.get("data_parallel", "ddp")
        if saved_by != ("fsdp" if self.sharded else "ddp"):
            # The weights would fit, but the optimizer state is keyed differently (parameter names vs indices).
            raise UserError(f"{self.ckpt.path(step)} was written with trainer.data_parallel {saved_by}; resume "
                            "with the same setting")
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            # Every rank read the full state: each keeps its own shard of it.
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.nonfinite = state.get("nonfinite", 0)
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate((3, tuple(state["rng"]["python"]), None))
        for key, obj in self.extra_state.items():
            obj.load_state_dict(state["extra"][key])
        log.info("resumed from %s (step %d)", self.ckpt.path(step), self.step)
        return True

    def save(self) -> None:
        if self.sharded:
            state = self.state_dict()  # every rank takes part in the gather
            if self.rank == 0:
                log.info("checkpoint %s", self.ckpt.save(self.step, state))
        elif self.rank == 0:
            path = self.ckpt.save(self.step, self.state_dict())
            log.info("checkpoint %s", path)

    # -- loop ----------------------------------------------------------------------------------------------

    def _batches(self):
        """Endless stream of batches, resuming mid-epoch at the saved position."""
        while True:
            for batch in self.batches(self.epoch, self.batch_in_epoch):
                self.batch_in_epoch += 1
                yield batch
            if self.batch_in_epoch == 0:
                raise TrainingError("the training data yields no batches (check the manifest and length limits)")
            self.epoch += 1
            self.batch_in_epoch = 0

    def _all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every rank: all ranks must skip a step together, or the ones that run
        the backward wait forever for the others' gradients."""
        flag = torch.tensor(float(torch.isfinite(loss.detach()).all()), device=self.device)
        if self.world_size > 1:
            from fairseq2.gang import ReduceOperation

            self.gangs.root.all_reduce(flag, ReduceOperation.MIN)
        return bool(flag.item() > 0)

    def _train_step(self, data: Iterator[Any]) -> tuple[float, dict[str, float], int] | None:
        """One optimizer step over ``update_freq`` micro-batches; ``None`` (step skipped) on a NaN/inf loss or
        gradient anywhere."""
        from fairseq2.nn.data_parallel import get_data_parallel_facade

        facade = get_data_parallel_facade(self.wrapped)
        no_sync = _fsdp2_no_sync if self.sharded else lambda _: facade.no_sync()
        self.wrapped.train()
        self.optimizer.zero_grad(set_to_none=True)
        freq = self.cfg.update_freq
        total_loss, total_units, sums = 0.0, 0, {}
        for slot in range(freq):
            seed = micro_batch_seed(self.cfg.seed, self.step, slot * self.world_size + self.rank)
            torch.manual_seed(seed)
            random.seed(seed)
            batch = next(data)
            # Gradients are averaged over ranks only on the last micro-batch; before it they accumulate locally.
            with no_sync(self.wrapped) if slot < freq - 1 else nullcontext():
                loss, values, units = self.step_fn(self.wrapped, batch)
                if not self._all_finite(loss):
                    self.optimizer.zero_grad(set_to_none=True)
                    for _ in range(slot + 1, freq):  # keep the data position where an unskipped step leaves it
                        next(data)
                    return None
                (loss / freq).backward()
            total_loss += loss.item() / freq
            total_units += units
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value / freq
        norm = facade.clip_grad_norm(self.cfg.grad_clip or None)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        return total_loss, {**sums, "grad_norm": norm.item()}, total_units

    def fit(self) -> dict[str, float]:
        """Train to ``max_steps`` (or the time budget), resuming from the newest checkpoint. Rank 0 holds the
        output directory's lock throughout: a second run into it stops with
        :class:`~seqwin.training.run_dir.RunDirInUse`."""
        with hold_run_dir(self.out_dir, enabled=self.rank == 0):
            if self.rank == 0:
                self.ckpt.remove_stale_temp_files()
            try:
                return self._fit()
            finally:
                self.metrics.close()

    def _fit(self) -> dict[str, float]:
        torch.manual_seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        resumed = self.resume()
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            log.info("already trained to step %d in %s; nothing to do", self.step, self.out_dir)
            valid = self._validate() if self.valid_fn else {}
            if self.sharded:
                self._unshard_for_export()
            return valid
        log.info("%s training to step %d in %s (checkpoints/, metrics.jsonl, tb/)",
                 "resuming" if resumed else "start", cfg.max_steps, self.out_dir)
        start = time.monotonic()
        start_step = self.step
        self._clock = (start, start_step)
        window_loss, window_units, window_steps, window_t = 0.0, 0, 0, time.monotonic()
        valid: dict[str, float] = {}
        data = self._batches()
        while self.step < cfg.max_steps:
            if self.before_step is not None:
                self.before_step(self.step, self.model)
            result = self._train_step(data)
            if result is None:
                self.nonfinite += 1
                log.warning("step %d: non-finite loss or gradient, step skipped (%d so far)",
                            self.step, self.nonfinite)
                if self.nonfinite > cfg.max_nonfinite_steps:
                    self.save()
                    raise TrainingError(f"stopping: {self.nonfinite} steps had a NaN/inf loss or gradient "
                                        f"(max_nonfinite_steps={cfg.max_nonfinite_steps}); lower the lr?")
                continue
            loss, values, units = result
            self.step += 1
            window_loss += loss
            window_units += units
            window_steps += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                if self.world_size > 1:  # log the global batch's loss and throughput, not rank 0's share
                    window_loss, window_units = self._global_sums(window_loss, window_units)
                now = time.monotonic()
                rate = window_units / max(now - window_t, 1e-9)
                per_step = (now - start) / (self.step - start_step)
                eta = per_step * (cfg.max_steps - self.step)
                if cfg.max_seconds is not None:
                    eta = min(eta, max(0.0, cfg.max_seconds - (now - start)))
                row = {"loss": window_loss / window_steps, **values, "lr": self.scheduler.get_last_lr()[0],
                       f"{self.unit}_per_s": rate, "skipped_steps": self.nonfinite}
                self.metrics.write("train", self.step, row)
                if self.rank == 0:
                    extra = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "grad_norm")
                    log.info("step %d/%d loss %.4f %s| %.0f %s/s | elapsed %s ETA %s", self.step, cfg.max_steps,
                             row["loss"], extra + " " if extra else "", rate, self.unit,
                             _fmt(now - start), _fmt(eta))
                window_loss, window_units, window_steps, window_t = 0.0, 0, 0, now
            out_of_time = cfg.max_seconds is not None and time.monotonic() - start >= cfg.max_seconds
            if cfg.max_seconds is not None and self.world_size > 1:  # clocks differ: stop on rank 0's
                out_of_time = self._rank0_flag(out_of_time)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps or out_of_time:
                self.save()
            if cfg.valid_every and self.step % cfg.valid_every == 0 and self.step < cfg.max_steps:
                valid = self._validate()
            if out_of_time:
                log.info("time budget of %.0f s reached at step %d", cfg.max_seconds, self.step)
                break
        if self.valid_fn:
            valid = self._validate()
        if self.sharded:
            self._unshard_for_export()
        log.info("done at step %d; outputs in %s", self.step, self.out_dir)
        return valid

    def _global_sums(self, loss: float, units: int) -> tuple[float, int]:
        """The loss averaged over ranks (each rank's is the mean over its share) and the units summed."""
        from fairseq2.gang import ReduceOperation

        sums = torch.tensor([loss, float(units)], dtype=torch.float64, device=self.device)
        self.gangs.root.all_reduce(sums, ReduceOperation.SUM)
        return sums[0].item() / self.world_size, int(sums[1].item())

    def _rank0_flag(self, flag: bool) -> bool:
        from fairseq2.gang import broadcast_flag

        return broadcast_flag(self.gangs.root, flag)

    def _validate(self) -> dict[str, float]:
        if self.valid_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            values = self.valid_fn(self.model)
        self.metrics.write("valid", self.step, values)
        if self.rank == 0:
            log.info("valid @ step %d: %s", self.step, " ".join(f"{k} {v:.4g}" for k, v in values.items()))
        return values


@contextmanager
def _fsdp2_no_sync(module: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally. fairseq2 0.8.1's ``fsdp2_no_sync`` calls ``set_requires_grad_sync``, which
    torch 2.9 names ``set_requires_gradient_sync``."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose tensors live on the meta device: the structure without a byte of the data.
    Tensor attributes that are not leaves (e.g. ``torch.nn.utils.weight_norm``'s computed weight, which
    ``deepcopy`` refuses) get a meta placeholder too; their forward hooks recompute them."""
    memo: dict[int, Any] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
    for buf in model.buffers():
        memo[id(buf)] = torch.empty_like(buf, device="meta")
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and id(value) not in memo and not value.is_leaf:
                memo[id(value)] = torch.empty_like(value.detach(), device="meta")
    return copy.deepcopy(model, memo)


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
