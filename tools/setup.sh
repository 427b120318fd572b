#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages, the .venv, pinned Python dependencies, seqwin itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# System libraries: libsndfile for fairseq2n/soundfile; dpkg-deb/apt-get download are used by `seqwin prepare mini`.
need_apt=()
ldconfig -p | grep -q "libsndfile.so.1" || need_apt+=(libsndfile1)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need_apt[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "setup: seqwin needs Python 3.11 (found $("$PYTHON" --version))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip's own exit status survives the filter (pipefail); the filter only drops pip's warnings about index locations
# that do not exist.
pipi() { .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
# torch comes first and alone: the PyPI build pinned by fairseq2n (large, cached by pip after the first time).
pipi torch==2.9.1 torchaudio==2.9.1
pipi -e ".[dev]"
.venv/bin/python -c "import seqwin, fairseq2, torch; print(f'setup: seqwin {seqwin.__version__}, torch {torch.__version__}, fairseq2 {fairseq2.__version__} ready in .venv')"
