"""The shared trainer: config checks, atomic checkpoints with fallback, exact resume, non-finite guard."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from seqwin.training import CheckpointManager, ConfigError, Trainer, TrainerConfig, load_config
from seqwin.training.trainer import TrainingError


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


def _data(epoch, skip):
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
