"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# ---- data fixtures (tests/test_data_*.py) ----


def write_utterance(
    root: Path,
    split: str,
    utt_id: str,
    text: str | None,
    num_samples: int = 1600,
    *,
    sample_rate: int = 16000,
    channels: int = 1,
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<spk>/<chap>/<utt_id>.flac`` (noise); append ``text`` to its trans.txt."""
    spk, chap, _ = utt_id.split("-")
    chapter = root / split / spk / chap
    chapter.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (num_samples,) if channels == 1 else (num_samples, channels)
    path = chapter / f"{utt_id}.flac"
    sf.write(path, (0.1 * rng.standard_normal(shape)).astype(np.float32), sample_rate, subtype="PCM_16")
    if text is not None:
        with (chapter / f"{spk}-{chap}.trans.txt").open("a", encoding="utf-8") as f:
            f.write(f"{utt_id} {text}\n")
    return path


def make_librispeech(root: Path, splits: Iterable[str] = ("train", "dev"), per_split: int = 6) -> Path:
    """A tiny valid LibriSpeech tree: utterance k of a split has (k + 1) * 800 samples and text 'WORD K'."""
    for s, split in enumerate(splits):
        for k in range(per_split):
            spk = 10 + s
            chap = 100 + k % 2
            write_utterance(
                root, split, f"{spk}-{chap}-{k:04d}", f"HELLO WORLD {'AB'[k % 2]}", (k + 1) * 800, seed=k
            )
    return root


@pytest.fixture
def tiny_librispeech(tmp_path: Path) -> Path:
    return make_librispeech(tmp_path / "LibriSpeech")


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real mini corpus, built once per session; skipped when the Debian packages cannot be fetched.
    Set SEQWIN_DEB_CACHE to a directory holding (or receiving) the .deb files to avoid re-downloading."""
    from seqwin.data.errors import DataError
    from seqwin.data.mini import prepare_mini

    out = tmp_path_factory.mktemp("mini")
    cache = Path(os.environ.get("SEQWIN_DEB_CACHE") or tmp_path_factory.mktemp("debs"))
    try:
        prepare_mini(out, cache_dir=cache)
    except DataError as exc:
        if "apt-get" in str(exc) or "dpkg" in str(exc):
            pytest.skip(f"cannot fetch the Asterisk packages: {exc}")
        raise
    return out


# ---- LM fixtures (tests/test_lm_*.py, tests/test_windowkv.py; tiny models in tests/lm_helpers.py) ----


@pytest.fixture
def one_thread():
    """Tiny models: intra-op threads only add synchronization, which stalls badly on a busy machine.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch  # here: tests that never build a model do not pay for importing torch at collection

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
