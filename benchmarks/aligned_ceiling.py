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

Each row also splits the test score by the photo the pairs were cut from (``meta.json``; crops of
one photo are not independent, and one unusual photo can decide the mean), and with
``--train-score-pairs N`` scores the first N *training* pairs the same way: a net that gains much
more on the pairs it learns from than on the test photos is overfitting them, one that gains about
as little on both is short of steps or capacity (``--dim`` widens the preset). Each row also gives
the median and largest global gradient norm of the steps since the row before (before clipping,
which ``--grad-clip`` turns on): a swing of the score that follows a spike of the norm is the
optimizer's, not the data's. Each score is also given without each image's mean colour error
(``[without the colour offset ...]``): where that one holds steady while the plain score swings,
the net shifts the colour of whole images (which costs a flat photo most), not its restoration.

Example: 256 training pairs of the demo's kind against 32 test pairs of other photos::

    jdrl synth runs/train256 --train 256 --test 1 --size 128 --max-radius 7 --scale 0.3:0.6 --seed 7
    jdrl synth runs/test64 --train 0 --test 64 --size 128 --max-radius 7 --scale 0.3:0.6 --seed 100
    PYTHONPATH=python:. python benchmarks/aligned_ceiling.py --train-data runs/train256 --pairs 256 \\
        --test-data runs/test64 --test-pairs 32 --steps 2000 --every 250 --json runs/ceiling.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import write_json


@dataclass
class Pairs:
    """Pairs of a ``jdrl synth`` split: their ``names``, ``blurry`` and ``sharp`` (``gt_aligned``)
    images, each ``(3, H, W)``, and ``photos``: pair name -> the photo it was cut from, as
    ``meta.json`` records it."""

    names: list[str]
    blurry: list[torch.Tensor]
    sharp: list[torch.Tensor]
    photos: dict[str, str]

    @classmethod
    def read(cls, root: Path, split: str, limit: int | None, argument: str) -> "Pairs":
        """The first ``limit`` (all for None) pairs of ``root/split``."""
        from jdrl.imageio import read_image
        from jdrl.synth import pair_sources

        folder = root / split
        paths = sorted((folder / "blur").glob("*.png"))[:limit]
        if not paths or not (folder / "gt_aligned").is_dir():
            raise SystemExit(f"{argument} {root}: no {split}/blur/*.png with {split}/gt_aligned (make it with `jdrl synth`)")
        return cls([path.stem for path in paths], [read_image(path) for path in paths],
                   [read_image(folder / "gt_aligned" / path.name) for path in paths], pair_sources(root, split))

    def __len__(self) -> int:
        return len(self.names)

    def first(self, count: int) -> "Pairs":
        """The first ``count`` of these pairs."""
        return Pairs(self.names[:count], self.blurry[:count], self.sharp[:count], self.photos)


@torch.no_grad()
def psnr_scores(net: torch.nn.Module | None, pairs: Pairs) -> dict[bool, tuple[float, dict[str, float]]]:
    """PSNR (dB) of the net's output (of the blurry input for ``net=None``) against ``gt_aligned``:
    the mean over the pairs, and photo -> the mean over that photo's pairs; under ``False`` as it
    is, under ``True`` offset-free, from the same outputs (one pass of the net).

    Offset-free: first take out of each output its mean colour error (the mean of output minus
    ``gt_aligned`` over the image, per channel). A flat photo such as moon, scored near 37 dB, loses
    several dB to a colour shift of a few hundredths that costs a textured photo a fraction of one:
    the difference between the two scores tells a shift of the whole image from a wrong restoration."""
    from jdrl.metrics import psnr
    from jdrl.synth import photo_means

    scores: dict[bool, dict[str, float]] = {False: {}, True: {}}
    for name, blurry, sharp in zip(pairs.names, pairs.blurry, pairs.sharp):
        estimate = (blurry[None] if net is None else net(blurry[None]).sharp).clamp(0, 1)
        scores[False][name] = float(psnr(estimate, sharp[None]))
        offset = (estimate - sharp[None]).mean(dim=(-2, -1), keepdim=True)
        scores[True][name] = float(psnr(estimate - offset, sharp[None]))
    return {offset_free: (sum(by_pair.values()) / len(by_pair), dict(sorted(photo_means(by_pair, pairs.photos).items())))
            for offset_free, by_pair in scores.items()}


def mean_psnr(net: torch.nn.Module | None, pairs: Pairs, offset_free: bool = False) -> tuple[float, dict[str, float]]:
    """One of :func:`psnr_scores`: the plain PSNR, or with ``offset_free`` the offset-free one."""
    return psnr_scores(net, pairs)[offset_free]


def offset_free_gain(row: dict, key: str, scores: tuple[float, dict[str, float]], inputs: tuple[float, dict[str, float]]) -> str:
    """Store in ``row`` the net's gain over the input once each image's mean colour error is taken
    out of both (``psnr_scores(...)[True]`` of each), as ``{key}offset_free_gain`` and ``..._by_photo``;
    -> the text for the row's line."""
    value, by_photo = scores
    row[f"{key}offset_free_gain"] = value - inputs[0]
    row[f"{key}offset_free_gain_by_photo"] = gains(by_photo, inputs[1])
    return f" [without the colour offset {row[f'{key}offset_free_gain']:+.3f}; " + ", ".join(
        f"{photo} {gain:+.2f}" for photo, gain in row[f"{key}offset_free_gain_by_photo"].items()) + "]"


def learning_rate(base: float, schedule: str, step: int, steps: int) -> float:
    """The rate of Adam step ``step`` (0-based) of ``steps``. ``constant``: ``base``; ``cosine``:
    from ``base`` at step 0 down toward ``base / 100``, which it reaches at ``step == steps``, just
    after the last step."""
    if schedule == "constant":
        return base
    floor = base / 100
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * step / max(steps, 1)))


