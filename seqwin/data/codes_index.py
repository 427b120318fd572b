"""The codes index: what ``seqwin tokenize`` writes next to the code files, and what reads them back
(``seqwin detokenize``, the speech LM's data).

Format ``seqwin-codes/1``::

    OUT/codes/<id>.npy   one int16 array per utterance, shape (num_quantizers, num_frames), C order;
                         row q holds the codes of RVQ level q+1, values in [0, codebook_size)
    OUT/index.json       {"format": "seqwin-codes/1", "sample_rate", "hop_length", "frame_rate",
                          "num_quantizers", "codebook_size", "checkpoint", "causal", "precision" (fp32|bf16),
                          "utterances": [{"id", "codes", "source", "num_samples", "num_frames"}, ...],
                          "skipped": [{"source", "reason"}, ...]}
    OUT/index.tsv        the same utterances, one per line: id, codes (path relative to OUT), num_frames,
                         num_samples, source; first line is the header

``num_frames = ceil(num_samples / hop_length)``: the last frame covers a partial hop (zero-padded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqwin.data.errors import DataError

FORMAT = "seqwin-codes/1"
INDEX_NAME = "index.json"
_UTTERANCE_KEYS = ("id", "codes", "source", "num_samples", "num_frames")


def write_codes_index(out_dir: Path, header: dict[str, Any], utterances: list[dict], skipped: list[dict]) -> Path:
    """Write ``index.json`` and ``index.tsv`` into ``out_dir``; ``header``: the codec's settings (the keys above
    between ``format`` and ``utterances``), ``utterances``: one dict per utterance with the keys above."""
    for record in utterances:
        missing = [key for key in _UTTERANCE_KEYS if key not in record]
        if missing:
            raise ValueError(f"utterance record {record.get('id')!r} lacks {missing}")
    index = {"format": FORMAT, **header, "utterances": utterances, "skipped": skipped}
    path = Path(out_dir) / INDEX_NAME
    path.write_text(json.dumps(index, indent=1) + "\n")
    lines = ["id\tcodes\tnum_frames\tnum_samples\tsource"]
    lines += [f"{r['id']}\t{r['codes']}\t{r['num_frames']}\t{r['num_samples']}\t{r['source']}" for r in utterances]
    (Path(out_dir) / "index.tsv").write_text("\n".join(lines) + "\n")
    return path


def read_codes_index(source: Path) -> tuple[dict | None, list[dict]]:
    """``(index or None, [{"id", "path", "num_samples" or None}])`` for an index.json, its folder or one .npy
    (which has no index)."""
    source = Path(source)
    if source.is_dir():
        source = source / INDEX_NAME
    if source.suffix == ".npy":
        if not source.is_file():
            raise DataError(f"{source}: no such file")
        return None, [{"id": source.stem, "path": source, "num_samples": None}]
    if not source.is_file():
        raise DataError(f"{source}: no such codes index (give OUT of seqwin tokenize, its index.json or a .npy)")
    try:
        index = json.loads(source.read_text())
    except UnicodeDecodeError:  # a binary file, e.g. audio given by mistake
        raise DataError(f"{source}: not a codes index (give OUT of seqwin tokenize, index.json or a .npy)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{source}: not a {FORMAT} index")
    utterances = index.get("utterances")
    if not isinstance(utterances, list):
        raise DataError(f"{source}: no utterances list")
    for i, u in enumerate(utterances):
        if not isinstance(u, dict) or not isinstance(u.get("id"), str) or not isinstance(u.get("codes"), str):
            raise DataError(f"{source}: utterance {i} has no id and codes path")
    return index, [{"id": u["id"], "path": source.parent / u["codes"], "num_samples": u.get("num_samples")}
                   for u in utterances]
