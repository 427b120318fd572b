#!/usr/bin/env bash
# Mini recipe: real speech (Asterisk prompts, ~24 min, CC-BY-SA-3.0) + Shakespeare text, end to end.
#
#   egs/mini/run.sh [--stage N] [--stop-stage M] [--data DIR]      (DIR default: ./data, relative to cwd)
#
# Stages (each can be re-run on its own):
#   1  seqwin prepare mini        -> $data/mini/LibriSpeech/{train,dev,test}   (skips if already complete)
#   2  seqwin prepare librispeech -> $data/mini/manifests/{train,dev,test}.{tsv,wrd,ltr}, dict.ltr.txt
#   3  seqwin prepare text        -> $data/text/{train,valid,test}.txt
#   4-8 wav2vec2 SSL -> CTC -> eval -> curves -> table; 9-14 codec; 15 transcribe; 20-23 LMs (each block
#   documents its stages). Stages from 30 on are longer benchmarks, run only when asked: --stage 30
set -euo pipefail

stage=1
stop_stage=29
data=data

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
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

# ---- wav2vec 2.0 with windowed attention (stages 4-8) -> exp/wav2vec2 ----------------------------------------
# 4 seqwin train ssl (recipes/wav2vec2/ssl/mini.yaml): masked unit prediction (HuBERT-style) on the train split
# 5 seqwin train asr (recipes/wav2vec2/asr/mini.yaml): CTC on letters, encoder initialized from stage 4
#   (stages 4/5 are skipped once their model.pt exists; an interrupted run resumes from its checkpoints)
# 6 seqwin eval asr on the test split, as trained (sliding window) and with the attention swapped to dense
#   and to a narrow window (what `seqwin windowize` does), to show the WER change; and beam search with a
#   3-gram word LM estimated from the train transcripts (flashlight-text)
# 7 learning curves -> exp/wav2vec2/curves.png      8 the final table (also in exp/wav2vec2/report.txt)
# W2V_SSL_SET / W2V_ASR_SET: extra space-separated config overrides, e.g. W2V_ASR_SET="trainer.max_seconds=1200"
w2v_exp=exp/wav2vec2
w2v_ssl_set=()
for kv in ${W2V_SSL_SET:-}; do w2v_ssl_set+=(--set "$kv"); done
w2v_asr_set=()
for kv in ${W2V_ASR_SET:-}; do w2v_asr_set+=(--set "$kv"); done
w2v_python="$(dirname "$seqwin")/python"
[[ -x "$w2v_python" ]] || w2v_python=python3
w2v_timed() {  # w2v_timed NAME CMD...: run CMD, append "NAME<TAB>seconds" to timings.tsv
  local name=$1 start=$SECONDS
  shift
  "$@"
  mkdir -p "$w2v_exp"
  printf '%s\t%d\n' "$name" $((SECONDS - start)) >> "$w2v_exp/timings.tsv"
}

if run_stage 4; then
  log 4 "wav2vec2 SSL pretraining -> $w2v_exp/ssl"
  if [[ -f "$w2v_exp/ssl/model.pt" ]]; then
    log 4 "$w2v_exp/ssl/model.pt exists; skipping (delete it to retrain)"
  else
    w2v_timed ssl "$seqwin" train ssl --config "$repo_root/recipes/wav2vec2/ssl/mini.yaml" \
      --set "data.manifest_dir=$data/mini/manifests" ${w2v_ssl_set[@]+"${w2v_ssl_set[@]}"} "$w2v_exp/ssl"
  fi
fi

if run_stage 5; then
  log 5 "wav2vec2 CTC fine-tuning -> $w2v_exp/asr"
  if [[ -f "$w2v_exp/asr/model.pt" ]]; then
    log 5 "$w2v_exp/asr/model.pt exists; skipping (delete it to retrain)"
  else
    w2v_timed ctc "$seqwin" train asr --config "$repo_root/recipes/wav2vec2/asr/mini.yaml" \
      --set "data.manifest_dir=$data/mini/manifests" --set "init.ssl_checkpoint=$w2v_exp/ssl/model.pt" \
      ${w2v_asr_set[@]+"${w2v_asr_set[@]}"} "$w2v_exp/asr"
  fi
