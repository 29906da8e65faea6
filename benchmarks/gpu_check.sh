#!/usr/bin/env bash
# On a CUDA machine: build jdrl_ext against the installed torch, run the CUDA tests, compute-sanitizer
# and both benchmarks, and write DIR/summary.json, all within 400 s.
#
# Usage (from anywhere; the repository is this script's parent folder):
#     bash benchmarks/gpu_check.sh DIR
#     GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh DIR   # print the plan, run nothing (any machine)
#
# Made for a fresh GPU image with torch already installed and only a package mirror reachable:
# - torch is never installed, upgraded or pinned: pip installs only the packages that are missing
#   (checked by importing them) of pytest, numpy, scikit-image, opencv-python-headless, the build
#   tools setuptools and ninja, and the package's own pyyaml, tqdm and pillow, with a constraints
#   file that holds the installed torch (and numpy, when present) at their versions; the step fails
#   if torch's version changed anyway;
# - the extension is built in place against that torch (`setup.py build_ext --inplace`, for this
#   card's architecture only), after deleting any jdrl_ext/_C*.so (a stale CPU-only library would
#   otherwise be tested);
# - the CUDA tests run with --maxfail, the slow torch.compile tests last; then compute-sanitizer
#   memcheck and racecheck on small cases of every op (benchmarks/sanitize_ops.py), if the tool is
#   there; then each reblur kernel's own time from torch.profiler (benchmarks/profile_reblur.py,
#   DIR/profile_reblur.log); then bench_ops.py and bench_train.py with budgets that fit what is left.
# Every step has its own timeout, capped by the deadline (JDRL_DEADLINE_S, default 400 s); a step that
# fails does not stop the next ones. Writes DIR/<step>.log, DIR/<test step>.xml (JUnit),
# DIR/env.json, DIR/steps.tsv, the benchmarks' JSON and DIR/summary.json (benchmarks/gpu_summary.py:
# card, torch/CUDA versions, commit, test counts, per-op time and bandwidth fraction of the measured
# copy bandwidth). Exit status: 0 when every step passed (a missing compute-sanitizer is a skip),
# 1 when any failed or timed out, 2 for bad usage or a machine without a CUDA device.
# Knobs: PYTHON (default python3), JDRL_DEADLINE_S, TORCH_CUDA_ARCH_LIST (default: the card's),
# MAX_JOBS (default: the core count), JDRL_GIT_COMMIT (the commit to report when the copy has no
# .git), PIP_INDEX_URL and friends (the mirror; pip reads them itself).
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR   (logs and JSON go to DIR; GPU_CHECK_DRY_RUN=1 prints the plan only)" >&2
    exit 2
