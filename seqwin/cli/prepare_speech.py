"""``seqwin prepare voices | shifted | multilingual | merge``: speech beyond the mini corpus's one speaker."""

from __future__ import annotations

import argparse
from pathlib import Path

from seqwin.errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from seqwin.data.flite import SPEAKERS
    from seqwin.data.multilingual import LANGUAGES

    voices = sub.add_parser("voices", help="English speech of other (flite) voices; one voice held out for test")
    voices.add_argument("out", type=Path, metavar="OUT", help="output directory (OUT/LibriSpeech, OUT/manifests)")
    voices.add_argument("--mini", type=Path, help="a `prepare mini` output: its prompts are read in every split")
    voices.add_argument("--text", type=Path, help="a `prepare text` output: sentences of train/valid/test.txt")
    voices.add_argument("--voices", nargs="+", default=list(SPEAKERS), choices=list(SPEAKERS), metavar="VOICE",
                        help=f"flite voices (default: {' '.join(SPEAKERS)})")
    voices.add_argument("--heldout-voice", default="rms", help="the voice only in split heldout_voice (default rms)")
    voices.add_argument("--train-sentences", type=int, default=400, help="text sentences per voice (default 400)")
    voices.add_argument("--dev-sentences", type=int, default=50)
    voices.add_argument("--test-sentences", type=int, default=100)
    voices.add_argument("--force", action="store_true", help="rebuild even if OUT is already complete")
    voices.set_defaults(func=_run_voices)

    shifted = sub.add_parser("shifted", help="pitch/tempo-shifted copies of a test split (proxy test sets)")
    shifted.add_argument("source", type=Path, metavar="SOURCE", help="a LibriSpeech-layout corpus (e.g. data/mini)")
    shifted.add_argument("out", type=Path, metavar="OUT")
    shifted.add_argument("--split", default="test", help="split of SOURCE to copy (default test)")
    shifted.add_argument("--pitch", type=float, nargs="*", default=[-3.0, 3.0], metavar="SEMITONES",
                         help="pitch shifts, one split each (default -3 3)")
    shifted.add_argument("--tempo", type=float, nargs="*", default=[0.9, 1.1], metavar="FACTOR",
                         help="tempo factors, one split each; 1.1 is 10%% faster (default 0.9 1.1)")
    shifted.add_argument("--force", action="store_true", help="rebuild even if OUT is already complete")
    shifted.set_defaults(func=_run_shifted)

    multi = sub.add_parser("multilingual", help="unlabeled Asterisk prompts in other languages (SSL manifests)")
    multi.add_argument("out", type=Path, metavar="OUT")
    multi.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=list(LANGUAGES), metavar="LANG",
                       help=f"default: {' '.join(LANGUAGES)}")
    multi.add_argument("--cache-dir", type=Path, help="where the .deb files are kept (default ~/.cache/seqwin/debs)")
    multi.add_argument("--force", action="store_true", help="rebuild even if OUT is already complete")
    multi.set_defaults(func=_run_multilingual)

    # OUT goes first: after `--split NAME TSV...` argparse would take it for one more TSV
    merge = sub.add_parser("merge", help="merge manifests into new splits (e.g. mini + voices)",
                           usage="seqwin prepare merge OUT --split NAME TSV [TSV ...] [--split NAME TSV ...]")
    merge.add_argument("out", type=Path, metavar="OUT", help="manifest directory to write")
    merge.add_argument("--split", nargs="+", action="append", required=True, metavar=("NAME", "TSV"),
                       help="a split NAME made of the given .tsv manifests (repeat for more splits); TSV:N lists "
                            "that manifest N times, to upsample a small corpus against a large one")
    merge.set_defaults(func=_run_merge)


def _report(out: Path, what: str, built: bool, seconds: float, lines: list[str]) -> None:
    if built:
        print(f"{out}: {what} written in {seconds:.1f} s")
    else:
        print(f"{out}: {what} already prepared, nothing to do (use --force to rebuild)")
    for line in lines:
        print("  " + line)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")


def _run_voices(args: argparse.Namespace) -> int:
    from seqwin.data.voices import VoicesConfig, prepare_voices

    for name in ("train_sentences", "dev_sentences", "test_sentences"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    _check_out(args.out)
    cfg = VoicesConfig(voices=args.voices, heldout_voice=args.heldout_voice, train_sentences=args.train_sentences,
                       dev_sentences=args.dev_sentences, test_sentences=args.test_sentences)
    summary, built = prepare_voices(args.out, cfg, mini=args.mini, text_dir=args.text, force=args.force)
    _report(args.out, "voices corpus", built, summary.seconds, summary.lines())
    return 0


def _run_shifted(args: argparse.Namespace) -> int:
    from seqwin.data.shifted import ShiftConfig, prepare_shifted

    _check_out(args.out)
    cfg = ShiftConfig(split=args.split, pitch=args.pitch, tempo=args.tempo)
    summary, built = prepare_shifted(args.source, args.out, cfg, force=args.force)
    _report(args.out, "shifted splits", built, summary.seconds, summary.lines())
    return 0


def _run_multilingual(args: argparse.Namespace) -> int:
    from seqwin.data.multilingual import prepare_multilingual

    _check_out(args.out)
    summary, built = prepare_multilingual(args.out, args.languages, cache_dir=args.cache_dir, force=args.force)
    _report(args.out, "multilingual corpus", built, summary.seconds, summary.lines())
    return 0


def _repeated(split: str, source: str) -> tuple[Path, int]:
    """``A.tsv`` -> (A.tsv, 1); ``A.tsv:3`` -> (A.tsv, 3), unless a file is literally named ``A.tsv:3``."""
    path, _, times = source.rpartition(":")
    if not path or Path(source).exists() or not times.isdigit():
        return Path(source), 1
    if int(times) < 1:
        raise UserError(f"--split {split}: {source}: the repeat count after ':' must be >= 1")
    return Path(path), int(times)


def _run_merge(args: argparse.Namespace) -> int:
    from seqwin.data.manifest_merge import merge_manifests

    _check_out(args.out)
    splits: dict[str, list[Path]] = {}
    repeat: dict[str, dict[Path, int]] = {}
    for name, *sources in args.split:
        if not sources:
            raise UserError(f"--split {name}: give at least one .tsv manifest after the name")
        if name in splits:
            raise UserError(f"--split {name}: given twice")
        splits[name], repeat[name] = [], {}
        for source in sources:
            path, times = _repeated(name, source)
            splits[name].append(path)
            repeat[name][path] = times
    for split in merge_manifests(args.out, splits, repeat):
        labels = "with transcripts" if split.labeled else "audio only"
        print(f"  {split.name}: {split.utterances} utterances, {split.samples / 16000 / 3600:.3f} h, {labels}")
    return 0