fi

if run_stage 6; then
  log 6 "wav2vec2 evaluation on $data/mini/manifests/test.tsv -> $w2v_exp/eval_*"
  w2v_timed eval "$seqwin" eval asr --checkpoint "$w2v_exp/asr/model.pt" \
    --data "$data/mini/manifests/test.tsv" "$w2v_exp/eval_test"
  "$seqwin" eval asr --checkpoint "$w2v_exp/asr/model.pt" --window full \
    --data "$data/mini/manifests/test.tsv" "$w2v_exp/eval_test_dense"
  "$seqwin" eval asr --checkpoint "$w2v_exp/asr/model.pt" --window=4,4 \
    --data "$data/mini/manifests/test.tsv" "$w2v_exp/eval_test_window4"
  "$seqwin" eval asr --checkpoint "$w2v_exp/asr/model.pt" --lm "$data/mini/manifests/train.wrd" \
    --data "$data/mini/manifests/test.tsv" "$w2v_exp/eval_test_lm"
fi

if run_stage 7; then
  log 7 "wav2vec2 learning curves -> $w2v_exp/curves.png"
  "$w2v_python" -m seqwin.recipes.wav2vec2.report --ssl "$w2v_exp/ssl" --asr "$w2v_exp/asr" \
    --png "$w2v_exp/curves.png" > /dev/null
fi

if run_stage 8; then
  log 8 "wav2vec2 results"
  w2v_evals=("$w2v_exp/eval_test" "$w2v_exp/eval_test_lm" "$w2v_exp/eval_test_dense" "$w2v_exp/eval_test_window4")
  "$w2v_python" -m seqwin.recipes.wav2vec2.report --ssl "$w2v_exp/ssl" --asr "$w2v_exp/asr" \
    --eval "${w2v_evals[@]}" --timings "$w2v_exp/timings.tsv" | tee "$w2v_exp/report.txt"
fi

# ---- speech codec (stages 9-14): FuseCodec-Distill, demo size, streaming (causal) -> exp/codec -------------
# 9  the contextual teacher's text encoder: the LM tokenizer (shared with stage 20) and a text LM
#    (recipes/lm/mini.yaml on Shakespeare, ~1 min) -> exp/codec/text_lm
# 10 seqwin train codec (recipes/codec/mini.yaml, 10 min budget) with both teachers trained here: semantic = the
#    stage-4 wav2vec2 (its model_dim, 256, is the teacher_dim), contextual = the stage-9 LM over the transcripts;
#    skipped once exp/codec/codec.pt exists
# 11 seqwin tokenize the test split -> exp/codec/tokens/test (codes/<id>.npy int16 (8, frames) + index)
# 12 seqwin detokenize those codes -> exp/codec/detok/test/<id>.wav
# 13 seqwin eval codec on the test split -> exp/codec/eval_test (metrics.json, index.html listening report);
#    pocketsphinx WER runs on the first $codec_asr_utts utterances (CODEC_ASR_UTTS, default 20) to fit the budget
# 14 table of the measured codec metrics
codec_exp=exp/codec
codec_asr_utts="${CODEC_ASR_UTTS:-20}"
lm_exp=exp/lm
# One torch thread: these models are tiny, and with two threads a busy 2-core machine stalls in thread barriers
# (measured: 1.4 s vs 4.9 s per 4096-token step under load); LM_THREADS=0 lets torch choose.
lm_threads="${LM_THREADS:-1}"

