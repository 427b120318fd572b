"""``seqwin prepare multilingual`` on a small hand-built package (no network: the .deb is made with dpkg-deb)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from seqwin.data.errors import DataError
from seqwin.data.manifest import read_manifest
from seqwin.data.multilingual import package, prepare_multilingual, split_of

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build a test package")


def fake_package(cache: Path, lang: str, prompts: dict[str, float]) -> None:
    """``<package>_1.0_all.deb`` in ``cache`` holding one G.722 file of a 300 Hz tone per prompt (name -> s)."""
    from G722 import G722

    tree = cache / f"build-{lang}"
    sounds = tree / "usr/share/asterisk/sounds" / f"{lang}_XX_f_Test"
    for name, seconds in prompts.items():
        t = np.arange(int(seconds * 16000)) / 16000
        audio = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype(np.int16)
        (sounds / name).parent.mkdir(parents=True, exist_ok=True)
        (sounds / f"{name}.g722").write_bytes(G722(16000, 64000).encode(audio))
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package(lang)}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(cache / f"{package(lang)}_1.0_all.deb")],
                   check=True, capture_output=True)
    shutil.rmtree(tree)


def test_prompts_to_unlabeled_manifests(tmp_path: Path) -> None:
    cache = tmp_path / "debs"
    cache.mkdir()
    fake_package(cache, "fr", {"hello": 1.0, "digits/1": 0.75, "beep": 0.6, "silence/1": 1.0, "tiny": 0.2,
                               **{f"p{k}": 0.5 + k / 10 for k in range(30)}})
    fake_package(cache, "ru", {"goodbye": 2.0})
    out = tmp_path / "out"
    summary, built = prepare_multilingual(out, ["fr", "ru"], cache_dir=cache)
    assert built and summary.skipped == {"non-speech": 1, "silence": 1, "shorter than 0.5 s": 1}
    rows = {}
    for split in ("train", "dev"):
        root, entries = read_manifest(out / "manifests" / f"{split}.tsv")
        assert root == (out / "audio").resolve() and not (out / "manifests" / f"{split}.wrd").exists()
        rows.update({e.rel_path: (split, e.num_samples) for e in entries})
    assert len(rows) == 33  # 30 + hello + digits/1 in fr, goodbye in ru
    assert rows["fr/digits/1.flac"] == (split_of("fr/digits/1"), 12000)
    assert rows["ru/goodbye.flac"] == (split_of("ru/goodbye"), 32000)
    assert {s for s, _ in rows.values()} == {"train", "dev"}
    fr = summary.languages["fr"]
    assert fr["train"][0] + fr["dev"][0] == 32 and sum(s for _, s in summary.languages["ru"].values()) == 32000
    assert "CC-BY-SA-3.0" in (out / "ATTRIBUTION.txt").read_text()
    assert prepare_multilingual(out, ["fr", "ru"], cache_dir=cache)[1] is False
    with pytest.raises(DataError, match="prepared with other options \\(languages\\)"):
        prepare_multilingual(out, ["fr"], cache_dir=cache)


def test_unknown_language(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--languages: choose from es fr it ru, got de"):
        prepare_multilingual(tmp_path, ["de"])
