"""tools/asr_ablation.py's sweep plan, resume and aggregation (the runs themselves are `seqwin train`/`eval`,
tested elsewhere): every command it would run is recorded instead, and each fake run leaves the file a real one
leaves."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import asr_ablation  # noqa: E402

from seqwin.data.manifest import read_manifest, write_manifest  # noqa: E402


@pytest.fixture
def fake_runs(tmp_path: Path, monkeypatch) -> list[list[str]]:
    """Record each seqwin command; a training leaves model.pt, an eval a summary.json whose CER encodes the
    seed (10 + seed) and, for ssl variants, 5 less."""
    calls: list[list[str]] = []

    def run(cmd: list[str], log: Path, threads: int) -> None:
        calls.append(cmd)
        out = Path(cmd[-1])
        out.mkdir(parents=True)
        if cmd[0] == "train":
            (out / "model.pt").write_bytes(b"")
            return
        seed = int(out.name.removeprefix("seed"))
        cer = 10.0 + seed - (5.0 if "ssl" in out.parent.name else 0.0)
        splits = {name: {"cer": cer, "wer": 2 * cer} for name in asr_ablation.test_splits(tmp_path / "data")}
        (out / "summary.json").write_text(json.dumps({"splits": splits}))

    monkeypatch.setattr(asr_ablation, "run", run)
    monkeypatch.setattr(asr_ablation, "merged", lambda out, name, splits: out / "data" / name)
    return calls


def _args(tmp_path: Path, variants: list[str], seeds: list[int], all_seeds=None) -> argparse.Namespace:
    return argparse.Namespace(data=tmp_path / "data", out=tmp_path / "out", variants=variants, seeds=seeds, jobs=1,
                              ssl_steps=0, ctc_steps=0, all_seeds=all_seeds)


def _value(cmd: list[str], key: str) -> str:
    return next(kv.split("=", 1)[1] for kv in cmd if kv.startswith(key + "="))


def test_plan_pretrains_once_and_initializes_from_the_matching_seed(tmp_path, fake_runs):
    results = asr_ablation.sweep(_args(tmp_path, ["scratch", "ssl_en", "ssl_en_aug", "ssl_multi"], [0, 1]))
    ssl = [c for c in fake_runs if c[:2] == ["train", "ssl"]]
    assert sorted(Path(c[-1]).relative_to(tmp_path / "out/runs").as_posix() for c in ssl) == [
        "ssl/en/seed0", "ssl/en/seed1", "ssl/multi/seed0", "ssl/multi/seed1"]
    ctc = {Path(c[-1]).relative_to(tmp_path / "out/runs/ctc").as_posix(): c
           for c in fake_runs if c[:2] == ["train", "asr"]}
    assert len(ctc) == 8
    assert not any(kv.startswith("init.ssl_checkpoint=") for kv in ctc["scratch/seed1"])
    assert _value(ctc["ssl_multi/seed1"], "init.ssl_checkpoint").endswith("ssl/multi/seed1/model.pt")
    assert "model.config.frontend.freq_warp=0.1" in ctc["ssl_en_aug/seed0"]
    assert "model.config.frontend.freq_warp=0.1" not in ctc["ssl_en/seed0"]
    assert all(_value(c, "trainer.max_seconds") == "null" for c in fake_runs if c[0] == "train")
    # every split of every variant: the seeds' values, their mean and range
    row = results["ssl_en"]["heldout_voice"]
    assert row["cer"] == [5.0, 6.0] and row["cer_mean"] == 5.5 and (row["cer_min"], row["cer_max"]) == (5.0, 6.0)
    assert results["scratch"]["test_tempo1.1"]["wer_mean"] == 21.0
    assert "| scratch | 10.5 (10.0-11.0) |" in asr_ablation.table(results)
    asr_ablation.plot(results, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_finished_runs_are_not_run_again(tmp_path, fake_runs):
    asr_ablation.sweep(_args(tmp_path, ["ssl_en_voices"], [0]))
    assert _value(fake_runs[1], "data.manifest_dir").endswith("data/ctc_voices")
    first = len(fake_runs)
    asr_ablation.sweep(_args(tmp_path, ["ssl_en_voices", "scratch"], [0]))
    assert [c[:2] for c in fake_runs[first:]] == [["train", "asr"], ["eval", "asr"]]  # scratch only
    assert fake_runs[-1][-1].endswith("eval/scratch/seed0")


def test_only_the_named_variants_run_every_seed(tmp_path, fake_runs):
    results = asr_ablation.sweep(_args(tmp_path, ["scratch", "ssl_multi"], [0, 1], all_seeds=["scratch"]))
    trained = sorted(Path(c[-1]).relative_to(tmp_path / "out/runs").as_posix() for c in fake_runs if c[0] == "train")
    assert trained == ["ctc/scratch/seed0", "ctc/scratch/seed1", "ctc/ssl_multi/seed0", "ssl/multi/seed0"]
    assert results["ssl_multi"]["test"]["cer"] == [5.0] and results["scratch"]["test"]["cer"] == [10.0, 11.0]


def test_steps_override_scales_warmup():
    assert asr_ablation.steps_override(0) == []
    assert asr_ablation.steps_override(50) == ["trainer.max_steps=50", "trainer.warmup_steps=5"]


def test_mixed_corpora_are_merged_once_with_the_mini_corpus_upsampled(tmp_path, fake_runs, monkeypatch):
    merges: list[tuple[str, dict]] = []
    monkeypatch.setattr(asr_ablation, "merged",
                        lambda out, name, splits: merges.append((name, splits)) or out / "data" / name)
    asr_ablation.sweep(_args(tmp_path, ["ssl_mix", "mix_aug_5k", "ssl_mix_aug_5k"], [0, 1]))
    assert [name for name, _ in merges] == ["ctc_voices", "ctc_voices_up3"]  # SSL and CTC share the plain mix
    assert merges[1][1]["train"][0] == f"{tmp_path / 'data/mini/manifests/train.tsv'}:3"
    runs = {Path(c[-1]).relative_to(tmp_path / "out/runs").as_posix(): c for c in fake_runs if c[0] == "train"}
    assert sorted(k for k in runs if k.startswith("ssl/")) == ["ssl/mix/seed0", "ssl/mix/seed1"]
    assert _value(runs["ssl/mix/seed1"], "trainer.max_steps") == "2000"
    assert _value(runs["ssl/mix/seed1"], "data.manifest_dir").endswith("data/ctc_voices")
    long = runs["ctc/ssl_mix_aug_5k/seed1"]
    assert _value(long, "trainer.max_steps") == "5000" and "model.config.frontend.noise_p=0.5" in long
    assert _value(long, "init.ssl_checkpoint").endswith("ssl/mix/seed1/model.pt")
    assert _value(long, "data.manifest_dir").endswith("data/ctc_voices_up3")
    assert _value(runs["ctc/ssl_mix/seed0"], "data.manifest_dir").endswith("mini/manifests")
    assert not any(kv.startswith("init.") for kv in runs["ctc/mix_aug_5k/seed0"])


def test_labeled_subset_takes_whole_utterances_until_the_minutes_and_keeps_dev_and_letters(tmp_path):
    mini = tmp_path / "mini"
    mini.mkdir()
    rows = [(f"a/{i}.flac", 16_000 * 30, f"WORD {i}") for i in range(10)]  # 30 s each
    write_manifest(mini, "train", tmp_path / "audio", rows)
    write_manifest(mini, "dev", tmp_path / "audio", rows[:2])
    (mini / "dict.ltr.txt").write_text("| 20\nW 10\n")
    folder = asr_ablation.labeled_subset(tmp_path / "out", mini, minutes=1.2, seed=0)
    root, entries = read_manifest(folder / "train.tsv")
    assert root == tmp_path / "audio" and len(entries) == 3  # 60 s < 72 s: a third utterance crosses the mark
    words = (folder / "train.wrd").read_text().splitlines()
    assert [f"WORD {e.rel_path[2:-5]}" for e in entries] == words  # labels travel with their audio
    assert len(set(words)) == 3 and words != ["WORD 0", "WORD 1", "WORD 2"]  # a seeded draw, not the first rows
    assert (folder / "dict.ltr.txt").read_text() == "| 20\nW 10\n"
    assert (folder / "dev.tsv").read_text() == (mini / "dev.tsv").read_text()
    again = asr_ablation.labeled_subset(tmp_path / "out", mini, minutes=1.2, seed=0)
    assert again == folder and (folder / "train.wrd").read_text().splitlines() == words


def test_units_mix_variants_weight_the_mini_voice_and_split_the_augmentation(tmp_path, fake_runs, monkeypatch):
    merges: list[tuple[str, dict]] = []
    monkeypatch.setattr(asr_ablation, "merged",
                        lambda out, name, splits: merges.append((name, splits)) or out / "data" / name)
    asr_ablation.sweep(_args(tmp_path, ["ssl_units_mix8_warp_5k", "ssl_units_mix8_noise_5k"], [0]))
    assert [name for name, _ in merges] == ["ctc_voices", "ctc_voices_up8"]
    assert merges[1][1]["train"][0] == f"{tmp_path / 'data/mini/manifests/train.tsv'}:8"
    runs = {Path(c[-1]).relative_to(tmp_path / "out/runs").as_posix(): c for c in fake_runs if c[0] == "train"}
    ssl = runs["ssl/mix_units/seed0"]  # one SSL run serves both
    assert "loss.kind=units" in ssl and _value(ssl, "trainer.max_steps") == "2000"
    warp, noise = runs["ctc/ssl_units_mix8_warp_5k/seed0"], runs["ctc/ssl_units_mix8_noise_5k/seed0"]
    assert "model.config.frontend.freq_warp=0.1" in warp and not any("noise_p" in kv for kv in warp)
    assert "model.config.frontend.noise_p=0.5" in noise and not any("freq_warp" in kv for kv in noise)
    assert _value(warp, "init.ssl_checkpoint").endswith("ssl/mix_units/seed0/model.pt")