train_lm_tokenizer() {  # stage 9 and 20: one SentencePiece model (1024 pieces) for every text LM
  if [[ -f "$lm_exp/tokenizer/tokenizer.json" ]]; then
    echo "$lm_exp/tokenizer: already trained"
  else
    "$seqwin" train tokenizer "$lm_exp/tokenizer" --text "$data/text/train.txt" --vocab-size 1024 \
      --max-sentences 60000
  fi
}

if run_stage 9; then
  log 9 "text encoder for the codec's contextual teacher -> $codec_exp/text_lm"
  train_lm_tokenizer
  # resumes from its last checkpoint, and says "nothing to do" once trained
  "$seqwin" train lm --config "$repo_root/recipes/lm/mini.yaml" "$codec_exp/text_lm" \
    --set "data.dir=$data/text" --set "tokenizer.model=$lm_exp/tokenizer" --threads "$lm_threads"
fi

if run_stage 10; then
  log 10 "train codec -> $codec_exp"
  if [[ -f "$codec_exp/codec.pt" ]]; then
    echo "$codec_exp: already trained (codec.pt exists; delete it to train on)"
  else
    "$seqwin" train codec --config "$repo_root/recipes/codec/mini.yaml" "$codec_exp" \
      --set "data.manifest_dir=$data/mini/manifests" --set "teachers.text_encoder=$codec_exp/text_lm" \
      --set "teachers.semantic_checkpoint=$w2v_exp/ssl/model.pt" --set model.teacher_dim=256
  fi
fi

if run_stage 11; then
  log 11 "tokenize test -> $codec_exp/tokens/test"
  "$seqwin" tokenize "$data/mini/manifests/test.tsv" -o "$codec_exp/tokens/test" --checkpoint "$codec_exp"
fi

if run_stage 12; then
  log 12 "detokenize -> $codec_exp/detok/test"
  "$seqwin" detokenize "$codec_exp/tokens/test" -o "$codec_exp/detok/test" --checkpoint "$codec_exp"
fi

if run_stage 13; then
  log 13 "evaluate codec on test -> $codec_exp/eval_test (pocketsphinx on $codec_asr_utts utterances)"
  "$seqwin" eval codec --checkpoint "$codec_exp" --data "$data/mini/manifests/test.tsv" \
    -o "$codec_exp/eval_test" --asr-utterances "$codec_asr_utts"
fi

if run_stage 14; then
  log 14 "codec metrics (mini test split)"
  python3 - "$codec_exp" <<'PY'
import json, sys
exp = sys.argv[1]
s = json.load(open(f"{exp}/eval_test/metrics.json"))["summary"]
f = lambda v, p=3: "n/a" if v is None else f"{v:.{p}f}"
print(f"  utterances {s['utterances']} ({s['audio_seconds']:.0f} s)  bitrate {s['bitrate_bps']:.0f} bps")
print(f"  PESQ {f(s['pesq'], 2)}  STOI {f(s['stoi'])}  mel distance {f(s['mel_distance'])}  "
      f"SI-SNR {f(s['si_snr'], 1)} dB  codec RTF {f(s['codec_rtf'])}")
print("  codebook usage " + " ".join(f"{u:.2f}" for u in s["codebook_usage"]))
print(f"  pocketsphinx WER on {s['asr_utterances']} utterances: original {f(s['wer_original'])}, "
      f"reconstructed {f(s['wer_reconstructed'])}")
print(f"  listening report: {exp}/eval_test/index.html")
PY
fi

# ---- transcription (stage 15): seqwin transcribe with the stage-5 CTC model -> exp/wav2vec2/transcribe --------
# 15 the longest test utterance as a file (text, JSON word times, SRT), then streamed through stdin as raw 16-bit
#    PCM: partial hypotheses appear on stderr as audio arrives (the pipe delivers it faster than real time, so the
#    lag shown is the model's right context, not a wall-clock delay), and the final text must equal the file's
tr_exp="$w2v_exp/transcribe"

if run_stage 15; then
  log 15 "transcribe a test utterance with $w2v_exp/asr -> $tr_exp"
  mkdir -p "$tr_exp"
  tr_file="$("$w2v_python" - "$data/mini/manifests/test.tsv" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
