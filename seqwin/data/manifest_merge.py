"""``seqwin prepare merge``: one manifest split from several, e.g. the mini corpus plus other voices or languages.

A manifest has a single root, so the merged one's root is the deepest directory that holds every source's audio,
and each row's path is made relative to it. Transcripts (``.wrd``, and the ``.ltr`` made from it) are merged
when every source of the split has them; otherwise only the ``.tsv`` is written, which is what pretraining
reads. ``dict.ltr.txt`` counts the letters of every labeled split written.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from seqwin.data.errors import DataError
from seqwin.data.manifest import letter_counts, read_labels, read_manifest, write_dictionary, write_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergedSplit:
    name: str
    utterances: int
    samples: int
    labeled: bool


def merge_manifests(out_dir: Path, splits: dict[str, list[Path]]) -> list[MergedSplit]:
    """Write ``out_dir/<name>.tsv`` (and ``.wrd``/``.ltr`` when every source has them) for each ``name -> sources``."""
    merged, letters = [], Counter[str]()
    for name, sources in splits.items():
        paths: list[Path] = []
        counts: list[int] = []
        labels: list[str] | None = []
        for tsv in sources:
            root, entries = read_manifest(tsv)
            paths += [Path(os.path.abspath(root / e.rel_path)) for e in entries]
            counts += [e.num_samples for e in entries]
            wrd = tsv.with_suffix(".wrd")
            if labels is not None and wrd.is_file():
                labels += read_labels(wrd, len(entries))
            elif labels is not None:
                log.info("%s has no transcripts beside it (%s): %s.tsv is written without them", tsv, wrd.name, name)
                labels = None
        if not paths:
            raise DataError(f"--split {name}: the manifests {' '.join(map(str, sources))} list no audio")
        seen: set[Path] = set()
        for path in paths:
            if path in seen:
                raise DataError(f"--split {name}: {path} is listed twice (the same manifest given twice?)")
            seen.add(path)
        root = Path(os.path.commonpath([p.parent for p in paths]))
        rels = [p.relative_to(root).as_posix() for p in paths]
        if labels is not None:
            write_manifest(out_dir, name, root, list(zip(rels, counts, labels, strict=True)))
            letters.update(letter_counts(labels))
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            for ext in ("wrd", "ltr"):  # stale transcripts of an earlier labeled merge would pair with this .tsv
                (out_dir / f"{name}.{ext}").unlink(missing_ok=True)
            rows = "".join(f"{rel}\t{n}\n" for rel, n in zip(rels, counts, strict=True))
            (out_dir / f"{name}.tsv").write_text(f"{root}\n{rows}", encoding="utf-8")
        merged.append(MergedSplit(name, len(paths), sum(counts), labels is not None))
    if letters:
        write_dictionary(out_dir / "dict.ltr.txt", letters)
    return merged