def gains(scores: dict[str, float], inputs: dict[str, float]) -> dict[str, float]:
    """Photo -> its score minus the input's."""
    return {photo: value - inputs[photo] for photo, value in scores.items()}


def train_and_score(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    from jdrl.models.restormer import RESTORMER_PRESETS, JDRLDeblurNet
    from jdrl.train import clip_or_measure_gradients
    from jdrl.weight_average import WeightAverage

    train = Pairs.read(args.train_data, "train", args.pairs, "--train-data")
    test = Pairs.read(args.test_data, "test", args.test_pairs, "--test-data")
    # The first training pairs, which the net learns from.
    train_scored = train.first(args.train_score_pairs) if args.train_score_pairs else None
    torch.manual_seed(args.seed)
    preset = RESTORMER_PRESETS[args.preset]
    if args.dim is not None:
        preset = replace(preset, dim=args.dim)
    net = JDRLDeblurNet(preset)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    average = WeightAverage(net, args.ema) if args.ema > 0 else None
    draws = torch.Generator().manual_seed(args.seed + 1)
    input_scores = psnr_scores(None, test)
    (input_psnr, input_by_photo), offset_free_input = input_scores[False], input_scores[True]
    result = {"args": vars(args), "parameters": sum(p.numel() for p in net.parameters()), "train_pairs": len(train),
              "test_pairs": len(test), "input_psnr": input_psnr, "input_psnr_by_photo": input_by_photo, "rows": []}
    if train_scored is not None:
        result["train_scored_pairs"] = len(train_scored)
        result["train_input_psnr"], result["train_input_psnr_by_photo"] = mean_psnr(None, train_scored)
    norms: list[float] = []
    began = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            net.eval()
            scores = psnr_scores(net, test)
            value, by_photo = scores[False]
            row = {"step": step, "psnr": value, "gain": value - input_psnr, "gain_by_photo": gains(by_photo, input_by_photo)}
            line = f"step {step:5d}: {value:.3f} dB ({row['gain']:+.3f} over the input"
            line += "; " + ", ".join(f"{photo} {gain:+.2f}" for photo, gain in row["gain_by_photo"].items()) + ")"
            line += offset_free_gain(row, "", scores[True], offset_free_input)
            if train_scored is not None:
                row["train_psnr"], train_by_photo = mean_psnr(net, train_scored)
                row["train_gain"] = row["train_psnr"] - result["train_input_psnr"]
                row["train_gain_by_photo"] = gains(train_by_photo, result["train_input_psnr_by_photo"])
                line += f", training pairs {row['train_gain']:+.3f}"
            net.train()
            if average is not None:
                ema_scores = psnr_scores(average.net, test)
                row["ema_psnr"], ema_by_photo = ema_scores[False]
                row["ema_gain"] = row["ema_psnr"] - input_psnr
                row["ema_gain_by_photo"] = gains(ema_by_photo, input_by_photo)
                line += f", average {row['ema_psnr']:.3f} dB ({row['ema_gain']:+.3f})"
                line += offset_free_gain(row, "ema_", ema_scores[True], offset_free_input)
            if norms:
                # The global gradient norm (before clipping) over the steps since the last row:
                # spikes in it come before the swings of the score.
                row["grad_norm_median"], row["grad_norm_max"] = statistics.median(norms), max(norms)
                line += f", gradient norm median {row['grad_norm_median']:.3g} max {row['grad_norm_max']:.3g}"
                norms.clear()
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
            pair = (train.blurry[index], train.sharp[index])
            if bool(torch.rand(1, generator=draws) < 0.5):
                pair = (pair[0].flip(-1), pair[1].flip(-1))
            blurry.append(pair[0])
            sharp.append(pair[1])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, args.schedule, step, args.steps)
        loss = (net(torch.stack(blurry)).sharp - torch.stack(sharp)).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(clip_or_measure_gradients(net, args.grad_clip)))
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
    parser.add_argument("--dim", type=int, default=None, help="channels at level 1 instead of the preset's, even (level k has dim * 2**(k-1))")
    parser.add_argument("--train-score-pairs", type=int, default=0, help="also score the first N training pairs each row (default 0: none)")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4, the demo's)")
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="learning-rate schedule (default constant, the demo's)")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (default 1000)")
    parser.add_argument("--every", type=int, default=250, help="score every N steps (default 250)")
    parser.add_argument("--grad-clip", type=float, default=0.0, help="clip the global norm of the gradients to this before each step, as optim.grad_clip does (default 0: off)")
    parser.add_argument("--batch", type=int, default=1, help="pairs per step (default 1, the demo's)")
    parser.add_argument("--ema", type=float, default=0.0, help="also score the moving average of the weights with this decay, as train.ema_decay keeps it (default 0: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the draws (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the arguments, the input's PSNR and the rows here (after every row)")
    args = parser.parse_args(argv)
    for name in ("pairs", "test_pairs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.train_score_pairs < 0:
        parser.error(f"--train-score-pairs must be >= 0, got {args.train_score_pairs}")
    # Each downsampling halves the channels before a 2x2 pixel unshuffle, so they must be even (the
    # net itself checks that each level's heads divide its channels).
    if args.dim is not None and (args.dim < 2 or args.dim % 2):
        parser.error(f"--dim must be an even number >= 2, got {args.dim}")
    for name in ("steps", "every", "batch", "threads"):
        if getattr(args, name) < (0 if name == "steps" else 1):
            parser.error(f"--{name} must be >= {0 if name == 'steps' else 1}, got {getattr(args, name)}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not args.grad_clip >= 0:
        parser.error(f"--grad-clip must be >= 0 (0: off), got {args.grad_clip}")
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