rows = [line.split("\t") for line in lines[1:] if line.strip()]
print(f"{lines[0]}/{max(rows, key=lambda r: int(r[1]))[0]}")
PY
)"
  "$seqwin" transcribe "$tr_file" --checkpoint "$w2v_exp/asr/model.pt" --format json -o "$tr_exp/file.jsonl"
  "$seqwin" transcribe "$tr_file" --checkpoint "$w2v_exp/asr/model.pt" --format srt -o "$tr_exp/srt"
  "$w2v_python" -c 'import sys, soundfile as sf; sys.stdout.buffer.write(sf.read(sys.argv[1], dtype="int16")[0].tobytes())' \
    "$tr_file" | "$seqwin" transcribe - --checkpoint "$w2v_exp/asr/model.pt" --step-seconds 0.5 --format json \
    -o "$tr_exp/stream.json"
  "$w2v_python" - "$tr_exp" <<'PY'
import json, sys
exp = sys.argv[1]
file, stream = json.loads(open(f"{exp}/file.jsonl").readline()), json.loads(open(f"{exp}/stream.json").read())
s = stream["streaming"]
print(f"  {file['source']} ({file['duration']:.1f} s): {file['text']}")
print("  words: " + " ".join(f"{w['word']}@{w['start']:.2f}-{w['end']:.2f}" for w in file["words"][:8]) + " ...")
print(f"  streaming: right context {s['right_context_s']:.3f} s; partial text lagged the audio by "
      f"{s['lag_mean_s']} s on average, {s['lag_max_s']} s at most ({s['updates']} updates)")
print(f"  final streamed text {'equals' if stream['text'] == file['text'] else 'DIFFERS FROM'} the file's")
sys.exit(0 if stream["text"] == file["text"] else 1)
PY
fi

# ---- language models (stages 20-23): tiny full / local / routing / pooled LMs on Shakespeare, equal steps -----
# 20 SentencePiece tokenizer (1024 pieces) -> exp/lm/tokenizer
# 21 seqwin train lm (recipes/lm/mini.yaml, 4096-token sequences) as full / local / routing / pooled, then
#    seqwin eval lm on the test split at context 4096; prints the perplexities side by side
# 22 seqwin generate from the routing LM (constant-memory caches); WindowKV loss vs budget on the full LM
# 23 speech continuation: seqwin tokenize the mini corpus with the codec at $lm_codec_ckpt (set LM_CODEC_CKPT;
#    skipped if absent), train the same LM on 2 RVQ levels of codes, continue a test prompt, seqwin detokenize
lm_codec_ckpt="${LM_CODEC_CKPT:-$codec_exp/codec.pt}"  # stage 10 output
lm_variants=(full local routing pooled)
declare -A lm_attention=(
  [full]='{default: {kind: full}}'
  [local]='{default: {kind: local, window: [255, 0]}}'
  [routing]=''   # recipes/lm/mini.yaml as written: local layers + local/routing heads in the top layer
  # local layers + local/pooled heads in the top layer: the pooled heads see their window and the means of the
  # earlier 64-token blocks (local + coarse global context; no parameters beyond the others')
  [pooled]='{default: {kind: local, window: [255, 0]}, top: {kind: mixed, local_heads: 2, pooled_heads: 2,
            window: [255, 0], pool_size: 64}, num_top_layers: 1}'
)

if run_stage 20; then
  log 20 "LM tokenizer -> $lm_exp/tokenizer"
  train_lm_tokenizer
fi

