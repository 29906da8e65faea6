#!/usr/bin/env bash
# ptxas registers and spills of reblur kernels, compiled one at a time (seconds each, against the
# 16-30 minutes of the whole CUDA build of .ci/compile_cuda.sh): for trying a kernel change.
#
#   .ci/ptxas_reblur.sh VENV [KERNEL ...]
#
# VENV: a virtual environment with a CUDA build of torch (its headers, and its nvidia-* wheels' CUDA
# headers). KERNEL: forward_kernel, param_backward_kernel or image_backward_kernel (default: all
# three), each compiled as reblur_cuda.cu instantiates them: the m = 8 specialization (int32_t, 8)
# for float, c10::Half and c10::BFloat16, the generic kernel (int64_t, 0) for those and double. Uses
# $CUDA_HOME/bin/nvcc (default /usr/local/cuda) for TORCH_CUDA_ARCH_LIST's first arch (default 9.0).
# Prints one line per instantiation; exits 1 if any spills or needs more than 64 registers.
# With SASS_DIR set, also writes each instantiation's disassembly there (KERNEL_SCALAR_INDEX_LEVELS.sass,
# by cuobjdump: $CUDA_HOME/bin, PATH, or the one bundled with the venv's triton), for
# benchmarks/sass_sections.py.
set -euo pipefail
venv="${1:?usage: .ci/ptxas_reblur.sh VENV [KERNEL ...]}"
shift
kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(forward_kernel param_backward_kernel image_backward_kernel)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=nvcc_env.sh
source "$repo/.ci/nvcc_env.sh"  # nvcc, arch, includes
work="$(mktemp -d "${TMPDIR:-/tmp}/ptxas_reblur.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cat >"$work/one.cu" <<'CU'
#include <ATen/OpMathType.h>
#include "reblur/reblur_kernels.cuh"
void instantiate() {
  auto kernel = &jdrl::reblur_kernels::RB_KERNEL<RB_SCALAR, at::opmath_type<RB_SCALAR>, RB_INDEX, RB_LEVELS>;
  (void)kernel;
}
CU
cuobjdump=""
if [ -n "${SASS_DIR:-}" ]; then
  mkdir -p "$SASS_DIR"
  for candidate in "${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump" "$(command -v cuobjdump || true)" \
    "$site/triton/backends/nvidia/bin/cuobjdump"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then cuobjdump="$candidate"; break; fi
  done
  [ -n "$cuobjdump" ] || { echo "ptxas_reblur.sh: SASS_DIR needs cuobjdump (none found)" >&2; exit 1; }
fi
status=0
for kernel in "${kernels[@]}"; do
  for scalar in float c10::Half c10::BFloat16 double; do
    for variant in "int32_t 8" "int64_t 0"; do
      [ "$scalar" = double ] && [ "$variant" = "int32_t 8" ] && continue  # float64 is never specialized
      read -r index levels <<<"$variant"
      log="$work/log"
      "$nvcc" -std=c++20 -O3 --expt-relaxed-constexpr -arch="$arch" -Xptxas -v -cubin -o "$work/one.cubin" \
        "$work/one.cu" "${includes[@]}" -DRB_KERNEL="$kernel" -DRB_SCALAR="$scalar" -DRB_INDEX="$index" \
        -DRB_LEVELS="$levels" -diag-suppress 550 >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
      registers="$(grep -oE 'Used [0-9]+ registers' "$log" | tail -n 1 | grep -oE '[0-9]+')"
      frame="$(grep -oE '[0-9]+ bytes stack frame, [0-9]+ bytes spill stores, [0-9]+ bytes spill loads' "$log" | tail -n 1)"
      echo "$kernel<$scalar, $index, $levels>: $registers registers, $frame"
      if [ -n "$cuobjdump" ]; then
        "$cuobjdump" -sass "$work/one.cubin" >"$SASS_DIR/${kernel}_${scalar#c10::}_${index}_${levels}.sass" ||
          { echo "ptxas_reblur.sh: $cuobjdump could not disassemble $kernel<$scalar> (older than nvcc?)" >&2; exit 1; }
      fi
      if [ "$registers" -gt 64 ] || ! grep -q "0 bytes spill stores, 0 bytes spill loads" <<<"$frame"; then status=1; fi
    done
  done
done
exit $status
