"""Real multi-process and kill tests of the shared trainer (subprocesses, gloo on CPU): DDP and FSDP against one
process at the same global batch, gradient accumulation, checkpoint/resume under FSDP, SIGKILL resume."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqwin.training.run_dir import hold_run_dir

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


def test_sigkill_mid_checkpoint_write_then_rerun_resumes_to_the_same_result(one_process, tmp_path):
    """A SIGKILL half way through writing step_6.pt (the toy stalls there) leaves its partial temporary file and
    the older checkpoints; the rerun deletes the former, resumes from step_3.pt and ends as an uninterrupted run."""
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(TOY), str(out), "--stall-checkpoint", "6"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready and proc.stdout.readline().strip() == "stalled"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up
        proc.wait()
    checkpoints = out / "checkpoints"
    partial = checkpoints / f".step_6.pt.tmp.{proc.pid}"
    assert partial.stat().st_size > 0 and not (checkpoints / "step_6.pt").exists()
    step3 = torch.load(checkpoints / "step_3.pt", weights_only=True)  # intact
    assert step3["step"] == 3
    _toy(out)
    assert not partial.exists()
    assert not list(checkpoints.glob(".*.tmp.*"))
    clean, resumed = _final(one_process), _final(out)
    for name in clean:
        torch.testing.assert_close(clean[name], resumed[name])


def test_a_second_run_into_the_same_directory_exits_2(tmp_path):
    """While a run is writing OUT (the toy, stalled at its first checkpoint), ``seqwin train`` into the same OUT
    stops at once with one line naming the holder; once the holder is killed, its lock is gone with it."""
    out = tmp_path / "busy"
    proc = subprocess.Popen([sys.executable, str(TOY), str(out), "--stall-checkpoint", "3"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready and proc.stdout.readline().strip() == "stalled"
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        config = tmp_path / "lm.yaml"
        config.write_text(f"data: {{dir: {tmp_path}, format: text}}\ntokenizer: {{kind: byte}}\n")
        second = subprocess.run([sys.executable, "-m", "seqwin.cli.main", "train", "lm", "--config", str(config),
                                 str(out)], env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.splitlines() == [f"seqwin train: error: {out} is in use by pid {proc.pid} (another "
                                              "run writing there); wait for it to end or use another output "
                                              "directory"]
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written by the second
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with hold_run_dir(out):  # no stale lock after a SIGKILL
        pass
