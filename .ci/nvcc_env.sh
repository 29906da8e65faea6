# Sourced by .ci/ptxas_op.sh and .ci/ptxas_reblur.sh: with $venv (a virtual environment with a CUDA
# build of torch) and $repo set, sets `nvcc` ($CUDA_HOME/bin/nvcc, default /usr/local/cuda, else the
# one on PATH), `arch` (sm_XY of TORCH_CUDA_ARCH_LIST's first entry, default 9.0) and `includes`
# (csrc, torch's headers and the nvidia-* wheels' CUDA headers).
nvcc="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
[ -x "$nvcc" ] || nvcc="$(command -v nvcc)" || { echo "$(basename "$0"): no nvcc (set CUDA_HOME)" >&2; exit 1; }
arch="${TORCH_CUDA_ARCH_LIST:-9.0}"
arch="sm_$(echo "${arch%% *}" | tr -d '.')"
site="$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
includes=(-I"$repo/csrc" -isystem "$site/torch/include" -isystem "$site/torch/include/torch/csrc/api/include")
for d in "$site"/nvidia/*/include; do includes+=(-isystem "$d"); done
