"""``seqwin prepare merge``: one manifest split from several, e.g. the mini corpus plus other voices or languages.

A manifest has a single root, so the merged one's root is the deepest directory that holds every source's audio,
and each row's path is made relative to it. Transcripts (``.wrd``, and the ``.ltr`` made from it) are merged
when every source of the split has them; otherwise only the ``.tsv`` is written, which is what pretraining
reads. ``dict.ltr.txt`` counts the letters of every labeled split written.

A source can be listed ``times`` times in a row (``repeat``), which upsamples a small corpus against a large one
(as fairseq's ``--upsample-primary``): each pass over the merged split then sees its utterances that many times.
``dict.ltr.txt`` counts each source once, so upsampling does not reorder the letters (the CTC output layer).
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


def merge_manifests(
    out_dir: Path, splits: dict[str, list[Path]], repeat: dict[str, dict[Path, int]] | None = None
) -> list[MergedSplit]:
    """Write ``out_dir/<name>.tsv`` (and ``.wrd``/``.ltr`` when every source has them) for each ``name -> sources``;
    a source in ``repeat[name]`` is written ``repeat[name][source]`` times in that split."""
    merged, letters = [], Counter[str]()
    for name, sources in splits.items():
        paths: list[Path] = []
        counts: list[int] = []
        labels: list[str] | None = []
        distinct: list[str] = []  # each source's transcripts once: upsampling leaves the letter inventory alone
        seen: set[Path] = set()
        for tsv in sources:
            root, entries = read_manifest(tsv)
            tsv_paths = [Path(os.path.abspath(root / e.rel_path)) for e in entries]
            for path in tsv_paths:  # before repeating: only an explicit repeat may list a file twice
                if path in seen:
                    raise DataError(f"--split {name}: {path} is listed twice (the same manifest given twice?)")
                seen.add(path)
            times = (repeat or {}).get(name, {}).get(tsv, 1)
            paths += tsv_paths * times
            counts += [e.num_samples for e in entries] * times
            wrd = tsv.with_suffix(".wrd")
            if labels is not None and wrd.is_file():
                source_labels = read_labels(wrd, len(entries))
                labels += source_labels * times
                distinct += source_labels
            elif labels is not None:
                log.info("%s has no transcripts beside it (%s): %s.tsv is written without them", tsv, wrd.name, name)
                labels = None
        if not paths:
            raise DataError(f"--split {name}: the manifests {' '.join(map(str, sources))} list no audio")
        root = Path(os.path.commonpath([p.parent for p in paths]))
        rels = [p.relative_to(root).as_posix() for p in paths]
        if labels is not None:
            write_manifest(out_dir, name, root, list(zip(rels, counts, labels, strict=True)))
            letters.update(letter_counts(distinct))
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
