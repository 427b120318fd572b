"""``seqwin eval asr``: CTC decoding of manifests or LibriSpeech split directories, WER/CER per split.

Greedy (best path) by default; with ``--lm`` a lexicon-constrained beam search with a word n-gram LM
(:mod:`seqwin.recipes.wav2vec2.beam`).

Writes ``OUT/summary.json`` (model, attention, and per split: WER, CER, counts, decoding time and real-time
factor) and ``OUT/hypotheses.tsv`` (``split, id, reference, hypothesis``). Every utterance is decoded whole:
batches follow a padded-samples budget, and an utterance longer than the budget gets a batch of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from seqwin.data.errors import DataError
from seqwin.data.manifest import read_manifest
from seqwin.data.pipeline import AudioManifestDataset, AudioReaderConfig
from seqwin.errors import UserError
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.checkpoint import ASR_FAMILY, LoadedModel
from seqwin.models.wav2vec2.factory import set_encoder_attention
from seqwin.recipes.wav2vec2.data import batch_stream
from seqwin.recipes.wav2vec2.decode import error_rates, greedy_ctc, ids_to_words, letters_to_words

log = logging.getLogger("seqwin.wav2vec2.eval")


@dataclass
class EvalSplit:
    name: str
    manifest: Path


def resolve_data(items: list[Path], out_dir: Path) -> list[EvalSplit]:
    """Manifests as given; LibriSpeech split directories get a manifest under ``OUT/manifests``."""
    from seqwin.data.librispeech import prepare_librispeech

    splits: list[EvalSplit] = []
    for item in items:
        if not item.exists():
            raise UserError(f"--data {item}: no such file or directory")
        if item.is_file() and item.suffix == ".tsv":
            splits.append(EvalSplit(item.stem, item))
        elif item.is_dir():
            try:
                summaries, _ = prepare_librispeech(item, out_dir / "manifests", verify_audio=False)
            except DataError as exc:
                raise UserError(f"--data {item}: {exc}") from None
            splits += [EvalSplit(s.name, out_dir / "manifests" / f"{s.name}.tsv") for s in summaries]
        else:
            raise UserError(f"--data {item}: expected a .tsv manifest or a LibriSpeech split directory")
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise UserError(f"--data: split names must be unique, got {names}")
    return splits


def open_split(split: EvalSplit, max_num_frames: int, normalize: bool = False) -> tuple[AudioManifestDataset, bool]:
    """Dataset over every utterance of ``split``; the flag says whether its labels are ``.ltr`` (no ``.wrd``).
    ``normalize``: per-utterance zero mean, unit variance waveforms, for models trained on those."""
    try:
        _, entries = read_manifest(split.manifest)
        longest = max((e.num_samples for e in entries), default=1)
        target = "wrd" if split.manifest.with_suffix(".wrd").is_file() else "ltr"
        if not split.manifest.with_suffix(f".{target}").is_file():
            raise UserError(f"{split.manifest}: no .wrd or .ltr transcripts beside it")
        budget = max(max_num_frames, longest)  # nothing is skipped; batch_stream re-splits to max_num_frames
        # strict: a WER over fewer utterances than the split has would not be comparable with published numbers.
        config = AudioReaderConfig(max_num_frames=budget, max_audio_len=budget, target=target, shuffle=False,
                                   strict=True, normalize=normalize)
        return AudioManifestDataset(split.manifest, config), target == "ltr"
    except DataError as exc:
        raise UserError(str(exc)) from None


def apply_window(loaded: LoadedModel, window: str | None) -> None:
    if window is None:
        return
    from seqwin.attention import AttentionSpec, LayerAttentionConfig

    spec = AttentionSpec(kind="full") if window == "full" else AttentionSpec(kind="local", window=parse_window(window))
    set_encoder_attention(loaded.model, loaded.config, LayerAttentionConfig(default=spec))


def parse_window(text: str) -> tuple[int, int]:
    try:
        left, right = (int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--window expects L,R (frames, -1 = unbounded) or 'full', got {text!r}") from None
    if left < -1 or right < -1:
        raise UserError(f"--window sides must be >= -1, got {text!r}")
    return left, right


def evaluate_model(loaded: LoadedModel, symbols: list[str], splits: list[EvalSplit], out_dir: Path,
                   max_num_frames: int, device: torch.device, checkpoint: str = "",
                   beam: Callable[[Tensor, list[int]], list[str]] | None = None) -> dict:
    """Decode every split (greedy, or ``beam``: logits + lengths -> transcripts) and score it; waveforms are
    normalized when the model expects it (``loaded.normalize``)."""
    model = loaded.model.to(device).eval()
    enc = loaded.config.model.encoder_config
    summary: dict = {
        "checkpoint": checkpoint, "family": loaded.family, "source": loaded.source,
        "decoding": "greedy" if beam is None else "beam search + word LM", "normalize": loaded.normalize,
        "attention": loaded.config.attention.describe(enc.num_encoder_layers, enc.num_encoder_attn_heads),
        "splits": {},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for split in splits:
        dataset, ltr = open_split(split, max_num_frames, loaded.normalize)
        ids, refs, hyps, audio, start = [], [], [], 0.0, time.monotonic()
        with torch.inference_mode():
            for batch in batch_stream(dataset, 0, 0, budget=max_num_frames):
                batch = batch.to(device)
                logits, layout = model(batch.waveforms, batch.layout())
                if beam is None:
                    hyps += [ids_to_words(ids, symbols) for ids in greedy_ctc(logits, layout)]
                else:
                    hyps += beam(logits, list(layout.seq_lens))
                refs += [letters_to_words(t) if ltr else " ".join(t.split()) for t in batch.texts]
                ids += batch.ids
                audio += float(batch.seq_lens.sum()) / 16000
        seconds = time.monotonic() - start
        rates = error_rates(refs, hyps)
        summary["splits"][split.name] = {**rates, "manifest": str(split.manifest), "audio_seconds": audio,
                                         "decode_seconds": seconds, "rtf": seconds / max(audio, 1e-9)}
        rows += [(split.name, i, r, h) for i, r, h in zip(ids, refs, hyps, strict=True)]
        log.info("%s: WER %.2f%% CER %.2f%% over %d utterances (%.1f s audio, RTF %.3f)", split.name,
                 rates["wer"], rates["cer"], len(refs), audio, seconds / max(audio, 1e-9))
    with open(out_dir / "hypotheses.tsv", "w", encoding="utf-8") as f:
        f.write("split\tid\treference\thypothesis\n")
        f.writelines(f"{s}\t{i}\t{r}\t{h}\n" for s, i, r, h in rows)
    tmp = out_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out_dir / "summary.json")
    return summary


def evaluate(args: argparse.Namespace) -> int:
    from seqwin.data.manifest import CharDictionary
    from seqwin.recipes.wav2vec2.transcribe import trained_with_normalize

    out_dir = Path(args.out_dir)
    loaded = wav2vec2_checkpoint.load(Path(args.checkpoint), heads=args.heads)
    if trained_with_normalize(Path(args.checkpoint)):  # a training run's checkpoint: its data.normalize
        loaded.extras["normalize"] = True
    if loaded.family != ASR_FAMILY:
        raise UserError(f"--checkpoint {args.checkpoint}: a pretrained (SSL) model has no CTC head; fine-tune it "
                        "with `seqwin train asr` first")
    splits = resolve_data([Path(d) for d in args.data], out_dir)
    symbols = loaded.dictionary
    if args.dict is not None or symbols is None:
        path = Path(args.dict) if args.dict else splits[0].manifest.parent / "dict.ltr.txt"
        try:
            symbols = list(CharDictionary.load(path).symbols)
        except DataError as exc:
            raise UserError(f"the model carries no vocabulary and --dict failed: {exc}") from None
        log.info("vocabulary from %s", path)
    if len(symbols) != loaded.config.model.target_vocab_size:
        raise UserError(f"vocabulary has {len(symbols)} symbols, the model's CTC head "
                        f"{loaded.config.model.target_vocab_size}")
    apply_window(loaded, args.window)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    beam = None
    if args.lm is not None:
        from seqwin.recipes.wav2vec2.beam import make_beam_decoder

        beam = make_beam_decoder(symbols, Path(args.lm), out_dir, order=args.lm_order, beam_size=args.beam_size,
                                 lm_weight=args.lm_weight, word_score=args.word_score)
    summary = evaluate_model(loaded, symbols, splits, out_dir, args.max_num_frames, device, str(args.checkpoint),
                             beam)
    print(f"{'split':<16} {'utts':>6} {'WER%':>7} {'CER%':>7}   ({summary['attention']})")
    for name, s in summary["splits"].items():
        print(f"{name:<16} {s['num_utts']:>6} {s['wer']:>7.2f} {s['cer']:>7.2f}")
    return 0
