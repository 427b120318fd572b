"""Metrics to ``metrics.jsonl`` (one JSON object per line) and TensorBoard (``tb/``), written on rank 0 only."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import NoReturn

log = logging.getLogger(__name__)


class MetricWriter:
    def __init__(self, out_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb_dir = Path(out_dir) / "tb"
        self._tb = None  # opened on the first write: a run that stops before logging leaves no event file

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"split": split, "step": step, "time": round(time.time(), 3), **values}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            _reraise_naming(exc, self.path)
        tb = self._writer()
        try:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    tb.add_scalar(f"{split}/{name}", value, step)
            tb.flush()
        except OSError as exc:  # e.g. a full disk: the run stops, say where
            self.close()
            _reraise_naming(exc, self.tb_dir)

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_thread()
            self._tb = SummaryWriter(str(self.tb_dir))
        return self._tb

    def close(self) -> None:
        """Flush and close TensorBoard's log. Never raises, as it also runs while another error (a full disk)
        stops the run: that error is the one to report."""
        tb, self._tb = self._tb, None
        if tb is None:
            return
        try:
            tb.close()
        except OSError as exc:
            log.warning("%s: TensorBoard log not closed cleanly (%s)", self.tb_dir, exc.strerror or exc)


def _reraise_naming(exc: OSError, path: Path) -> NoReturn:
    """Raise ``exc``, naming ``path`` if it names no file (a failed flush or close does not)."""
    if exc.filename is not None:
        raise exc
    raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes event files from a thread. When a write fails, the thread prints its traceback and the
    same exception is raised again by the next ``flush`` in the main thread (:meth:`MetricWriter.write` flushes
    after every record), which reports it. Drop the thread's copy: one full disk, one error message. Checked at
    every writer's start, as whoever replaces ``threading.excepthook`` later drops this filter."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.quiets_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def read_metrics(out_dir: Path, split: str | None = None) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]
