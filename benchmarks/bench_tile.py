"""Time of one tile through the deblurring network without gradients on the CPU: the transformer
blocks in bands of rows (what `jdrl deblur` runs) against their whole-image path.

Runs in one process with `jdrl deblur`'s memory settings (`keep_freed_memory`: freed pages kept,
so no tile pays for fresh page faults, which made earlier one-off probes misleading), random
weights of the chosen preset (weights do not change the cost) and a random tile; each variant is
run `--repeats` times, alternating, after one warm-up call each.

    python benchmarks/bench_tile.py                       # 512x512, small preset, two threads
    python benchmarks/bench_tile.py --tile 384 --threads 1 --band-mb 4,16,64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, git_commit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512, help="tile side in pixels (default 512)")
    parser.add_argument("--preset", default="small", help="model preset (default small)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--band-mb", default="16", help="comma-separated band sizes in MB (default 16)")
    args = parser.parse_args(argv)

    import torch

    from jdrl.models import build_deblur_net, restormer
    from jdrl.models.restormer import TransformerBlock
    from jdrl.process_env import keep_freed_memory

    keep_freed_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_deblur_net("jdrl", args.preset, 8).eval()
    tile = torch.rand(1, 3, args.tile, args.tile)
    banded = TransformerBlock._forward_in_bands
    variants = {"whole image": (TransformerBlock._forward_whole_image, None)}
    for megabytes in (int(value) for value in args.band_mb.split(",")):
        variants[f"bands of {megabytes} MB"] = (banded, megabytes << 20)

    def run(variant: str) -> float:
        method, band_bytes = variants[variant]
        TransformerBlock._forward_in_bands = method
        if band_bytes is not None:
            restormer.BAND_BYTES = band_bytes
        began = time.perf_counter()
        net(tile)
        return time.perf_counter() - began

    times: dict[str, list[float]] = {name: [] for name in variants}
    band_bytes = restormer.BAND_BYTES
    try:
        with torch.no_grad():
            for name in variants:
                run(name)  # warm-up: oneDNN primitives, the heap
            for _ in range(args.repeats):
                for name in variants:
                    times[name].append(run(name))
    finally:  # leave the module as it was (the tests call main in their process)
        TransformerBlock._forward_in_bands = banded
        restormer.BAND_BYTES = band_bytes
        torch.set_num_threads(threads)
    print(f"one {args.tile}x{args.tile} tile, preset {args.preset}, {args.threads} thread(s), commit {git_commit()}")
    for name, values in times.items():
        print(f"{name:>16}: median {statistics.median(values):.3f} s  ({', '.join(f'{v:.3f}' for v in values)})")
    return 0


if __name__ == "__main__":
    # Run from a checkout: this tree's code. Only here, not on import: the tests import this file,
    # and the source folder (no compiled _C) must not shadow the installed jdrl_ext there.
    sys.path[:0] = [str(REPO_ROOT / "python"), str(REPO_ROOT)]
    raise SystemExit(main())