fi
DIR=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PYTHON=${PYTHON:-python3}
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
START=$(date +%s)
DEADLINE=$((START + ${JDRL_DEADLINE_S:-400}))
export PYTHONPATH="$ROOT/python:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
FAILED=0
: > "$DIR/steps.tsv"
rm -f "$DIR"/*.xml

if ! command -v "$PYTHON" > /dev/null; then
    echo "gpu_check: no $PYTHON on PATH (set PYTHON to the interpreter that has torch)" >&2
    exit 2
fi
if ! "$PYTHON" -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"; then
    echo "gpu_check: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); jdrl_ext needs 3.10+" >&2
    exit 2
fi
# One interpreter start (importing torch takes seconds): 3 = no torch, 4 = torch without a CUDA device.
"$PYTHON" -c "
import sys
try:
    import torch
except ImportError:
    sys.exit(3)
sys.exit(0 if torch.cuda.is_available() else 4)" 2> /dev/null
case $? in
    0) ;;
    3)
        echo "gpu_check: $PYTHON cannot import torch; this script never installs torch: use an image that has it" >&2
        exit 2
        ;;
    4)
        # Nothing below makes sense without a GPU, and the build step replaces the in-place library.
        if [ "$DRY_RUN" != 1 ]; then
            echo "gpu_check: $PYTHON's torch sees no CUDA device; nothing done. Run this on a GPU machine, or GPU_CHECK_DRY_RUN=1 to print the plan." >&2
            exit 2
        fi
        ;;
    *)
        echo "gpu_check: $PYTHON failed to start torch (run: $PYTHON -c 'import torch')" >&2
        exit 2
        ;;
esac

# ---- one step: its own timeout, capped by what is left of the deadline ----------------------------------
# run_step NAME MAX_SECONDS COMMAND...   -> DIR/NAME.log and a line of DIR/steps.tsv; never exits the script.
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$DIR/steps.tsv"; }
run_step() {
    local name=$1 limit=$2
    shift 2
    local remaining started rc status elapsed
    remaining=$((DEADLINE - $(date +%s) - 10))  # 10 s kept for the summary
    if [ "$remaining" -lt 10 ]; then
        record "$name" SKIPPED 0 0
        echo "== $name: skipped, no time left before the $((DEADLINE - START)) s deadline"
        return 0
    fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    if [ "$DRY_RUN" = 1 ]; then
        echo "== $name (timeout ${limit}s), would run: $*"
        record "$name" DRY 0 0
        return 0
    fi
    echo "== $name (timeout ${limit}s): $*"
    started=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" > "$DIR/$name.log" 2>&1
    rc=$?
    elapsed=$(($(date +%s) - started))
    case $rc in
        0) status=PASS ;;
        124 | 137) status=TIMEOUT FAILED=1 ;;
        *) status=FAIL FAILED=1 ;;
    esac
    record "$name" "$status" "$rc" "$elapsed"
    echo "   $status (exit $rc) in ${elapsed}s"
    tail -n 3 "$DIR/$name.log" | sed 's/^/   | /'
    return 0
}
skip_step() {  # skip_step NAME REASON
    record "$1" SKIPPED 0 0
    echo "== $1: skipped ($2)"
}

# Seconds for a benchmark's own budget: WANT, or less when fewer are left (RESERVE kept for later steps).
budget_left() {
    local want=$1 reserve=$2 left
    left=$((DEADLINE - $(date +%s) - reserve))
    [ "$left" -lt "$want" ] && want=$left
    [ "$want" -lt 10 ] && want=10
    echo "$want"
}

# ---- environment -------------------------------------------------------------------------------------------
COMMIT=${JDRL_GIT_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo unknown)}
export JDRL_GIT_COMMIT=$COMMIT
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ "$DRY_RUN" != 1 ]; then
    # This card only: a third of the compile time of a multi-architecture build.
    TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))" 2> /dev/null)
    export TORCH_CUDA_ARCH_LIST
fi
JDRL_COMMIT=$COMMIT "$PYTHON" - > "$DIR/env.json" 2> "$DIR/env.log" << 'EOF'
import json, os, platform, subprocess
from datetime import datetime, timezone
import torch
available = torch.cuda.is_available()
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
except (OSError, IndexError, subprocess.SubprocessError):
    driver = None
print(json.dumps({
    "card": torch.cuda.get_device_name(0) if available else "none",
    "capability": "%d.%d" % torch.cuda.get_device_capability(0) if available else None,
    "driver": driver,
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "python": platform.python_version(),
    "commit": os.environ["JDRL_COMMIT"],
    "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
}, indent=1))
EOF
cat "$DIR/env.json"

# ---- steps --------------------------------------------------------------------------------------------------
# 1. What is missing, and only that (module to import = pip name).
MISSING=$("$PYTHON" - << 'EOF'
import importlib.util
wanted = {"pytest": "pytest", "numpy": "numpy", "skimage": "scikit-image", "cv2": "opencv-python-headless",
          "setuptools": "setuptools", "ninja": "ninja", "yaml": "pyyaml", "tqdm": "tqdm", "PIL": "pillow"}
print(" ".join(pip for module, pip in wanted.items() if importlib.util.find_spec(module) is None))
EOF
)
if [ -n "$MISSING" ]; then
    # The constraints keep pip from touching torch (or numpy, which torch was built against).
    "$PYTHON" -c "
import importlib.metadata as m
for name in ('torch', 'numpy'):
    try:
        print(f'{name}=={m.version(name)}')
    except m.PackageNotFoundError:
        pass" > "$DIR/constraints.txt"
    TORCH_BEFORE=$("$PYTHON" -c "import torch; print(torch.__version__)")
    # SC2016: the single-quoted script reads its arguments; SC2086: $MISSING is one word per package.
    # shellcheck disable=SC2016,SC2086
    run_step deps 120 bash -c '"$1" -m pip install --only-binary=:all: -c "$2" "${@:4}" &&
        after=$("$1" -c "import torch; print(torch.__version__)") &&
        { [ "$after" = "$3" ] || { echo "torch changed from $3 to $after" >&2; exit 1; }; }' \
        deps "$PYTHON" "$DIR/constraints.txt" "$TORCH_BEFORE" $MISSING
else
    skip_step deps "pytest, numpy, scikit-image, opencv-python-headless, setuptools, ninja, pyyaml, tqdm, pillow all importable"
fi

# 2. Build in place against the installed torch.
[ "$DRY_RUN" = 1 ] || rm -f "$ROOT"/jdrl_ext/_C*.so
# FORCE_CUDA=1: a missing toolkit fails here, with a message, instead of building a CPU-only library
# that every CUDA test would then reject.
# shellcheck disable=SC2016  # the single-quoted script reads its arguments
run_step build 200 bash -c 'nvcc_path=$(command -v nvcc || true)
    [ -n "$nvcc_path" ] || [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] || {
        echo "no nvcc on PATH or in ${CUDA_HOME:-/usr/local/cuda}/bin: this image has no CUDA toolkit to build the kernels with (set CUDA_HOME)" >&2
        exit 1
    }
    FORCE_CUDA=1 exec "$1" setup.py build_ext --inplace' build "$PYTHON"

# 3. The CUDA kernels are registered and run.
run_step cuda_kernels 45 "$PYTHON" -c "
import torch, jdrl_ext
missing = [n for op in ('isotropic_kernels', 'sv_conv', 'reblur', 'flow_warp') for n in (op, '_' + op + '_backward')
           if not torch._C._dispatch_has_kernel_for_dispatch_key('jdrl_ext::' + n, 'CUDA')]
out = jdrl_ext.flow_warp(torch.rand(1, 3, 64, 64, device='cuda'), torch.randn(1, 2, 64, 64, device='cuda'))
torch.cuda.synchronize()
print('flow_warp ran on', out.device)
raise SystemExit(f'no CUDA kernel for {missing}' if missing else 0)"

# 4. CUDA tests: the fast ones first, the slow torch.compile ones last.
PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider --maxfail=5)
if [ -f tests/test_cuda.py ]; then
    # (tests/test_cuda_emulated.py runs the kernels on the CPU: CI's job, not this script's.)
    run_step test_cuda 90 "${PYTEST[@]}" tests/test_cuda.py -k "not compile" --junitxml="$DIR/test_cuda.xml"
    run_step test_cuda_compile 75 "${PYTEST[@]}" tests/test_cuda.py -k "compile" --junitxml="$DIR/test_cuda_compile.xml"
else
    skip_step test_cuda "tests/test_cuda.py is not in this tree"
fi

# 5. compute-sanitizer on small cases of every op, without torch's caching allocator (each tensor its own
# allocation). Every kernel is instrumented, torch's too: a kernel-name filter that matched nothing
# would pass without checking anything.
SANITIZER=$(command -v compute-sanitizer || true)
for candidate in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer; do
    [ -z "$SANITIZER" ] && [ -x "$candidate" ] && SANITIZER=$candidate
done
if [ -n "$SANITIZER" ]; then
    for tool in memcheck racecheck; do
        run_step "sanitizer_$tool" 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" \
            --error-exitcode 3 "$PYTHON" benchmarks/sanitize_ops.py
    done
else
    skip_step sanitizer "no compute-sanitizer on PATH or in ${CUDA_HOME:-/usr/local/cuda}/bin"
fi

# 6. Each reblur kernel's own time (torch.profiler; bench_ops' CUDA events include the host's autograd
# and launches, which vary between runs on a VM): what a change to one kernel is measured by.
run_step profile_reblur 45 "$PYTHON" benchmarks/profile_reblur.py

# 7. Benchmarks, in what is left (bench_ops stops at least 50 s before the deadline, for bench_train and the summary).
OPS_BUDGET=$(budget_left 70 80)
run_step bench_ops $((OPS_BUDGET + 30)) "$PYTHON" benchmarks/bench_ops.py --device cuda \
    --sizes 512x512,4096x2160 --batches 1,8 --dtypes float32,bfloat16 \
    --min-run-time 0.1 --case-budget 10 --time-budget "$OPS_BUDGET" --json "$DIR/bench_ops_cuda.json"
TRAIN_BUDGET=$(budget_left 35 20)
run_step bench_train $((TRAIN_BUDGET + 20)) "$PYTHON" benchmarks/bench_train.py --device cuda \
    --presets small,paper --sizes 256x256 --steps 5 --warmup 2 \
    --case-budget 20 --time-budget "$TRAIN_BUDGET" --json "$DIR/bench_train_cuda.json"

# ---- summary (always written) -------------------------------------------------------------------------------
"$PYTHON" benchmarks/gpu_summary.py "$DIR" | tee "$DIR/summary.txt"
echo "gpu_check: $(($(date +%s) - START)) s in all; summary: $DIR/summary.json"
if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check: dry run, nothing was run"
    exit 0
fi
exit "$FAILED"
