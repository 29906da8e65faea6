"""How far can the deblurring net get on this data at all? Train F with L1 on *aligned* pairs.

Misalignment-tolerant training aims to do as well as training on perfectly aligned pairs. This
script measures that reference for a budget: it trains a fresh JDRL deblurring net (``--preset``) with L1
against ``gt_aligned`` (what ``jdrl synth`` writes beside the misaligned ``gt``; no flow, no
reblurring), ``--batch`` pairs per step drawn at random with replacement, each flipped
left-right at random (training also flips up-down and shuffles by epoch), and every ``--every``
steps scores PSNR against ``gt_aligned`` on the test pairs, beside the blurry input. Use it to
tell "the method falls short" from "the budget falls short": if L1 on aligned pairs gains G dB
over the input in S steps, a loss on misaligned pairs is not expected to gain much more there
(a reference for the budget, not a strict bound: one seed of a noisy training). With ``--ema
DECAY`` each row also scores the moving average of the weights that ``train.ema_decay`` keeps
(``jdrl.weight_average``); the weights that train are the same with or without it.

Example: 256 training pairs of the demo's kind against 32 test pairs of other photos::

    jdrl synth runs/train256 --train 256 --test 1 --size 128 --max-radius 7 --scale 0.3:0.6 --seed 7
    jdrl synth runs/test64 --train 0 --test 64 --size 128 --max-radius 7 --scale 0.3:0.6 --seed 100
    PYTHONPATH=python:. python benchmarks/aligned_ceiling.py --train-data runs/train256 --pairs 256 \\
        --test-data runs/test64 --test-pairs 32 --steps 2000 --every 250 --json runs/ceiling.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from common import write_json


def read_pairs(root: Path, split: str, limit: int | None, argument: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``limit`` (all for None) ``(blurry, gt_aligned)`` pairs of ``root/split``, each ``(3, H, W)``."""
    from jdrl.imageio import read_image

    folder = root / split
    paths = sorted((folder / "blur").glob("*.png"))
    if not paths or not (folder / "gt_aligned").is_dir():
        raise SystemExit(f"{argument} {root}: no {split}/blur/*.png with {split}/gt_aligned (make it with `jdrl synth`)")
    return [(read_image(path), read_image(folder / "gt_aligned" / path.name)) for path in paths[:limit]]


@torch.no_grad()
def mean_psnr(net: torch.nn.Module | None, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean PSNR (dB) over the pairs of the net's output (of the blurry input for ``net=None``)."""
    from jdrl.metrics import psnr

    total = 0.0
    for blurry, sharp in pairs:
        estimate = blurry[None] if net is None else net(blurry[None]).sharp
        total += float(psnr(estimate.clamp(0, 1), sharp[None]))
    return total / len(pairs)


def learning_rate(base: float, schedule: str, step: int, steps: int) -> float:
    """The rate of Adam step ``step`` (0-based) of ``steps``. ``constant``: ``base``; ``cosine``:
    from ``base`` at step 0 down toward ``base / 100``, which it reaches at ``step == steps``, just
    after the last step."""
    if schedule == "constant":
        return base
    floor = base / 100
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * step / max(steps, 1)))


def train_and_score(args: argparse.Namespace) -> dict:
    from jdrl.models.restormer import RESTORMER_PRESETS, JDRLDeblurNet
    from jdrl.weight_average import WeightAverage

    train = read_pairs(args.train_data, "train", args.pairs, "--train-data")
    test = read_pairs(args.test_data, "test", args.test_pairs, "--test-data")
    torch.manual_seed(args.seed)
    net = JDRLDeblurNet(RESTORMER_PRESETS[args.preset])
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    average = WeightAverage(net, args.ema) if args.ema > 0 else None
    draws = torch.Generator().manual_seed(args.seed + 1)
    result = {"args": vars(args), "train_pairs": len(train),
              "test_pairs": len(test), "input_psnr": mean_psnr(None, test), "rows": []}
    began = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            net.eval()
            value = mean_psnr(net, test)
            net.train()
            row = {"step": step, "psnr": value, "gain": value - result["input_psnr"]}
            line = f"step {step:5d}: {value:.3f} dB ({row['gain']:+.3f} over the input)"
            if average is not None:
                row["ema_psnr"] = mean_psnr(average.net, test)
                row["ema_gain"] = row["ema_psnr"] - result["input_psnr"]
                line += f", average {row['ema_psnr']:.3f} dB ({row['ema_gain']:+.3f})"
            row["seconds"] = time.perf_counter() - began
            result["rows"].append(row)
            print(f"{line}, {row['seconds']:.0f} s", flush=True)
            if args.json is not None:
                # After every row (atomically), so a long run stopped early keeps what it measured.
                write_json(args.json, result)
        if step == args.steps:
            break
        blurry, sharp = [], []
        for index in torch.randint(len(train), (args.batch,), generator=draws).tolist():
            pair = train[index]
            if bool(torch.rand(1, generator=draws) < 0.5):
                pair = (pair[0].flip(-1), pair[1].flip(-1))
            blurry.append(pair[0])
            sharp.append(pair[1])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, args.schedule, step, args.steps)
        loss = (net(torch.stack(blurry)).sharp - torch.stack(sharp)).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(net)
    return result


def main(argv: list[str] | None = None) -> int:
    from jdrl.models.restormer import RESTORMER_PRESETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-data", type=Path, required=True, help="`jdrl synth` folder whose train/ the net learns from")
    parser.add_argument("--pairs", type=int, default=None, help="use the first N training pairs (default all)")
    parser.add_argument("--test-data", type=Path, required=True, help="`jdrl synth` folder whose test/ is scored")
    parser.add_argument("--test-pairs", type=int, default=None, help="score the first N test pairs (default all)")
    parser.add_argument("--preset", choices=sorted(RESTORMER_PRESETS), default="small", help="network size (default small, the demo's)")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4, the demo's)")
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="learning-rate schedule (default constant, the demo's)")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (default 1000)")
    parser.add_argument("--every", type=int, default=250, help="score every N steps (default 250)")
    parser.add_argument("--batch", type=int, default=1, help="pairs per step (default 1, the demo's)")
    parser.add_argument("--ema", type=float, default=0.0, help="also score the moving average of the weights with this decay, as train.ema_decay keeps it (default 0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the draws (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the arguments, the input's PSNR and the rows here (after every row)")
    args = parser.parse_args(argv)
    for name in ("pairs", "test_pairs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("steps", "every", "batch", "threads"):
        if getattr(args, name) < (0 if name == "steps" else 1):
            parser.error(f"--{name} must be >= {0 if name == 'steps' else 1}, got {getattr(args, name)}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.ema < 1:
        parser.error(f"--ema must be in [0, 1) (0: off), got {args.ema}")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: folder {args.json.parent} does not exist")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    train_and_score(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
