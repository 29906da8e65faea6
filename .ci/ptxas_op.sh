#!/usr/bin/env bash
# ptxas registers and spills of one op's CUDA kernels, compiled one .cu at a time (1-3 minutes each
# on the 2-core CI machine, against the 13-30 minutes of the whole CUDA build of .ci/compile_cuda.sh):
# for trying a kernel change.
#
#   .ci/ptxas_op.sh VENV OP [OP ...]
#
# VENV: a virtual environment with a CUDA build of torch (its headers, and its nvidia-* wheels' CUDA
# headers). OP: isotropic_kernels, sv_conv, reblur or flow_warp: csrc/OP/OP_cuda.cu is compiled to a
# cubin with the flags of setup.py's CUDA build (every dtype and variant it instantiates) and its
# ptxas lines go through .ci/ptxas_report.py with the gates of .ci/compile_cuda.sh: the table, and
# exit 1 if a kernel spills that .ci/known_spills.txt does not list or a reblur kernel needs more than
# REBLUR_MAX_REGISTERS (default 64) registers. Uses $CUDA_HOME/bin/nvcc (default /usr/local/cuda) for
# TORCH_CUDA_ARCH_LIST's first arch (default 9.0). .ci/ptxas_reblur.sh compiles single reblur kernels.
set -euo pipefail
venv="${1:?usage: .ci/ptxas_op.sh VENV OP [OP ...]}"
shift
[ $# -gt 0 ] || { echo "usage: .ci/ptxas_op.sh VENV OP [OP ...] (OP: isotropic_kernels, sv_conv, reblur, flow_warp)" >&2; exit 1; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=nvcc_env.sh
source "$repo/.ci/nvcc_env.sh"  # nvcc, arch, includes
work="$(mktemp -d "${TMPDIR:-/tmp}/ptxas_op.XXXXXX")"
trap 'rm -rf "$work"' EXIT
status=0
for op in "$@"; do
  source="$repo/csrc/$op/${op}_cuda.cu"
  [ -f "$source" ] || { echo "ptxas_op: no $source (OP: isotropic_kernels, sv_conv, reblur, flow_warp)" >&2; exit 1; }
  log="$work/$op.log"
  start=$(date +%s)
  # torch.utils.cpp_extension's nvcc defines, and setup.py's nvcc flags
  "$nvcc" -std=c++20 -O3 --expt-relaxed-constexpr -arch="$arch" -Xptxas -v -cubin -o "$work/$op.cubin" "$source" \
    "${includes[@]}" -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -D__CUDA_NO_HALF_OPERATORS__ \
    -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    -diag-suppress 550 >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  echo "== $op: compiled in $(( $(date +%s) - start ))s"
  "$venv/bin/python" "$repo/.ci/ptxas_report.py" "$log" --max-reblur-registers "${REBLUR_MAX_REGISTERS:-64}" \
    --enforce-registers --known-spills "$repo/.ci/known_spills.txt" || status=1
done
exit $status
