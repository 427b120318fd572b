"""``seqwin prepare multilingual``: unlabeled speech for wav2vec2 pretraining from the Asterisk prompts of other
languages.

Sources: Debian packages ``asterisk-core-sounds-{es,fr,it,ru}-g722`` (fetched with ``apt-get download`` into the
same cache as ``prepare mini``), G.722 at 16 kHz like the English ones. One professional speaker per language:
es-MX Allison (the mini corpus's speaker, speaking Spanish), fr-CA June, it-IT Carlo (male), ru-RU IvrvoiceRU.
License CC-BY-SA-3.0, written to ``OUT/ATTRIBUTION.txt``. Tones, beeps and ``silence/`` are left out (the
prompts that the English transcript list marks as non-speech; the packages share prompt names).

Output::

    OUT/audio/<lang>/<prompt>.flac                      16 kHz mono 16-bit FLAC
    OUT/manifests/{train,dev}.tsv                       no transcripts: what `seqwin train ssl` reads
    OUT/SHA256SUMS

``dev`` is ~5% of the prompts of each language, chosen by a hash of ``<lang>/<prompt>``. To pretrain on these
and the mini corpus together, merge the manifests (``seqwin prepare merge``).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqwin.data import builds, debs
from seqwin.data.audio import write_flac
from seqwin.data.errors import DataError, IssueLog

MARKER = ".seqwin-multilingual.json"
SAMPLE_RATE = 16000
G722_BITRATE = 64000
LANGUAGES = ("es", "fr", "it", "ru")
SOUNDS = "usr/share/asterisk/sounds"
# Non-speech entries of the English prompt list (core-sounds-en.txt); the same names exist in every language.
NON_SPEECH = frozenset(
    "ascending-2tone beep beeperr confbridge-join confbridge-leave descending-2tone tt-monkeys".split()
)
MIN_SAMPLES = 8000  # 0.5 s: the SSL recipe's min_audio_len

ATTRIBUTION = """\
seqwin multilingual corpus
==========================

Audio: the core sound prompts of the Asterisk PBX in {languages}, recorded with financial contributions by
Digium, Inc. (http://www.digium.com), as packaged by Debian in {packages}.

License: Creative Commons Attribution-ShareAlike 3.0 Unported (CC-BY-SA-3.0),
https://creativecommons.org/licenses/by-sa/3.0/

Changes made by seqwin: G.722 decoded to 16 kHz 16-bit FLAC; tones and silence left out. This derived corpus is
distributed under the same license.
"""


def package(lang: str) -> str:
    return f"asterisk-core-sounds-{lang}-g722"


def split_of(name: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % 100
    return "dev" if bucket < 5 else "train"


@dataclass
class MultilingualSummary:
    languages: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # lang -> split -> [files, samples]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = []
        for lang, splits in self.languages.items():
            files = sum(n for n, _ in splits.values())
            hours = sum(s for _, s in splits.values()) / SAMPLE_RATE / 3600
            per = ", ".join(f"{k} {n}" for k, (n, _) in splits.items())
            out.append(f"{lang}: {files} prompts ({per}), {hours:.3f} h ({hours * 60:.1f} min)")
        total = sum(s for splits in self.languages.values() for _, s in splits.values()) / SAMPLE_RATE / 3600
        out.append(f"total: {total:.3f} h")
        out += [f"skipped {n} x {category}" for category, n in sorted(self.skipped.items())]
        return out


def voice_dir(tree: Path, lang: str) -> Path:
    """``usr/share/asterisk/sounds/<lang>_<COUNTRY>_<sex>_<name>`` inside the extracted package."""
    found = sorted((tree / SOUNDS).glob(f"{lang}_*"))
    if len(found) != 1:
        raise DataError(f"{tree / SOUNDS}: expected one {lang}_* voice folder in {package(lang)}, found {len(found)}")
    return found[0]


def prepare_multilingual(
    out: Path, languages: list[str], *, cache_dir: Path | None = None, force: bool = False
) -> tuple[MultilingualSummary, bool]:
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or not languages:
        raise DataError(f"--languages: choose from {' '.join(LANGUAGES)}, got {' '.join(languages) or 'none'}")
    options = {"languages": list(languages)}
    done = builds.reuse(out, MARKER, options, force, "seqwin prepare multilingual")
    if done is not None:
        return MultilingualSummary(**done), False
    from G722 import G722  # PyPI package "g722"; imported here so other commands work without it

    start = time.monotonic()
    cache_dir = cache_dir or debs.default_cache_dir()
    files = debs.download([package(lang) for lang in languages], cache_dir)
    builds.start(out, MARKER)
    staging = out / "audio.partial"
    shutil.rmtree(staging, ignore_errors=True)
    issues = IssueLog()
    summary = MultilingualSummary()
    rows: dict[str, list[str]] = {"train": [], "dev": []}
    for lang in languages:
        sounds = voice_dir(debs.extract([files[package(lang)]], cache_dir / "extracted"), lang)
        stats = summary.languages.setdefault(lang, {"train": [0, 0], "dev": [0, 0]})
        for path in sorted(sounds.rglob("*.g722")):
            name = path.relative_to(sounds).with_suffix("").as_posix()
            shown = f"{package(lang)}:{sounds.name}/{name}.g722"
            if name.startswith("silence/") or name in NON_SPEECH:
                issues.skip("silence" if name.startswith("silence/") else "non-speech", shown, name)
                continue
            # A fresh decoder per file: G.722 is adaptive and would carry its state into the next stream.
            samples = np.asarray(G722(SAMPLE_RATE, G722_BITRATE).decode(path.read_bytes()), dtype=np.int16)
            if samples.size < MIN_SAMPLES:
                issues.skip("shorter than 0.5 s", shown, f"{samples.size} samples")
                continue
            rel = f"{lang}/{name}.flac"
            write_flac(staging / rel, samples, SAMPLE_RATE)
            split = split_of(f"{lang}/{name}")
            rows[split].append(f"{rel}\t{samples.size}\n")
            stats[split][0] += 1
            stats[split][1] += int(samples.size)
    final = out / "audio"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for split, split_rows in rows.items():
        if not split_rows:
            raise DataError(f"no usable prompts for the {split} split of {' '.join(languages)}")
        # Only the .tsv: empty .wrd/.ltr files would read as utterances with empty transcripts.
        (out / "manifests").mkdir(parents=True, exist_ok=True)
        (out / "manifests" / f"{split}.tsv").write_text(f"{final.resolve()}\n" + "".join(split_rows), "utf-8")
    (out / "ATTRIBUTION.txt").write_text(ATTRIBUTION.format(
        languages=", ".join(languages), packages=", ".join(f.name for f in files.values())), encoding="utf-8")
    issues.write_tsv(out / "issues.tsv")
    builds.write_checksums(out, final)
    summary.skipped = {cat: n for (cat, action), n in issues.counts().items() if action == "skipped"}
    summary.seconds = time.monotonic() - start
    builds.finish(out, MARKER, options, asdict(summary))
    return summary, True
