#!/usr/bin/env bash
# Compile check of the CUDA build of jdrl_ext; needs nvcc, not a GPU.
#
#   .ci/compile_cuda.sh VENV
#
# VENV is a virtual environment holding a CUDA build of torch (and setuptools, ninja), e.g.
#   python3 -m venv V && V/bin/pip install -q torch==2.14.1 numpy setuptools ninja
# The working tree is copied to a temporary folder (so an in-place CPU build is left alone) and built
# there with FORCE_CUDA=1. Fails on any compile or link error, on a library that leaves a jdrl symbol
# undefined, and on a library whose CUDA kernels are not registered with the dispatcher. Prints the
# build time and a table of every kernel's registers and spills (nvcc runs with -Xptxas -v, appended
# to NVCC_APPEND_FLAGS; .ci/ptxas_report.py reads the log), and fails when a kernel spills that
# .ci/known_spills.txt does not list or, with
# the register gate on (REBLUR_REGISTER_GATE below; on by default), when a reblur kernel needs more than
# REBLUR_MAX_REGISTERS registers per thread. CUDA_HOME (default: /usr/local/cuda, else the toolkit of the nvcc on PATH),
# TORCH_CUDA_ARCH_LIST (default 9.0) and MAX_JOBS (default 2) are respected.
set -euo pipefail

venv="${1:?usage: .ci/compile_cuda.sh VENV (a virtual environment with a CUDA build of torch)}"
[ -d "$venv" ] || { echo "compile_cuda: no folder $venv (argument 1 must be a virtual environment)" >&2; exit 1; }
python="$(cd "$venv" && pwd)/bin/python"  # absolute: the build runs in another folder
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then
    CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  else
    CUDA_HOME=/usr/local/cuda
  fi
fi
export CUDA_HOME

fail() {
  echo "compile_cuda: $*" >&2
  exit 1
}

[ -x "$python" ] || fail "no python at $python (argument 1 must be a virtual environment)"
[ -x "$CUDA_HOME/bin/nvcc" ] || fail "no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME to the CUDA toolkit)"
"$python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' ||
  fail "the torch in $venv has no CUDA (torch.version.cuda is None): install a CUDA build of torch there"

# JDRL_CUDA_BUILD_DIR: build there and keep the result (to inspect or load it); else a temporary folder.
if [ -n "${JDRL_CUDA_BUILD_DIR:-}" ]; then
  rm -rf "$JDRL_CUDA_BUILD_DIR" && mkdir -p "$JDRL_CUDA_BUILD_DIR"
  work="$(cd "$JDRL_CUDA_BUILD_DIR" && pwd)"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/jdrl_cuda_build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
fi
# The source files only: in a git checkout, the tracked and the untracked-but-not-ignored files (no
# venvs, builds or runs); elsewhere, everything but those.
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$repo" ls-files -z --cached --others --exclude-standard |
    tar -C "$repo" --null --ignore-failed-read -T - -cf - | tar -C "$work" -xf -
else
  tar -C "$repo" --exclude=./build --exclude='*.so' --exclude=./.git --exclude='./.venv*' -cf - . | tar -C "$work" -xf -
fi
rm -f "$work"/jdrl_ext/_C*.so  # never test a stale library

# CUDA headers that the toolkit may lack ship in pip's nvidia-* wheels. CPATH is searched after the
# -I folders, so these only fill gaps and never shadow the toolkit's own headers.
extra_includes="$("$python" - <<'EOF'
import glob, os, site
dirs = []
for root in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
print(os.pathsep.join(dirs))
EOF
)"
export CPATH="${extra_includes}${CPATH:+:$CPATH}"

# The register gate of the reblur kernels: 64 registers x 256 threads a block lets 4 blocks (50% of an
# SM's 2048 threads) be resident. "enforce" (the default) fails the check above the limit, "report"
# only prints it.
REBLUR_REGISTER_GATE="${REBLUR_REGISTER_GATE:-enforce}"
REBLUR_MAX_REGISTERS="${REBLUR_MAX_REGISTERS:-64}"
case "$REBLUR_REGISTER_GATE" in
  enforce | report) ;;
  *) fail "REBLUR_REGISTER_GATE must be 'enforce' or 'report', got '$REBLUR_REGISTER_GATE'" ;;
esac
# ptxas prints each kernel's registers, stack frame and spills into the build log.
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-Xptxas -v"

log="$work/build.log"
start=$(date +%s)
if ! (cd "$work" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
      "$python" setup.py build_ext --inplace) >"$log" 2>&1; then
  tail -n 80 "$log" >&2
  fail "the CUDA build failed after $(( $(date +%s) - start ))s (log above)"
fi
elapsed=$(( $(date +%s) - start ))

library="$(ls "$work"/jdrl_ext/_C*.so 2>/dev/null | head -n 1 || true)"
[ -n "$library" ] || fail "the build produced no jdrl_ext/_C*.so"
undefined="$(nm -DC --undefined-only "$library" | grep -i jdrl || true)"
[ -z "$undefined" ] || fail "undefined jdrl symbols in $(basename "$library"):"$'\n'"$undefined"
grep -i "warning" "$log" >&2 || true

register_flag=()
[ "$REBLUR_REGISTER_GATE" = enforce ] && register_flag=(--enforce-registers)
"$python" "$repo/.ci/ptxas_report.py" "$log" --max-reblur-registers "$REBLUR_MAX_REGISTERS" \
  --known-spills "$repo/.ci/known_spills.txt" "${register_flag[@]}" ||
  fail "ptxas: an unlisted kernel spills or a reblur kernel needs more than $REBLUR_MAX_REGISTERS registers (table above)"

# Loading the library registers the kernels; that needs no GPU.
(cd "$work" && "$python" - <<'EOF') || fail "the CUDA kernels are not all registered"
import torch
import jdrl_ext  # noqa: F401
ops = ["isotropic_kernels", "sv_conv", "reblur", "flow_warp"]
missing = [
    name
    for op in ops
    for name in (op, "_" + op + "_backward")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("jdrl_ext::" + name, "CUDA")
]
if missing:
    raise SystemExit("no CUDA kernel for: " + ", ".join(missing))
EOF

echo "compile_cuda: OK, $(basename "$library") ($(du -h "$library" | cut -f1)) built in ${elapsed}s" \
  "(torch $("$python" -c 'import torch; print(torch.__version__)'), arch ${TORCH_CUDA_ARCH_LIST:-9.0})"
