#!/usr/bin/env bash
# wav2vec 2.0 with windowed attention on LibriSpeech: prepare -> SSL pretraining -> CTC fine-tuning -> evaluation.
#
#   egs/librispeech/run.sh --librispeech /path/to/LibriSpeech [--stage N] [--stop-stage M] [--exp DIR]
#       [--ssl-config YAML] [--asr-config YAML] [--ssl-splits "S1 S2 .."] [--ctc-split S] [--eval-splits "S1 .."]
#       [--ssl-set KEY=VALUE]... [--asr-set KEY=VALUE]... [--nproc N]
#
# Stages:
#   1  seqwin prepare librispeech   -> $exp/manifests/<split>.{tsv,wrd,ltr}, dict.ltr.txt (every split found)
#   2  pretraining manifest          -> $exp/manifests/train960.tsv (the --ssl-splits, concatenated)
#   3  seqwin train ssl              -> $exp/ssl    (recipes/wav2vec2/ssl/base_960h.yaml; resumes if interrupted)
#   4  seqwin train asr              -> $exp/asr    (recipes/wav2vec2/asr/base_100h.yaml, on --ctc-split)
#   5  seqwin eval asr               -> $exp/eval   (greedy CTC on --eval-splits: WER/CER per split)
#   6  report                        -> $exp/report.txt, $exp/curves.png
# Defaults are the paper's Base setup and need GPUs (--nproc GPUs per node through torchrun); the configs
# document every difference from fairseq's recipes. Each stage can be re-run on its own.
set -euo pipefail

stage=1
stop_stage=100
librispeech=""
exp=exp/librispeech
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ssl_config="$repo_root/recipes/wav2vec2/ssl/base_960h.yaml"
asr_config="$repo_root/recipes/wav2vec2/asr/base_100h.yaml"
ssl_splits="train-clean-100 train-clean-360 train-other-500"
ctc_split=train-clean-100
eval_splits="dev-clean dev-other test-clean test-other"
nproc=1
ssl_set=()
asr_set=()

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage="${2:?--stage needs a value}"; shift 2 ;;
    --stop-stage|--stop_stage) stop_stage="${2:?--stop-stage needs a value}"; shift 2 ;;
    --librispeech) librispeech="${2:?--librispeech needs a path}"; shift 2 ;;
    --exp) exp="${2:?--exp needs a value}"; shift 2 ;;
    --ssl-config) ssl_config="${2:?}"; shift 2 ;;
    --asr-config) asr_config="${2:?}"; shift 2 ;;
    --ssl-splits) ssl_splits="${2:?}"; shift 2 ;;
    --ctc-split) ctc_split="${2:?}"; shift 2 ;;
    --eval-splits) eval_splits="${2:?}"; shift 2 ;;
    --ssl-set) ssl_set+=(--set "${2:?}"); shift 2 ;;
    --asr-set) asr_set+=(--set "${2:?}"); shift 2 ;;
    --nproc) nproc="${2:?}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "run.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$stage" "$stop_stage" "$nproc"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "run.sh: error: stages and --nproc must be integers, got '$v'" >&2; exit 2; }
done

if [[ -x "$repo_root/.venv/bin/seqwin" ]]; then
  seqwin="$repo_root/.venv/bin/seqwin"
else
  seqwin="$(command -v seqwin)" || { echo "run.sh: error: seqwin not found (.venv missing, not on PATH)" >&2; exit 2; }
fi
python="$(dirname "$seqwin")/python"
[[ -x "$python" ]] || python=python3

run_stage() { [[ "$stage" -le "$1" && "$stop_stage" -ge "$1" ]]; }
log() { echo "$(date +%H:%M:%S) [stage $1] ${*:2}"; }
manifests="$exp/manifests"

train() {  # train TASK ARGS...: one process, or torchrun with --nproc workers
  if [[ "$nproc" -gt 1 ]]; then
    "$python" -m torch.distributed.run --nproc-per-node "$nproc" -m seqwin.cli.main train "$@"
  else
    "$seqwin" train "$@"
  fi
}

if run_stage 1; then
  [[ -n "$librispeech" ]] || { echo "run.sh: error: stage 1 needs --librispeech /path/to/LibriSpeech" >&2; exit 2; }
  log 1 "manifests of $librispeech -> $manifests"
  "$seqwin" prepare librispeech "$librispeech" "$manifests"
fi

if run_stage 2; then
  log 2 "pretraining manifest ($ssl_splits) -> $manifests/train960.tsv"
  first=""
  for split in $ssl_splits; do
    [[ -f "$manifests/$split.tsv" ]] || { echo "run.sh: error: $manifests/$split.tsv missing (stage 1)" >&2; exit 2; }
    root="$(head -n 1 "$manifests/$split.tsv")"
    [[ -z "$first" || "$root" == "$first" ]] || { echo "run.sh: error: manifests have different roots" >&2; exit 2; }
    first="$root"
  done
  {
    echo "$first"
    for split in $ssl_splits; do tail -n +2 "$manifests/$split.tsv"; done
  } > "$manifests/train960.tsv.tmp"
  mv "$manifests/train960.tsv.tmp" "$manifests/train960.tsv"
fi

if run_stage 3; then
  log 3 "SSL pretraining -> $exp/ssl"
  if [[ -f "$exp/ssl/model.pt" ]]; then
    log 3 "$exp/ssl/model.pt exists; skipping"
  else
    train ssl --config "$ssl_config" --set "data.manifest_dir=$manifests" --set data.train_split=train960 \
      ${ssl_set[@]+"${ssl_set[@]}"} "$exp/ssl"
  fi
fi

if run_stage 4; then
  log 4 "CTC fine-tuning on $ctc_split -> $exp/asr"
  if [[ -f "$exp/asr/model.pt" ]]; then
    log 4 "$exp/asr/model.pt exists; skipping"
  else
    train asr --config "$asr_config" --set "data.manifest_dir=$manifests" --set "data.train_split=$ctc_split" \
      --set "init.ssl_checkpoint=$exp/ssl/model.pt" ${asr_set[@]+"${asr_set[@]}"} "$exp/asr"
  fi
fi

if run_stage 5; then
  log 5 "evaluation on $eval_splits -> $exp/eval"
  eval_data=()
  for split in $eval_splits; do eval_data+=("$manifests/$split.tsv"); done
  "$seqwin" eval asr --checkpoint "$exp/asr/model.pt" --data "${eval_data[@]}" "$exp/eval"
fi

if run_stage 6; then
  log 6 "report -> $exp/report.txt"
  "$python" -m seqwin.recipes.wav2vec2.report --ssl "$exp/ssl" --asr "$exp/asr" --eval "$exp/eval" \
    --png "$exp/curves.png" | tee "$exp/report.txt"
fi

log done "finished stages $stage..$stop_stage"
