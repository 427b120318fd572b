"""Real multi-process and kill tests of the shared trainer (subprocesses, gloo on CPU): DDP and FSDP against one
process at the same global batch, gradient accumulation, checkpoint/resume under FSDP, SIGKILL resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TOY = Path(__file__).with_name("toy_train.py")
# Same global batch, gradients averaged over ranks (or accumulated): equal up to float reduction order.
TOL = {"atol": 1e-5, "rtol": 1e-4}


def _final(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


def _env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _toy(out: Path, *args: str, nproc: int = 1) -> None:
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    subprocess.run([*launcher, str(TOY), str(out), *args], check=True, env=_env(), timeout=300)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "one"
    _toy(out)
    return out


def test_two_process_ddp_matches_one_process(one_process, tmp_path):
    """2 ranks x 2 accumulated micro-batches (DDP's no_sync on the first) == 1 process, 1 batch per step."""
    _toy(tmp_path / "two", "--update-freq", "2", nproc=2)
    _assert_same(_final(one_process), _final(tmp_path / "two"))


def test_gradient_accumulation_matches_one_big_batch(one_process, tmp_path):
    _toy(tmp_path / "accum", "--update-freq", "2")
    _assert_same(_final(one_process), _final(tmp_path / "accum"))


def test_two_process_fsdp_matches_one_process_and_resumes(one_process, tmp_path):
    """FSDP2 (fairseq2's ``to_fsdp``) on gloo: parameters sharded over 2 ranks, 2 accumulated micro-batches each,
    checkpoints gathered on rank 0. Stopped after step 6 and restarted, it ends where the uninterrupted 1-process
    run does."""
    out = tmp_path / "fsdp"
    _toy(out, "--data-parallel", "fsdp", "--update-freq", "2", "--stop-after", "6", nproc=2)
    step6 = torch.load(out / "checkpoints" / "step_6.pt", weights_only=True)
    reference6 = torch.load(one_process / "checkpoints" / "step_6.pt", weights_only=True)
    assert step6["data_parallel"] == "fsdp"
    _assert_same(reference6["model"], step6["model"])  # full tensors, not rank 0's shards
    _toy(out, "--data-parallel", "fsdp", "--update-freq", "2", nproc=2)  # resumes: each rank loads its shard
    _assert_same(_final(one_process), _final(out))


def test_sigkill_then_rerun_resumes_to_the_same_result(one_process, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(TOY), str(out), "--sleep", "0.3"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("step_6.pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: mid-step, maybe mid-write
    proc.wait()
    assert not (out / "final.pt").exists()
    _toy(out)
    clean, resumed = _final(one_process), _final(out)
    for name in clean:
        torch.testing.assert_close(clean[name], resumed[name])
