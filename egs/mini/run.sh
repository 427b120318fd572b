#!/usr/bin/env bash
# Mini recipe: real speech (Asterisk prompts, ~24 min, CC-BY-SA-3.0) + Shakespeare text, end to end.
#
#   egs/mini/run.sh [--stage N] [--stop-stage M] [--data DIR]      (DIR default: ./data, relative to cwd)
#
# Stages (each can be re-run on its own):
#   1  seqwin prepare mini        -> $data/mini/LibriSpeech/{train,dev,test}   (skips if already complete)
#   2  seqwin prepare librispeech -> $data/mini/manifests/{train,dev,test}.{tsv,wrd,ltr}, dict.ltr.txt
#   3  seqwin prepare text        -> $data/text/{train,valid,test}.txt
#   4+ training / evaluation: added by the model work (see the marked place below)
set -euo pipefail

stage=1
stop_stage=100
data=data

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage="${2:?--stage needs a value}"; shift 2 ;;
    --stop-stage|--stop_stage) stop_stage="${2:?--stop-stage needs a value}"; shift 2 ;;
    --data) data="${2:?--data needs a value}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "run.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$stage" "$stop_stage"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "run.sh: error: stages must be integers, got '$v'" >&2; exit 2; }
done

# Prefer the repository's virtual environment; fall back to whatever seqwin is on PATH.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -x "$repo_root/.venv/bin/seqwin" ]]; then
  seqwin="$repo_root/.venv/bin/seqwin"
else
  seqwin="$(command -v seqwin)" || { echo "run.sh: error: seqwin not found (.venv missing, not on PATH)" >&2; exit 2; }
fi

run_stage() { [[ "$stage" -le "$1" && "$stop_stage" -ge "$1" ]]; }
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }

if run_stage 1; then
  log 1 "mini corpus -> $data/mini"
  "$seqwin" prepare mini "$data/mini"
fi

if run_stage 2; then
  log 2 "manifests -> $data/mini/manifests"
  "$seqwin" prepare librispeech "$data/mini/LibriSpeech" "$data/mini/manifests"
fi

if run_stage 3; then
  log 3 "Shakespeare text -> $data/text"
  "$seqwin" prepare text shakespeare "$data/text"
fi

# ---------------------------------------------------------------------------------------------------------
# Stage 4 onwards (training, decoding, scoring) goes here, numbered and guarded like the stages above:
#   if run_stage 4; then log 4 "..."; ...; fi
# Inputs available at this point: $data/mini/manifests/{train,dev,test}.{tsv,ltr,wrd}, dict.ltr.txt
# and $data/text/{train,valid,test}.txt.
# ---------------------------------------------------------------------------------------------------------

log done "finished stages $stage..$stop_stage"
