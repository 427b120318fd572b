"""``trainer.precision``: bf16 autocast training with float32 master state, the conv guard against wrong CPU bf16
kernels, and float32 losses. Each bf16 path is compared with float32 on the CPU that runs the test."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from seqwin import cpu_bf16
from seqwin.models.codec.losses import MultiScaleMelLoss, distill_loss
from seqwin.training import Trainer, TrainerConfig
from seqwin.training import precision as precision_mod
from seqwin.training.precision import resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("native,asked,expected", [(True, "auto", "bf16"), (False, "auto", "fp32"),
                                                   (False, "bf16", "bf16"), (True, "fp32", "fp32")])
def test_auto_picks_bf16_only_where_it_is_native(monkeypatch, caplog, native, asked, expected):
    monkeypatch.setattr(precision_mod, "cpu_has_bf16_instructions", lambda: native)
    with caplog.at_level(logging.WARNING, logger="seqwin.train"):
        assert resolve_precision(asked, CPU) == expected
    assert ("emulated" in caplog.text) == (asked == "bf16" and not native)


def test_bad_precision_is_a_config_error():
    from seqwin.io.config_dict import ConfigError, from_dict

    with pytest.raises(ConfigError, match="precision"):
        from_dict(TrainerConfig, {"precision": "fp16"})


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, stride=2, padding=2)
        self.normed = weight_norm(nn.Conv1d(8, 8, 3, padding=1, groups=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normed(self.conv(x))


def _run_bf16(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x)


@pytest.fixture
def fresh_verdicts(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "_verdicts", {})
    return cpu_bf16._verdicts


def test_guarded_convs_match_float32_where_this_cpu_is_sound(fresh_verdicts):
    torch.manual_seed(0)
    model, x = _ConvNet(), torch.randn(2, 4, 37)
    reference = model(x)
    assert cpu_bf16.guard_convs(model) == 2
    assert cpu_bf16.guard_convs(model) == 0  # already guarded
    out = _run_bf16(model, x)
    assert fresh_verdicts, "the bf16 run probed no convolution"
    sound = all(error <= cpu_bf16.MAX_ERROR for error in fresh_verdicts.values())
    assert out.dtype == (torch.bfloat16 if sound else torch.float32)
    assert (out.float() - reference).abs().max() <= 0.05 * reference.abs().max()


def test_a_conv_this_cpu_gets_wrong_runs_in_float32(fresh_verdicts, caplog):
    torch.manual_seed(0)
    model, x = _ConvNet(), torch.randn(2, 4, 37)
    reference = model(x)
    cpu_bf16.guard_convs(model)
    _run_bf16(model, x)  # fills the verdicts with this CPU's probe results
    for key in fresh_verdicts:
        fresh_verdicts[key] = 1.0  # as the AMX kernels measure
    with caplog.at_level(logging.WARNING, logger=cpu_bf16.__name__):
        out = _run_bf16(model, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_a_guarded_copy_runs_its_own_weights(fresh_verdicts):
    model = _ConvNet()
    cpu_bf16.guard_convs(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.conv.weight.zero_()
        twin.conv.bias.zero_()
    x = torch.randn(1, 4, 16)
    assert twin.conv(x).abs().max() == 0
    assert model.conv(x).abs().max() > 0


def test_losses_compute_in_float32_under_autocast():
    torch.manual_seed(0)
    recon, target = torch.randn(2, 4000).bfloat16().float(), torch.randn(2, 4000)
    mel = MultiScaleMelLoss(16000, (256, 512), 32)
    pred, teacher = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = mel(recon.bfloat16(), target), distill_loss(pred.bfloat16(), mask, [(teacher, None)])
    plain = mel(recon, target), distill_loss(pred.bfloat16().float(), mask, [(teacher, None)])
    for a, b in zip(mixed, plain, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class _Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _train(tmp_path, precision: str, steps: int = 30) -> tuple[Trainer, list[torch.dtype]]:
    torch.manual_seed(0)
    data = torch.randn(64, 8)
    target = data @ torch.randn(8, 1)
    seen: list[torch.dtype] = []

    def step_fn(model, batch):
        pred = model(data[batch])
        seen.append(pred.dtype)
        return nn.functional.mse_loss(pred, target[batch]), {}, len(batch)

    def batches(epoch, skip, *, rank, world_size):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        return [order[i: i + 16] for i in range(0, 64, 16)][skip:]

    cfg = TrainerConfig(max_steps=steps, warmup_steps=1, lr=1e-2, log_every=10, checkpoint_every=100,
                        precision=precision, device="cpu", grad_clip=0.0)
    trainer = Trainer(cfg, _Regression(), tmp_path / precision, step_fn=step_fn, batches=batches,
                      valid_fn=lambda m: {"loss": float(nn.functional.mse_loss(m(data), target))})
    trainer.valid = trainer.fit()
    return trainer, seen


def test_bf16_training_keeps_float32_state_and_converges_like_float32(tmp_path):
    fp32, seen32 = _train(tmp_path, "fp32")
    bf16, seen16 = _train(tmp_path, "bf16")
    assert set(seen32) == {torch.float32} and set(seen16) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    state = bf16.optimizer.state_dict()["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    assert bf16.valid["loss"] < 0.5 * _initial_loss()
    assert bf16.valid["loss"] == pytest.approx(fp32.valid["loss"], rel=0.25, abs=0.02)


def _initial_loss() -> float:
    torch.manual_seed(0)
    data = torch.randn(64, 8)
    target = data @ torch.randn(8, 1)
    with torch.no_grad():
        return float(nn.functional.mse_loss(_Regression()(data), target))
