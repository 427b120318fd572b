#!/usr/bin/env bash
# One GPU run that gathers what the attention kernels need measured on Hopper, within one device call (~8 min):
#   1. the GPU-only tests of the Triton routing path (no host sync, CUDA graph capture, the large grids)
#   2. tools/tune_sw_kernels.py --quick: block-size winners per kernel, default vs tuned vs FlexAttention
#   3. tools/bench_decode.py: ring-buffer window cache vs full KV cache, contexts 4k/32k/128k, batch 1/16
# Every step has its own time limit and writes into OUT, flat, in 8 files at most (what a device run brings back):
# env.txt, tests.txt, log.txt (the tools' output), tune.json/.md, decode.json/.md/.png.
#
#   bash tools/gpu_session.sh OUT
#
# The GPU image has torch and Triton but not seqwin or fairseq2; seqwin's attention core needs neither installed:
# a folder of links puts the repo's seqwin/ and kernels/ (as seqwin.kernels) on PYTHONPATH without pip.
set -u
[[ $# -eq 1 ]] || { echo "usage: gpu_session.sh OUT" >&2; exit 2; }
out="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 1
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="$(command -v python || command -v python3)"
# Everything runs from the overlay's folder, so neither a script's folder nor the working directory puts the
# repo's own (uninstalled) seqwin/ ahead of the overlay.
site="$(mktemp -d)"
mkdir -p "$site/seqwin"
for entry in "$repo"/seqwin/*; do ln -s "$entry" "$site/seqwin/"; done
ln -s "$repo/kernels" "$site/seqwin/kernels"
export PYTHONPATH="$site:$repo/tests:$repo/tools"
unset TRITON_INTERPRET
cd "$site" || exit 1

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$out/env.txt" 2>&1

# --noconftest: tests/conftest.py wants the audio stack (numpy, soundfile), which the GPU image lacks.
timeout 180 "$py" -m pytest -q -p no:cacheprovider --noconftest --rootdir "$repo" -x \
  "$repo/tests/test_triton_routing.py" -k "gpu" > "$out/tests.txt" 2>&1
echo "rc=$?" >> "$out/tests.txt"
timeout 240 "$py" "$repo/tools/tune_sw_kernels.py" --quick --out "$out" > "$out/log.txt" 2>&1
echo "tune_sw_kernels rc=$?" >> "$out/log.txt"
timeout 150 "$py" "$repo/tools/bench_decode.py" --device cuda --out "$out" >> "$out/log.txt" 2>&1
echo "bench_decode rc=$?" >> "$out/log.txt"
ls -la "$out"
