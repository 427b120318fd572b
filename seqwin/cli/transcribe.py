"""``seqwin transcribe``: speech -> text with a wav2vec2 CTC model, for files of any length or a live stream.

seqwin transcribe AUDIO... --checkpoint CKPT [--lm train.wrd] [-o OUT] [--format txt|json|srt]
arecord -f S16_LE -r 16000 -c 1 -t raw | seqwin transcribe - --checkpoint CKPT

AUDIO: audio files, folders (searched recursively) or .tsv manifests; or '-' for raw 16 kHz mono signed 16-bit
little-endian PCM on stdin (partial hypotheses on stderr as audio arrives, the final text on stdout). Output:
txt 'id<TAB>text' lines; json one object per line with word start/end times in seconds; srt subtitles (one file
per input under -o DIR). Unusable inputs (wrong sample rate, unreadable, truncated, too short) are skipped and
counted; --strict stops at the first one. CKPT: what `seqwin eval asr --checkpoint` accepts.

Chunking: a sliding-window encoder's output frame depends on a bounded span of audio (frontend + position conv +
the windows of every layer), so files are encoded --chunk-seconds at a time with exactly that much context and
give the whole-file logits (features normalised over the utterance use whole-file statistics from a first pass).
Dense or routing attention has no bounded span: chunks then see --context-seconds per side and only approximate
the whole-file output (--chunk-seconds 0 encodes whole files at once, exactly, with memory growing with length).

Streaming latency: text for a moment is final once the encoder's right context after it has arrived, i.e.
(position-conv right + sum of the layers' right windows) frames + the frontend's look-ahead; updates come every
--step-seconds on top of that. Per preset:
  tiny             8.295 s  (15 + 6 x 32 frames of 40 ms, + 15 ms log-mel look-ahead)
  base_10h/100h    dense: unbounded; with --window L,R: (63 + 12 R) x 20 ms + 5 ms (R=16: 5.105 s)
  large_10h/100h   dense: unbounded; with --window L,R: (63 + 24 R) x 20 ms + 5 ms (R=16: 8.945 s)
Models that normalise over the whole utterance (the tiny preset's log-mel features, Base's first-layer group
norm, --normalize) give partials with the statistics received so far; the final text re-encodes the stream
(spooled to a temporary file) and equals the whole-file text.
"""

from __future__ import annotations

import argparse

from seqwin.recipes.wav2vec2.cli import add_beam_search_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("transcribe", help="speech -> text (files, folders, manifests or a live stream)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="AUDIO", help="audio files, folders, .tsv manifests, or - (stdin PCM)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a `seqwin train asr` output (dir or model.pt), a fairseq2 / fairseq (v1) wav2vec2 CTC "
                        "checkpoint, or a Hugging Face Wav2Vec2ForCTC folder")
    p.add_argument("-o", "--out", metavar="OUT", help="output file (txt, json) or folder (srt); default stdout")
    p.add_argument("--format", choices=("txt", "json", "srt"), default="txt", help="default txt")
    p.add_argument("--chunk-seconds", type=float, default=30.0,
                   help="audio per encoder call (default 30; 0: whole files at once)")
    p.add_argument("--context-seconds", type=float, default=5.0,
                   help="dense/routing models only: context per side of a chunk (default 5; approximate)")
    p.add_argument("--step-seconds", type=float, default=1.0,
                   help="streaming: final audio between partial hypotheses (default 1)")
    p.add_argument("--normalize", action="store_true",
                   help="zero-mean unit-variance waveforms per input (models trained with data.normalize; "
                        "detected from a recipe run's config.yaml)")
    p.add_argument("--strict", action="store_true", help="stop at the first unusable input instead of skipping")
    p.add_argument("--dict", metavar="DICT", help="dict.ltr.txt for checkpoints that carry no vocabulary")
    p.add_argument("--window", metavar="L,R",
                   help="decode with sliding-window attention of L,R frames in every layer (or 'full')")
    p.add_argument("--heads", type=int, help="attention heads of an imported checkpoint whose config does not say")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_beam_search_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from seqwin.recipes.wav2vec2.transcribe import run

    return run(args)
