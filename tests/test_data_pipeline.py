"""The fairseq2 training pipeline: batching budget, determinism, sharding, targets and load-time errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_librispeech, write_utterance
from fairseq2.nn import BatchLayout

from seqwin.data.errors import DataError
from seqwin.data.librispeech import prepare_librispeech
from seqwin.data.manifest import CharDictionary
from seqwin.data.pipeline import AudioBatch, AudioManifestDataset, AudioReaderConfig


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    make_librispeech(tmp_path / "LibriSpeech", splits=("train",), per_split=20)
    prepare_librispeech(tmp_path / "LibriSpeech", tmp_path / "m")
    return tmp_path / "m"


def _cfg(**kw: object) -> AudioReaderConfig:
    base = {"max_num_frames": 40_000, "max_audio_len": 16_000, "num_parallel_calls": 1, "num_prefetch": 1}
    return AudioReaderConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_batches_respect_budget_and_cover_every_utterance(manifests: Path) -> None:
    ds = AudioManifestDataset(manifests / "train.tsv", _cfg(max_batch_size=5))
    seen = []
    for batch in ds.build_pipeline(epoch=0):
        assert isinstance(batch, AudioBatch)
        b, t = batch.waveforms.shape
        assert batch.waveforms.dtype == torch.float32 and batch.seq_lens.dtype == torch.int64
        assert b * t <= 40_000 and b <= 5
        assert int(batch.seq_lens.max()) == t
        for row, n in enumerate(batch.seq_lens.tolist()):
            assert torch.all(batch.waveforms[row, n:] == 0)
            # Decoded content matches the file (16-bit FLAC read back as float).
            ref, _ = sf.read(ds.root / batch.ids[row], dtype="float32")
            assert torch.equal(batch.waveforms[row, :n], torch.from_numpy(ref))
        layout = batch.layout()
        assert isinstance(layout, BatchLayout) and list(layout.seq_lens) == batch.seq_lens.tolist()
        seen += batch.ids
    assert sorted(seen) == sorted(e.rel_path for e in ds.entries) and len(seen) == 20


def test_deterministic_given_seed_and_different_per_epoch(manifests: Path) -> None:
    a = AudioManifestDataset(manifests / "train.tsv", _cfg(seed=3))
    b = AudioManifestDataset(manifests / "train.tsv", _cfg(seed=3))
    ids_a = [x.ids for x in a.build_pipeline(epoch=1)]
    ids_b = [x.ids for x in b.build_pipeline(epoch=1)]
    assert ids_a == ids_b
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != AudioManifestDataset(manifests / "train.tsv", _cfg(seed=4)).batches(0)
    plain = AudioManifestDataset(manifests / "train.tsv", _cfg(shuffle=False))
    flat = [i for batch in plain.batches(0) for i in batch]
    assert list(plain.lengths[flat]) == sorted(plain.lengths)  # no shuffle: ascending length
    assert plain.batches(0) == plain.batches(5)


def test_sharding_gives_disjoint_equal_shards(manifests: Path) -> None:
    ds = AudioManifestDataset(manifests / "train.tsv", _cfg(max_batch_size=2))
    all_batches = ds.batches(0)
    shards = [[b.ids for b in ds.build_pipeline(epoch=0, rank=r, world_size=3)] for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(all_batches) // 3
    flat = [tuple(ids) for s in shards for ids in s]
    assert len(flat) == len(set(flat))
    expected = {tuple(ds.entries[i].rel_path for i in batch) for batch in all_batches[: len(flat)]}
    assert set(flat) == expected
    with pytest.raises(DataError, match="rank"):
        ds.build_pipeline(rank=3, world_size=3)


def test_letter_targets(manifests: Path) -> None:
    ds = AudioManifestDataset(manifests / "train.tsv", _cfg(target="ltr"))
    d = CharDictionary.load(manifests / "dict.ltr.txt")
    batch = next(iter(ds.build_pipeline()))
    assert batch.targets is not None and batch.target_lens is not None and batch.texts is not None
    for row, text in enumerate(batch.texts):
        n = int(batch.target_lens[row])
        assert batch.targets[row, :n].tolist() == d.encode(text)
        assert torch.all(batch.targets[row, n:] == d.pad_idx)
    assert [d.symbols[i] for i in batch.targets[0, :6].tolist()] == list("HELLO|")
    assert batch.target_layout() is not None
    moved = batch.to("cpu")
    assert moved.targets is not None and moved.waveforms.shape == batch.waveforms.shape


def test_length_limits_skip_and_count_or_error(manifests: Path) -> None:
    # Lengths are 800, 1600, ..., 16000 samples.
    ds = AudioManifestDataset(manifests / "train.tsv", _cfg(min_audio_len=2000, max_audio_len=12_000))
    assert (ds.stats.total, ds.stats.kept, ds.stats.too_short, ds.stats.too_long) == (20, 13, 2, 5)
    assert len(ds.stats.skipped) == 7 and "max_audio_len=12000" in ds.stats.skipped[-1]
    assert all(2000 <= n <= 12_000 for n in ds.lengths)
    with pytest.raises(DataError, match=r"train\.tsv:\d+: .*\.flac: 800 samples, min_audio_len=2000"):
        AudioManifestDataset(manifests / "train.tsv", _cfg(min_audio_len=2000, out_of_range="error"))
    with pytest.raises(DataError, match="must not exceed max_num_frames"):
        AudioManifestDataset(manifests / "train.tsv", _cfg(max_audio_len=50_000))


def test_manifest_pointing_at_missing_file(manifests: Path) -> None:
    tsv = manifests / "train.tsv"
    lines = tsv.read_text().splitlines()
    lines[3] = "train/10/100/10-100-9999.flac\t1600"
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"train\.tsv: 1 missing audio file\(s\): line 4: .*10-100-9999\.flac"
    ):
        AudioManifestDataset(tsv, _cfg())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("corrupt", "unreadable audio"),
        ("empty", "empty file: 0 bytes"),
        ("rate", "wrong sample rate: 8000 Hz, expected 16000 Hz"),
        ("stale", "the manifest says"),
    ],
)
def test_load_time_errors_name_file_and_line(manifests: Path, damage: str, message: str) -> None:
    ds = AudioManifestDataset(manifests / "train.tsv", _cfg(shuffle=False))
    entry = ds.entries[0]
    path = ds.root / entry.rel_path
    if damage == "corrupt":
        path.write_bytes(b"garbage" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "rate":
        sf.write(path, np.zeros(entry.num_samples, dtype=np.float32), 8000)
    else:
        sf.write(path, np.zeros(entry.num_samples + 5, dtype=np.float32), 16000)
    with pytest.raises(DataError, match=rf"train\.tsv:{entry.line}: .*{path.name}.*{message}"):
        list(ds.build_pipeline())


def test_stereo_downmixed_and_nan_rejected_on_load(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    write_utterance(root, "train", "1-1-0000", "STEREO", 1600, channels=2)
    prepare_librispeech(root, tmp_path / "m")
    ds = AudioManifestDataset(tmp_path / "m" / "train.tsv", _cfg())
    stereo, _ = sf.read(root / ds.entries[0].rel_path, dtype="float32")
    batch = next(iter(ds.build_pipeline()))
    assert batch.waveforms.shape == (1, 1600)
    assert torch.allclose(batch.waveforms[0], torch.from_numpy(stereo.mean(axis=1)))
    # Non-finite samples (only float encodings can hold them) are caught when loaded.
    x = np.full((1600, 2), 0.1, dtype=np.float32)
    x[7, 1] = np.inf
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    tsv = tmp_path / "m" / "train.tsv"
    tsv.write_text(f"{tmp_path}\nnan.wav\t1600\n")
    nan_ds = AudioManifestDataset(tsv, _cfg())
    with pytest.raises(DataError, match=r"train\.tsv:2: .*nan\.wav: non-finite samples"):
        list(nan_ds.build_pipeline())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty manifest"),
        (b"/root\nonly-one-field\n", r"train\.tsv:2: expected 'relpath<TAB>num_samples'"),
        (b"/root\na.flac\tmany\n", r"train\.tsv:2: num_samples is not an integer"),
        (b"/root\na.flac\t0\n", r"train\.tsv:2: num_samples must be positive"),
        (b"/root\na.flac\t10\n\xff.flac\t10\n", r"train\.tsv:3: not valid UTF-8"),
    ],
)
def test_malformed_manifest(tmp_path: Path, content: bytes, message: str) -> None:
    tsv = tmp_path / "train.tsv"
    tsv.write_bytes(content)
    with pytest.raises(DataError, match=message):
        AudioManifestDataset(tsv, _cfg(check_files=False))


def test_label_file_must_match_manifest(manifests: Path) -> None:
    wrd = manifests / "train.wrd"
    wrd.write_text("\n".join(wrd.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match=r"train\.wrd: has 19 lines but the manifest has 20 entries"):
        AudioManifestDataset(manifests / "train.tsv", _cfg(target="wrd"))
    (manifests / "train.ltr").write_bytes(b"\xff\n" * 20)
    with pytest.raises(DataError, match=r"train\.ltr:1: not valid UTF-8"):
        AudioManifestDataset(manifests / "train.tsv", _cfg(target="ltr"))
