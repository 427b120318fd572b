"""The training loop every recipe shares: progress, metrics, atomic checkpoints, resume, non-finite-loss guard.

A recipe supplies a model, ``step_fn(model, batch) -> (loss, metrics, num_units)`` and a :class:`BatchSource`,
``batches(epoch, skip, *, rank, world_size) -> iterable``, that yields this rank's batches of the epoch after its
first ``skip`` (data order is a function of the epoch, so skipping restores it exactly after a resume). Re-running
the same command on the same output directory resumes from the newest readable checkpoint, losing at most one
checkpoint interval.

A recipe that trains more than the model (a GAN's discriminator, with its own optimizer and schedule) hands those
to the trainer as ``extras``: they are checkpointed and resumed with everything else, extra modules are moved to
the device and replicated across ranks, and ``before_step`` receives them, wrapped, in its :class:`StepContext`.

Under ``torchrun`` the trainer joins fairseq2 gangs and replicates or shards the model (see
:mod:`seqwin.training.distributed`). Only rank 0 writes metrics and checkpoints.

One optimizer step takes ``update_freq`` micro-batches on every rank (gradient accumulation). Before micro-batch ``j``
the torch and Python RNGs are seeded from ``(seed, step, j * world_size + rank)``: the global position of that batch,
so dropout and masking draw the same numbers for a batch whichever rank or accumulation slot runs it, ranks do not
draw identical masks, and a 1-process run with ``update_freq = N`` takes the same steps as an N-process run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from seqwin.errors import UserError
from seqwin.training import distributed
from seqwin.training.checkpoint import CheckpointManager
from seqwin.training.distributed import create_gangs, pick_device
from seqwin.training.metrics import MetricWriter
from seqwin.training.precision import MixedPrecision
from seqwin.training.run_dir import hold_run_dir
from seqwin.training.trainer_config import TrainerConfig, lr_factor

log = logging.getLogger("seqwin.train")

StepFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, float], int]]


class BatchSource(Protocol):
    def __call__(self, epoch: int, skip: int, *, rank: int, world_size: int) -> Iterable[Any]:
        """Rank ``rank``'s batches of ``epoch`` (of ``world_size`` ranks), after its first ``skip``. Every rank
        must get the same number of batches, or the ones left over wait forever for the others."""


class Stateful(Protocol):
    """What ``extras`` may hold: modules, optimizers, LR schedulers."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


@dataclass
class StepContext:
    """What ``before_step`` learns before each optimizer step."""

    step: int
    """Optimizer steps taken so far (the one about to run is ``step + 1``)."""
    extras: dict[str, nn.Module]
    """The extra modules as the step function should call them: DDP-wrapped under torchrun, as given otherwise."""


class TrainingError(UserError):
    pass


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """The RNG seed of global micro-batch ``index`` (``slot * world_size + rank``) of optimizer step ``step``."""
    return ((seed * 1_000_003 + step) * 65_537 + index) % (1 << 63)


def create_adamw(params, cfg: TrainerConfig, device: torch.device, lr: float | None = None, *,
                 sharded: bool = False) -> torch.optim.AdamW:
    """AdamW with ``cfg``'s betas and weight decay. The fused kernel updates all parameters in one pass, 3x faster
    than the per-tensor loop on a CPU and the same update up to float rounding; FSDP's sharded parameters take
    the default implementation."""
    fused = not sharded and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=cfg.lr if lr is None else lr, betas=cfg.betas,
                             weight_decay=cfg.weight_decay, fused=fused or None)


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        model: nn.Module,
        out_dir: Path,
        *,
        step_fn: StepFn,
        batches: BatchSource,
        valid_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        param_groups: list[dict] | None = None,
        extras: Mapping[str, Stateful] | None = None,
        before_step: Callable[[StepContext], None] | None = None,
        unit: str = "items",
    ) -> None:
        """``extras``: what the step function trains itself besides the model, by name: modules, their optimizers
        and schedulers. Their states go into the checkpoint under ``extra/<name>`` and are restored on resume."""
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.device = pick_device(cfg.device)
        self.gangs = create_gangs(self.device)
        self.rank, self.world_size = self.gangs.root.rank, self.gangs.root.size
        self.model = model.to(self.device)
        self.step_fn, self.batches, self.valid_fn = step_fn, batches, valid_fn
        self.before_step = before_step
        self.extras = dict(extras or {})
        self.precision = MixedPrecision(cfg.precision, self.device, [model, *(
            obj for obj in self.extras.values() if isinstance(obj, nn.Module))])
        self.unit = unit
        self.sharded = self.world_size > 1 and cfg.data_parallel == "fsdp"
        self.wrapped = model
        self._export_template: nn.Module | None = None  # rank 0 under FSDP: an empty copy to export into
        if self.sharded:
            if param_groups is not None:  # FSDP replaces the parameters: groups built from the old ones are stale
                raise UserError("trainer.data_parallel fsdp: this recipe builds its own parameter groups; use ddp")
            if self.rank == 0:
                self._export_template = distributed.meta_copy(model)
            self.wrapped, self.gangs = distributed.shard(model, self.gangs)
        elif self.world_size > 1:
            self.wrapped = distributed.replicate(self.model, self.gangs)
        # Built after sharding: FSDP swaps in sharded parameters, which the optimizer must hold.
        params = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        self.optimizer = create_adamw(params, cfg, self.device, sharded=self.sharded)
        self._clock: tuple[float, int] | None = None  # (fit start time, step at fit start) for anneal_by_time
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(self._schedule_step(s), cfg))
        extra_modules = {name: obj.to(self.device) for name, obj in self.extras.items() if isinstance(obj, nn.Module)}
        self.context = StepContext(0, {
            name: distributed.replicate_extra(module) if self.world_size > 1 else module
            for name, module in extra_modules.items()})
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_checkpoints)
        self.metrics = MetricWriter(self.out_dir, enabled=self.rank == 0)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.nonfinite = 0

    def _unshard_for_export(self) -> None:
        """After FSDP training: make :attr:`model` a plain module holding the gathered weights on rank 0, so
        recipes export it as they would a single-process model."""
        plain = distributed.unshard(self.model, self._export_template, self.device)
        if plain is not None:
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
            model_state, optim_state = distributed.gather_full_state(self.model, self.optimizer)
        else:
            model_state, optim_state = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "nonfinite": self.nonfinite,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
            "extra": {k: v.state_dict() for k, v in self.extras.items()},
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
            distributed.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.nonfinite = state.get("nonfinite", 0)
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate((3, tuple(state["rng"]["python"]), None))
        for key, obj in self.extras.items():
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
            for batch in self.batches(self.epoch, self.batch_in_epoch, rank=self.rank, world_size=self.world_size):
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
        no_sync = distributed.fsdp2_no_sync if self.sharded else lambda _: facade.no_sync()
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
                with self.precision.autocast():
                    loss, values, units = self.step_fn(self.wrapped, batch)
                loss = loss.float()
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
                self.context.step = self.step
                self.before_step(self.context)
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


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
