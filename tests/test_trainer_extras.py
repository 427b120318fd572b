"""The trainer's ``extras``: a second network that the step function trains itself with its own optimizer (as the
codec's discriminator). Under torchrun the trainer replicates it across ranks, so 2 processes at the same global
batch train it as 1 process does; its state and its optimizer's are checkpointed and resumed with the model's.
Runs ``tests/toy_train.py --critic`` (gloo on CPU)."""

from __future__ import annotations

import pytest
import torch
from test_distributed import _assert_same, _final, _toy


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "one"
    _toy(out, "--critic")
    return out


@pytest.mark.parametrize("data_parallel", ["ddp", "fsdp"])
def test_extras_replicated_checkpointed_and_resumed(one_process, tmp_path, data_parallel):
    out = tmp_path / "two"
    _toy(out, "--critic", "--data-parallel", data_parallel, "--stop-after", "6", nproc=2)
    step3 = torch.load(out / "checkpoints" / "step_3.pt", weights_only=True)
    step6 = torch.load(out / "checkpoints" / "step_6.pt", weights_only=True)
    assert set(step6["extra"]) == {"critic", "critic_optimizer"}
    assert step6["extra"]["critic_optimizer"]["state"]  # Adam's moments travel with the checkpoint
    _toy(out, "--critic", "--data-parallel", data_parallel, nproc=2)  # resumes from step 6
    final, reference = _final(out), _final(one_process)
    assert any(name.startswith("critic.") for name in final)
    _assert_same(reference, final)
    moved = (final["critic.weight"] - step3["extra"]["critic"]["weight"]).abs().max()
    assert moved > 1e-3, "the critic barely trained: the comparison would prove nothing"
