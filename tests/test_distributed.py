"""Real multi-process and kill tests of the shared trainer (subprocesses, gloo on CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TOY = Path(__file__).with_name("toy_train.py")


def _final(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


def _env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_two_process_ddp_matches_one_process(tmp_path):
    subprocess.run([sys.executable, str(TOY), str(tmp_path / "one")], check=True, env=_env(), timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29517",
                    str(TOY), str(tmp_path / "two")], check=True, env=_env(), timeout=300)
    one, two = _final(tmp_path / "one"), _final(tmp_path / "two")
    for name in one:
        # Same global batch, gradients averaged over ranks: equal up to float reduction order.
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=1e-4)


def test_sigkill_then_rerun_resumes_to_the_same_result(tmp_path):
    subprocess.run([sys.executable, str(TOY), str(tmp_path / "clean")], check=True, env=_env(), timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(TOY), str(out), "--sleep", "0.3"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("step_6.pt")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: mid-step, maybe mid-write
    proc.wait()
    assert not (out / "final.pt").exists()
    subprocess.run([sys.executable, str(TOY), str(out)], check=True, env=_env(), timeout=300)
    clean, resumed = _final(tmp_path / "clean"), _final(out)
    for name in clean:
        torch.testing.assert_close(clean[name], resumed[name])
