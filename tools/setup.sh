#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages, the .venv, pinned Python dependencies, seqwin itself.
#   bash tools/setup.sh                everything (what `make setup` runs)
#   bash tools/setup.sh --dry-run      say which system packages are missing and the apt-get command, install nothing
#   bash tools/setup.sh --system-only  install the missing system packages, then stop (e.g. as root in an image build)
set -euo pipefail

mode=all
case "${1:-}" in
  "") ;;
  --dry-run) mode=dry-run ;;
  --system-only) mode=system-only ;;
  *) echo "setup: unknown option '$1' (use --dry-run or --system-only)" >&2; exit 2 ;;
esac

fail() { echo "setup: $*" >&2; exit 1; }

# Python 3.11 only: the one version where every pinned dependency installs from a manylinux wheel except pesq
# (fairseq2n 0.8.1 and flashlight-text 0.0.7 have no cp313 wheel, pocketsphinx 5.1.1 has no cp312 wheel).
# pesq 0.0.4 ships only an sdist, so pip compiles it: that needs a C compiler and Python.h (its numpy and Cython
# come from pip's build isolation). Debian splits Python so that `-m venv` also needs python3.11-venv (ensurepip).
# One interpreter call answers all of it: version, ensurepip, Python.h, and the compiler setuptools will call
# (CC, else the one Python was built with: x86_64-linux-gnu-gcc for Debian's python3.11, from the gcc package).
PROBE='import importlib.util, os, sys, sysconfig
headers = os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
print(sys.version.split()[0], importlib.util.find_spec("ensurepip") is not None, headers, cc)'

# Sets py (a Python 3.11 interpreter, or empty), other_python (what was found instead), compiler, need (Debian
# packages to install) and why (what is missing, for the messages). Reads the machine only; called again after apt-get.
detect() {
  need=(); why=(); py=""; other_python=""; compiler=gcc
  local ldconfig candidates=(python3.11 python3) c out version ensurepip headers cc
  # ldconfig lives in /sbin, which a normal user's PATH may lack.
  ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
  [[ $("$ldconfig" -p 2>/dev/null) == *libsndfile.so.1* ]] || { need+=(libsndfile1); why+=("libsndfile.so.1"); }

  [ -z "${PYTHON:-}" ] || candidates=("$PYTHON")
  for c in "${candidates[@]}"; do
    command -v "$c" >/dev/null || continue
    out=$("$c" -c "$PROBE" 2>/dev/null) || continue  # e.g. a pyenv shim for a version that is not installed
    read -r version ensurepip headers cc <<<"$out"
    if [[ $version == 3.11.* ]]; then py=$c; compiler=$cc; break; fi
    other_python="$c is Python $version"
  done
  if [ -n "${PYTHON:-}" ] && [ -z "$py" ]; then
    [ -n "$other_python" ] || fail "PYTHON=$PYTHON was not found or does not run; seqwin needs Python 3.11"
    fail "seqwin needs Python 3.11, but PYTHON=$PYTHON is Python ${other_python##* }"
  fi
  if [ -z "$py" ]; then
    need+=(python3.11 python3.11-venv python3.11-dev); why+=("Python 3.11${other_python:+ ($other_python)}")
  else
    [ "$ensurepip" = True ] || { need+=(python3.11-venv); why+=("ensurepip for $py"); }
    [ "$headers" = True ] || { need+=(python3.11-dev); why+=("Python.h for $py"); }
  fi
  # libc6-dev is only a Recommends of gcc, and apt may be set to skip those; pesq needs the libc headers.
  command -v "$compiler" >/dev/null || { need+=(gcc libc6-dev); why+=("C compiler $compiler"); }
  # Speech synthesis for `seqwin prepare voices` (other speakers than the mini corpus's one).
  command -v flite >/dev/null || { need+=(flite); why+=("flite"); }
}

# "missing A, B, C" from detect's why.
describe() { local text="missing ${why[*]/%/,}"; echo "${text%,}"; }

detect
if [ ${#need[@]} -gt 0 ]; then
  missing=$(describe)
  command -v apt-get >/dev/null \
    || fail "$missing: install the Debian/Ubuntu packages ${need[*]} (or their equivalents; no apt-get here), then rerun"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "$missing: as root run 'apt-get install ${need[*]}' (not root, no sudo), then rerun"
    sudo=(sudo)
  fi
  # env, not a variable assignment: sudo drops the caller's environment.
  apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
  if [ "$mode" = dry-run ]; then
    echo "setup: $missing; would run: ${sudo[*]:+${sudo[*]} }apt-get install -y ${need[*]}"
    exit 0
  fi
  echo "setup: $missing; installing ${need[*]} with apt-get"
  "${apt[@]}" update -qq
  # Newer releases (Debian 13, Ubuntu 24.04) have no python3.11: say so instead of failing inside apt.
  if [ -z "$py" ] && ! apt-cache show python3.11 >/dev/null 2>&1; then
    fail "seqwin needs Python 3.11${other_python:+ ($other_python)} and apt has no python3.11 package here:" \
      "install Python 3.11 (e.g. with pyenv or uv) and rerun with PYTHON=/path/to/python3.11"
  fi
  "${apt[@]}" install -y -qq "${need[@]}"
  detect
  [ ${#need[@]} -eq 0 ] || fail "after apt-get install, still $(describe)"
elif [ "$mode" != all ]; then
  echo "setup: system packages: nothing to install (Python 3.11: $py, C compiler: $compiler, libsndfile, flite)"
fi
[ "$mode" = all ] || exit 0

cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "$py" -m venv .venv
# pip's own exit status survives the filter (pipefail); the filter only drops pip's warnings about index locations
# that do not exist.
pipi() { .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
# torch comes first and alone: the PyPI build pinned by fairseq2n (large, cached by pip after the first time).
pipi torch==2.9.1 torchaudio==2.9.1
pipi -e ".[dev]"
.venv/bin/python -c "import seqwin, fairseq2, torch; print(f'setup: seqwin {seqwin.__version__}, torch {torch.__version__}, fairseq2 {fairseq2.__version__} ready in .venv')"