train_eval_lm() {  # train_eval_lm STAGE OUT ATTENTION [--set k=v ...]: recipes/lm/mini.yaml, then test ppl at 4096
  local st=$1 out=$2 attention=$3
  shift 3
  local sets=(--set "data.dir=$data/text" --set "tokenizer.model=$lm_exp/tokenizer" "$@")
  [[ -n "$attention" ]] && sets+=(--set "model.attention=$attention")
  log "$st" "train LM -> $out"
  "$seqwin" train lm --config "$repo_root/recipes/lm/mini.yaml" "$out" "${sets[@]}" --threads "$lm_threads"
  "$seqwin" eval lm "$out" --split test --context 4096 --max-tokens 32768 --json "$out/test.json" \
    --threads "$lm_threads"
}

print_ppl_table() {  # print_ppl_table DIR VARIANT...: DIR/VARIANT/test.json side by side
  python3 - "$@" <<'PY'
import json, sys
exp, variants = sys.argv[1], sys.argv[2:]
print(f"  {'model':<8} {'step':>5} {'tokens':>7} {'ppl/token':>10} {'bits/byte':>10} {'ppl/byte':>9}")
for v in variants:
    r = json.load(open(f"{exp}/{v}/test.json"))
    print(f"  {v:<8} {r['step']:>5} {int(r['tokens']):>7} {r['ppl']:>10.2f} {r['bits_per_byte']:>10.3f}"
          f" {r['byte_ppl']:>9.3f}")
PY
}

if run_stage 21; then
  for v in "${lm_variants[@]}"; do
    train_eval_lm 21 "$lm_exp/$v" "${lm_attention[$v]}"
  done
  log 21 "test perplexity at context 4096 after equal steps:"
  print_ppl_table "$lm_exp" "${lm_variants[@]}"
fi

if run_stage 22; then
  log 22 "sample from the routing LM"
  "$seqwin" generate "$lm_exp/routing" --prompt "ROMEO:" --max-new-tokens 120 --temperature 0.8 --top-p 0.9 \
    --threads "$lm_threads" --output "$lm_exp/routing/sample.txt"
  log 22 "WindowKV on the full LM: held-out loss vs KV budget"
  "$seqwin" eval lm "$lm_exp/full" --split test --windowkv 1,0.5,0.25,0.12 --prompt-len 2048 \
    --continuation-len 256 --num-prompts 4 --threads "$lm_threads"
fi

if run_stage 23; then
  if [[ ! -e "$lm_codec_ckpt" ]]; then
    log 23 "no codec checkpoint at $lm_codec_ckpt (train the codec, or LM_CODEC_CKPT=...); skipping the speech LM"
  else
    for split in train dev test; do
      if [[ -f "$lm_exp/codes/$split/index.json" ]]; then
        echo "$lm_exp/codes/$split: already tokenized"
      else
        log 23 "codes of $split -> $lm_exp/codes/$split"
        "$seqwin" tokenize "$data/mini/manifests/$split.tsv" -o "$lm_exp/codes/$split" \
          --checkpoint "$lm_codec_ckpt" --num-quantizers 2 --threads "$lm_threads"
      fi
    done
    log 23 "speech LM -> $lm_exp/speech"
    "$seqwin" train lm --config "$repo_root/recipes/lm/mini_speech.yaml" "$lm_exp/speech" \
      --set "data.dir=$lm_exp/codes" --threads "$lm_threads"
    "$seqwin" eval lm "$lm_exp/speech" --split test --threads "$lm_threads"
    prompt="$(python3 -c 'import json, sys; i = json.load(open(sys.argv[1] + "/index.json"))
print(sys.argv[1] + "/" + max(i["utterances"], key=lambda u: u["num_frames"])["codes"])' "$lm_exp/codes/test")"
    log 23 "continue the first 2 s of $prompt by 3 s, then decode to audio"
    "$seqwin" generate "$lm_exp/speech" --prompt-codes "$prompt" --prompt-frames 100 --max-new-tokens 300 \
      --temperature 0.9 --top-k 50 --threads "$lm_threads" --output "$lm_exp/speech/continuation.npy"
    "$seqwin" detokenize "$lm_exp/speech/continuation.npy" -o "$lm_exp/speech/wav" --checkpoint "$lm_codec_ckpt"
    echo "listen: $lm_exp/speech/wav/continuation.wav (2 s prompt, then up to 3 s generated: sampling may end early)"
  fi
