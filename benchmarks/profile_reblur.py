"""Time of each CUDA kernel of reblur's forward + backward, from torch.profiler (a GPU only).

    python3 benchmarks/profile_reblur.py                 # 1x3x512x512 and 1x3x2160x4096, float32, m = 8
    PYTHONPATH=$PWD python3 benchmarks/profile_reblur.py # with the extension built in place
    python3 benchmarks/profile_reblur.py --sizes 256x256 --calls 20

bench_ops.py times a whole forward + backward with CUDA events, host gaps included: on a sub-ms case
that is mostly the host's autograd and launches (flow_warp forward + backward at 1x3x512x512 float32
measured 0.18 and 0.40 ms in two runs of the same code). This script gives each kernel's own time,
summed over `--calls` forward + backward calls after 5 warm-up calls (random inputs, the output
gradient all ones, level weights a softmax), and prints torch.profiler's table sorted by CUDA time.
Its other rows are the script's: the all-ones gradient, and autograd adding each call's gradients
into the leaves' `.grad`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import jdrl_ext  # noqa: E402  installed, or built in place with the repository root on PYTHONPATH (as bench_ops.py)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512x512,4096x2160", help="comma-separated WIDTHxHEIGHT")
    parser.add_argument("--calls", type=int, default=10, help="forward + backward calls profiled per size")
    args = parser.parse_args(argv)
    try:
        sizes = [common.parse_size(text) for text in common.parse_list(args.sizes, None, "sizes")]
    except ValueError as error:
        parser.error(f"--sizes: {error}")
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if not torch.cuda.is_available():
        print("profile_reblur: no CUDA device", file=sys.stderr)
        return 2
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    levels = 8
    for height, width in sizes:
        image = torch.rand(1, 3, height, width, device="cuda", requires_grad=True)
        seeds = torch.randn(1, jdrl_ext.seed_channels(levels), height, width, device="cuda", requires_grad=True)
        weights = torch.randn(1, levels, height, width, device="cuda").softmax(1).requires_grad_()
        for _ in range(5):
            out = jdrl_ext.reblur(image, seeds, weights)
            out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.calls):
                out = jdrl_ext.reblur(image, seeds, weights)
                out.backward(torch.ones_like(out))
            torch.cuda.synchronize()
        print(f"== 1x3x{height}x{width} float32, m = {levels}, {args.calls} forward + backward calls")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
