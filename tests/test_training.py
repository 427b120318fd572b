"""The shared trainer: config checks, atomic checkpoints with fallback, exact resume, non-finite guard, one run
per output directory, a full disk."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from seqwin.errors import UserError
from seqwin.io import checkpoint_files
from seqwin.training import CheckpointManager, ConfigError, MetricWriter, Trainer, TrainerConfig, load_config
from seqwin.training.checkpoint import safe_load
from seqwin.training.run_dir import LOCK_NAME, RunDirInUse, hold_run_dir
from seqwin.training.trainer import TrainingError, create_adamw


@dataclass
class _Model:
    dim: int = 4
    window: tuple[int, int] = (8, 0)

    def validate(self) -> None:
        if self.window[0] < -1:
            raise ValueError(f"window must be >= -1, got {self.window}")


@dataclass
class _Recipe:
    model: _Model = field(default_factory=_Model)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,needle", [
    ("model: {dimm: 3}", "unknown config key model.dimm"),
    ("model: {dim: three}", "model.dim: expected an integer"),
    ("model: {window: [-5, 0]}", "model.window must be >= -1"),
    ("trainer: {max_steps: 10, warmup_steps: 10}", "trainer.warmup_steps"),
    ("trainer: [1, 2]", "trainer: expected a mapping"),
    ("trainer: {lr: fast}", "trainer.lr: expected a number"),
])
def test_config_errors_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        load_config(_Recipe, _write(tmp_path, text))


def test_config_overrides(tmp_path):
    cfg = load_config(_Recipe, _write(tmp_path, "model: {dim: 3}"), ["model.window=[4, 2]", "trainer.lr=0.1"])
    assert cfg.model == _Model(3, (4, 2)) and cfg.trainer.lr == 0.1
    # YAML 1.1 reads 2e-3 (no dot) as a string; a float field takes it as the number it plainly is
    cfg = load_config(_Recipe, _write(tmp_path, "trainer: {lr: 2e-3}"), ["trainer.grad_clip=1e1"])
    assert (cfg.trainer.lr, cfg.trainer.grad_clip) == (0.002, 10.0)


def _data(epoch, skip, *, rank, world_size):
    g = torch.Generator().manual_seed(epoch)
    xs = torch.randn(6, 8, 3, generator=g)
    yield from xs[skip:]


def _step(model, x):
    loss = ((model(x) - x.sum(-1, keepdim=True)) ** 2).mean()
    return loss, {}, x.shape[0]


def _trainer(out, max_steps, **kw):
    torch.manual_seed(0)
    cfg = TrainerConfig(max_steps=max_steps, warmup_steps=2, lr=0.05, checkpoint_every=4, log_every=2, **kw)
    return Trainer(cfg, nn.Linear(3, 1), out, step_fn=_step, batches=_data)


def test_resume_matches_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path / "a", 14)
    full.fit()
    part = _trainer(tmp_path / "b", 14)
    crash = {"n": 0}

    def crashing(model, x):  # dies during step 11, after the step-8 checkpoint, like a kill would
        crash["n"] += 1
        if crash["n"] == 11:
            raise KeyboardInterrupt
        return _step(model, x)

    part.step_fn = crashing
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    again = _trainer(tmp_path / "b", 14)
    again.fit()
    assert again.step == 14
    for a, b in zip(full.model.parameters(), again.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["split"] == "train" and "loss" in rows[0] and (tmp_path / "a" / "tb").is_dir()


def test_fused_adamw_takes_the_per_tensor_loops_steps():
    """The trainer's optimizer is the fused AdamW kernel (one pass over all parameters) except for FSDP shards;
    its steps are AdamW's to float rounding."""
    cfg = TrainerConfig(max_steps=4, warmup_steps=0, lr=0.01, weight_decay=0.1)
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    fused_params = [nn.Parameter(p.clone()) for p in start]
    loop_params = [nn.Parameter(p.clone()) for p in start]
    fused = create_adamw(fused_params, cfg, torch.device("cpu"))
    sharded = create_adamw(loop_params, cfg, torch.device("cpu"), sharded=True)
    assert fused.defaults["fused"] and not sharded.defaults["fused"]
    loop = torch.optim.AdamW(loop_params, lr=0.01, betas=cfg.betas, weight_decay=0.1, foreach=False)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in start]
        for params, opt in ((fused_params, fused), (loop_params, loop)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b, s in zip(fused_params, loop_params, start, strict=True):
        assert (a - s).abs().max() > 1e-2  # the parameters moved
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_corrupt_newest_checkpoint_falls_back(tmp_path, caplog):
    t = _trainer(tmp_path, 8)
    t.fit()
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert manager.steps() == [4, 8]
    manager.path(8).write_bytes(b"truncated")
    step, state = manager.load_latest()
    assert step == 4 and state["step"] == 4
    assert "unreadable" in caplog.text


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    calls = {"n": 0}

    def flaky(model, x):
        calls["n"] += 1
        loss, values, units = _step(model, x)
        return (loss * float("nan") if calls["n"] % 2 else loss), values, units

    cfg = TrainerConfig(max_steps=5, warmup_steps=1, checkpoint_every=5, max_nonfinite_steps=100)
    t = Trainer(cfg, nn.Linear(3, 1), tmp_path / "a", step_fn=flaky, batches=_data)
    t.fit()
    assert t.step == 5 and t.nonfinite == 5

    cfg = TrainerConfig(max_steps=5, warmup_steps=1, max_nonfinite_steps=2)
    t = Trainer(cfg, nn.Linear(3, 1), tmp_path / "b", step_fn=lambda m, x: (torch.tensor(float("inf")), {}, 1),
                batches=_data)
    with pytest.raises(TrainingError, match="NaN/inf"):
        t.fit()


def _locked(out: Path) -> bool:
    """Whether someone holds OUT's lock (a new descriptor conflicts even with this process's own)."""
    fd = os.open(out / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextmanager
def _held_elsewhere(out: Path):
    """OUT's lock held by another process until the block ends; yields its pid."""
    code = ("import sys\nfrom pathlib import Path\nfrom seqwin.training.run_dir import hold_run_dir\n"
            "with hold_run_dir(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)


def test_second_run_into_a_held_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    with _held_elsewhere(out) as pid:
        with pytest.raises(RunDirInUse, match=f"^{re.escape(str(out))} is in use by pid {pid} "):
            _trainer(out, 4).fit()
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # no checkpoints, metrics or tb/ of its own
    _trainer(out, 4).fit()  # the holder is gone, and so is its lock
    assert CheckpointManager(out / "checkpoints").steps() == [4] and not _locked(out)


def test_run_dir_lock_nests_within_a_process(tmp_path):
    with hold_run_dir(tmp_path):
        with hold_run_dir(tmp_path):  # the CLI holds it, then the Trainer takes it again
            assert _locked(tmp_path)
        assert _locked(tmp_path) and (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not _locked(tmp_path)
    with hold_run_dir(tmp_path, enabled=False):  # ranks other than 0 of a job take no lock
        assert not _locked(tmp_path)
    (tmp_path / "file").touch()
    with pytest.raises(UserError, match="exists and is not a directory"), hold_run_dir(tmp_path / "file"):
        pass


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".step_4.pt.tmp.{dead}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".step_4.pt.tmp.{os.getppid()}"  # its writer is still running
    live.write_bytes(b"being written")
    assert CheckpointManager(tmp_path).remove_stale_temp_files() == [stale]
    assert not stale.exists() and live.exists()


class _FullDisk(io.FileIO):
    """A file on a disk that is full after its first 1000 bytes."""

    def write(self, data) -> int:
        if self.tell() + len(data) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def full_disk_for(step: int):
    """An ``open`` for :mod:`seqwin.io.checkpoint_files` under which writing ``step_<step>.pt`` fills the disk."""
    def fake_open(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith(f".step_{step}.pt.tmp."):
            return _FullDisk(path, mode)
        return open(path, mode, *args, **kwargs)

    return fake_open


def test_disk_full_during_a_checkpoint(tmp_path, monkeypatch):
    """One OSError naming the checkpoint; its partial temporary file removed, the older checkpoint intact."""
    monkeypatch.setattr(checkpoint_files, "open", full_disk_for(8), raising=False)
    with pytest.raises(OSError) as info:
        _trainer(tmp_path, 8).fit()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "checkpoints" / "step_8.pt")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_4.pt"]
    assert safe_load(tmp_path / "checkpoints" / "step_4.pt")["step"] == 4
    assert not _locked(tmp_path)


def test_tensorboard_write_failure_is_one_error(tmp_path, monkeypatch):
    """A failed event-file write surfaces once, naming tb/; TensorBoard's writer thread reports nothing."""
    from tensorboard.summary.writer import record_writer

    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)  # where a thread's traceback would go
    writer = MetricWriter(tmp_path)
    writer.write("train", 1, {"loss": 1.0})

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    with pytest.raises(OSError) as info:
        writer.write("train", 2, {"loss": 0.5})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "tb")
    writer.close()  # does not raise either
    assert thread_errors == []
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [1, 2]