fi

wait_all() {  # wait_all STAGE LOGS PID...: wait for the stage's background runs; stop if one failed
  local st=$1 logs=$2 pid
  shift 2
  for pid in "$@"; do
    wait "$pid" || { echo "run.sh: stage $st: a background run failed (see $logs)" >&2; exit 1; }
  done
}

# ---- routing where content is far away (stage 30; about 1.5 h on 2 cores, not part of `make demo`) ------------
# 30 tools/lm_recall.py: associative recall with the answer up to 16 local windows back; the same 2-layer LM
#    trained as full / local / routing / mixed / pooled, two layouts at a time (one per core), then merged and
#    timed side by side at 8192 tokens -> exp/lm/recall/lm_recall.{json,png} (accuracy per distance, step time
#    vs full); RECALL_STEPS (default 4000) sets the training steps
if run_stage 30; then
  recall_args=(--seq-len 256 --window 16 --pairs 32 --values 16 --fused --shared-qk --heads 8
               --steps "${RECALL_STEPS:-4000}" --cost-len 0)
  mkdir -p "$lm_exp/recall"
  recall_jsons=()
  pids=()
  for layouts in "routing local" "mixed full pooled"; do
    out="$lm_exp/recall/${layouts// /_}"
    recall_jsons+=("$out/lm_recall.json")
    log 30 "train $layouts -> $out (log: $out.log)"
    OMP_NUM_THREADS=1 "$w2v_python" "$repo_root/tools/lm_recall.py" "${recall_args[@]}" --layouts $layouts \
      --out "$out" > "$out.log" 2>&1 &
    pids+=($!)
  done
  wait_all 30 "$lm_exp/recall/*.log" "${pids[@]}"
  log 30 "merge and time the layouts side by side -> $lm_exp/recall"
  "$w2v_python" "$repo_root/tools/lm_recall.py" --merge "${recall_jsons[@]}" --cost-len 8192 --out "$lm_exp/recall"
fi

# 31 (not in `make demo`: about 35 min on 2 cores) the stage-21 LM at context 4096 with 10x its steps (500 x 4096
#    tokens, bf16 where the CPU has it) as full / local / routing (every layer) / mixed (2 local + 2 routing heads in
#    every layer), two at a time -> exp/lm/long/<variant>; the test perplexities side by side. Needs stage 20;
#    LM_LONG_STEPS (default 500) sets the steps
if run_stage 31; then
  routing_heads='num_clusters: 8, routing_window: 256, shared_qk: true'
  declare -A long_attention=(
    [full]='{default: {kind: full}}'
    [local]='{default: {kind: local, window: [255, 0]}}'
    [routing]="{default: {kind: routing, $routing_heads}}"
    [mixed]="{default: {kind: mixed, local_heads: 2, routing_heads: 2, window: [255, 0], $routing_heads}}"
  )
  steps="${LM_LONG_STEPS:-500}"
  long_steps=(--set "trainer.max_steps=$steps" --set "trainer.warmup_steps=$((steps / 20))"
              --set "trainer.checkpoint_every=$(((steps + 4) / 5))")
  mkdir -p "$lm_exp/long"
  pids=()
  for lane in "full routing" "local mixed"; do
    (for v in $lane; do
       train_eval_lm 31 "$lm_exp/long/$v" "${long_attention[$v]}" "${long_steps[@]}" > "$lm_exp/long/$v.log" 2>&1
     done) &
    pids+=($!)
  done
  wait_all 31 "$lm_exp/long/*.log" "${pids[@]}"
  log 31 "test perplexity at context 4096 after $steps steps:"
  print_ppl_table "$lm_exp/long" full local routing mixed
fi

log done "finished stages $stage..$stop_stage"
