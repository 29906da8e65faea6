#!/usr/bin/env bash
# Build jdrl_ext with CUDA, run the CUDA tests and the GPU benchmarks, all within ~8 minutes.
#
# Usage (from anywhere; the repository is this script's parent folder):
#     bash benchmarks/gpu_check.sh DIR
# Writes DIR/env.log, DIR/<step>.log for each step, DIR/bench_ops_cuda.json,
# DIR/bench_train_cuda.json and DIR/summary.txt. Needs a CUDA GPU and a torch with CUDA already
# installed (with nvcc, ninja and pytest); nothing is downloaded: the extension is built in place
# against the installed torch (`python setup.py build_ext --inplace`).
#
# Every step has its own timeout, and every step runs even when an earlier one failed; the summary
# at the end says what passed, and the exit status is 1 when any step failed or timed out. The
# script first deletes jdrl_ext/_C*.so, so that a failed build cannot leave an old CPU-only
# library in use. Environment knobs: PYTHON (default python3), JDRL_DEADLINE_S (the
# whole script's time, default 470 s), TORCH_CUDA_ARCH_LIST (default: the card's own capability),
# JDRL_GIT_COMMIT (the commit to report when the copy has no .git).
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR   (logs and JSON go to DIR)" >&2
    exit 2
fi
DIR=$(mkdir -p "$1" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PYTHON=${PYTHON:-python3}
START=$(date +%s)
DEADLINE=$((START + ${JDRL_DEADLINE_S:-470}))
export PYTHONPATH="$ROOT/python:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
SUMMARY=()
FAILED=0

# Nothing below makes sense without a GPU, and the build step replaces the in-place library: stop
# here on a machine where torch sees no CUDA device (e.g. a CPU development box).
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: $PYTHON's torch sees no CUDA device; nothing done (run this on a GPU machine)" >&2
    exit 2
fi

# ---- environment -------------------------------------------------------------------------------------
COMMIT=${JDRL_GIT_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
export JDRL_GIT_COMMIT=$COMMIT
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "git commit: $COMMIT"
    echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| available', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
    echo "nvcc: $(nvcc --version 2>&1 | tail -n 1)"
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores)"
    echo "python: $("$PYTHON" --version 2>&1)"
    echo
    nvidia-smi 2>&1
} > "$DIR/env.log"
head -n 8 "$DIR/env.log"

if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    # Build for this card only: a third of the compile time of a multi-architecture build.
    TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; major, minor = torch.cuda.get_device_capability(0); print(f'{major}.{minor}')" 2>/dev/null)
    export TORCH_CUDA_ARCH_LIST
fi
echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}" | tee -a "$DIR/env.log"

# ---- one step: its own timeout, capped by what is left of the deadline ----------------------------------
# run_step NAME MAX_SECONDS COMMAND...   -> DIR/NAME.log, a line in the summary; never exits the script.
run_step() {
    local name=$1 limit=$2
    shift 2
    local now remaining started rc status elapsed
    now=$(date +%s)
    remaining=$((DEADLINE - now - 5))
    if [ "$remaining" -lt 15 ]; then
        SUMMARY+=("$(printf '%-14s SKIPPED (no time left before the %ss deadline)' "$name" "$((DEADLINE - START))")")
        echo "== $name: skipped, no time left"
        return 0
    fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    echo "== $name (timeout ${limit}s): $*"
    started=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$DIR/$name.log" 2>&1
    rc=$?
    elapsed=$(($(date +%s) - started))
    case $rc in
        0) status="PASS" ;;
        124 | 137) status="TIMEOUT after ${limit}s" FAILED=1 ;;
        *) status="FAIL (exit $rc)" FAILED=1 ;;
    esac
    SUMMARY+=("$(printf '%-14s %-22s %4ss  %s' "$name" "$status" "$elapsed" "$DIR/$name.log")")
    echo "   $status in ${elapsed}s"
    tail -n 3 "$DIR/$name.log" | sed 's/^/   | /'
    return 0
}

# Seconds left for a step's own budget (benchmarks stop themselves inside it).
budget_left() {
    local want=$1 reserve=$2 left
    left=$((DEADLINE - $(date +%s) - reserve))
    [ "$left" -lt "$want" ] && want=$left
    [ "$want" -lt 10 ] && want=10
    echo "$want"
}

# ---- steps --------------------------------------------------------------------------------------------
# A stale CPU-only library from a checkout would shadow the new build: remove it first.
rm -f "$ROOT"/jdrl_ext/_C*.so
run_step build 240 "$PYTHON" setup.py build_ext --inplace

run_step cuda_kernels 60 "$PYTHON" - <<'EOF'
import torch, jdrl_ext
ops = ["isotropic_kernels", "sv_conv", "reblur", "flow_warp"]
missing = []
for name in ops:
    for op_name in (name, "_" + name + "_backward"):
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"jdrl_ext::{op_name}", "CUDA")
        print(f"{op_name:30s} CUDA kernel: {has}")
        if not has:
            missing.append(op_name)
x = torch.rand(1, 3, 64, 64, device="cuda")
flow = torch.randn(1, 2, 64, 64, device="cuda")
out = jdrl_ext.flow_warp(x, flow)
torch.cuda.synchronize()
print("flow_warp ran on", out.device)
raise SystemExit(f"no CUDA kernel for {missing}" if missing else 0)
EOF

if [ -f tests/test_cuda.py ]; then
    run_step test_cuda 90 "$PYTHON" -m pytest -x -q tests/test_cuda.py
else
    SUMMARY+=("$(printf '%-14s MISSING (tests/test_cuda.py not in this tree)' test_cuda)")
fi
run_step test_ops 75 "$PYTHON" -m pytest -x -q tests/test_ops.py

OPS_BUDGET=$(budget_left 110 120)
run_step bench_ops $((OPS_BUDGET + 40)) "$PYTHON" benchmarks/bench_ops.py --device cuda \
    --sizes 256x256,512x512,1024x1024,4096x2160 --batches 1,8 --dtypes float32,bfloat16 \
    --min-run-time 0.1 --case-budget 15 --time-budget "$OPS_BUDGET" --json "$DIR/bench_ops_cuda.json"

TRAIN_BUDGET=$(budget_left 90 25)
run_step bench_train $((TRAIN_BUDGET + 30)) "$PYTHON" benchmarks/bench_train.py --device cuda \
    --presets small,paper --sizes 256x256,512x512 --steps 5 --warmup 2 \
    --case-budget 40 --time-budget "$TRAIN_BUDGET" --json "$DIR/bench_train_cuda.json"

# ---- summary -------------------------------------------------------------------------------------------
{
    echo "gpu_check summary ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $COMMIT, $(($(date +%s) - START))s in all)"
    grep -m1 '^GPU:' "$DIR/env.log"
    grep -m1 '^torch' "$DIR/env.log"
    for line in "${SUMMARY[@]}"; do echo "$line"; done
    grep -h '^KEY ' "$DIR/bench_ops.log" 2>/dev/null
} | tee "$DIR/summary.txt"
# Non-zero when any step failed or timed out (skipped and missing steps do not count).
exit "$FAILED"
