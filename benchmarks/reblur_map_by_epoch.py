"""R's defocus map epoch by epoch: how well the reblurring net's implied radius follows the true blur
after its prefit and after each epoch of a training.

The demo scores R's map once, at the epoch it chooses. This script trains a config (a demo's
``runs/ours/config.yaml``, with ``--set`` on top) and scores R after its prefit
(``loss.reblur_prefit_steps``) and after every epoch, as the demo scores it: the Spearman and
Pearson correlations (textured pixels) of R's implied radius with the true radius over the test
pairs of ``--data`` (``jdrl.defocus.defocus_correlations``; an anchored R reads the misaligned
``gt`` warped onto the blurry image by DIS flow). It shows whether R's map settles or swings from
one epoch to the next, and where a run's chosen epoch lands::

    PYTHONPATH=python:benchmarks python benchmarks/reblur_map_by_epoch.py runs/demo/runs/ours/config.yaml \\
        --data runs/demo/data --out runs/map_by_epoch [--set optim.reblur_lr=1e-3 --set optim.reblur_prefit_lr=null]

The training is the trainer's own (``jdrl.train._Trainer``: its prefit, then its epochs; no
validation, no checkpoints), so with the config's seed it takes the same steps as ``jdrl train`` with
that config. The scoring runs R in eval mode and draws nothing from the random generators.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def test_pairs(data: Path, split: str, count: int | None) -> list[tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]]:
    """``(blurry, misaligned gt, true radius, gt_aligned)`` of the first ``count`` pairs of
    ``data/split``, as ``jdrl synth`` writes them; SystemExit naming ``--data`` when a folder is missing."""
    from jdrl.imageio import read_image

    root = data / split
    for folder in ("blur", "gt", "gt_aligned", "radius"):
        if not (root / folder).is_dir():
            raise SystemExit(f"--data {data}: no {split}/{folder}/ (make the pairs with `jdrl synth`, which writes true radius maps)")
    paths = sorted((root / "blur").glob("*.png"))[:count]
    if not paths:
        raise SystemExit(f"--data {data}: no {split}/blur/*.png")
    return [(read_image(path)[None], read_image(root / "gt" / path.name)[None], np.load(root / "radius" / f"{path.stem}.npy"),
             read_image(root / "gt_aligned" / path.name)) for path in paths]


def score_map(reblur_net: torch.nn.Module, loss_config: Any, pairs: list, flow_estimator: Any) -> dict[str, float]:
    """R's implied radius against the true one over ``pairs`` (``jdrl.defocus.defocus_correlations``)."""
    from jdrl.defocus import defocus_correlations, defocus_radii

    was_training = reblur_net.training
    reblur_net.eval()
    predicted, true, sharp = [], [], []
    for blurry, gt, radius, aligned in pairs:
        predicted.append(defocus_radii(blurry, None, None, (reblur_net, loss_config), gt, flow_estimator)["reblur"])
        true.append(radius)
        sharp.append(aligned)
    reblur_net.train(was_training)
    return defocus_correlations(predicted, true, sharp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="a training config with a reblurring net (e.g. a demo's runs/ours/config.yaml)")
    parser.add_argument("--data", type=Path, required=True, help="`jdrl synth` pairs with true radius maps, scored from --split")
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--pairs", type=int, default=None, help="score the first N pairs of the split (default all)")
    parser.add_argument("--out", type=Path, required=True, help="the run's folder (train.out_dir): its log goes there")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as `jdrl train --set` (repeatable)")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs (default the config's train.epochs)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here (default OUT/map_by_epoch.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.pairs is not None and args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    if not args.config.is_file():
        parser.error(f"config {args.config}: not a file")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the training commands do

    from jdrl.config import ConfigError, load_config
    from jdrl.flow import build_flow_estimator
    from jdrl.train import _setup_distributed, _Trainer

    sets = [*args.overrides, f"train.out_dir={args.out}"]
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    try:
        config = load_config(args.config, sets)  # validated
    except ConfigError as error:
        parser.error(f"config {args.config}: {error}")
    if not config.loss.reblurring:
        parser.error(f"config {args.config}: loss.reblurring is false, there is no reblurring net to score")
    pairs = test_pairs(args.data, args.split, args.pairs)
    flow_estimator = build_flow_estimator("dis")

    trainer = _Trainer(config, _setup_distributed(config))
    trainer.restore(None)
    trainer.open_log(None)
    reblur_net, loss_config = trainer.loss.reblur_net, config.loss
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()

    def record(epoch: int) -> None:
        rows.append({"epoch": epoch, **score_map(reblur_net, loss_config, pairs, flow_estimator),
                     "seconds": time.perf_counter() - began})
        row = rows[-1]
        print(f"{'after the prefit' if epoch == 0 else f'epoch {epoch:3d}'}: Spearman {row['spearman']:.3f}, "
              f"Pearson {row['pearson']:.3f} (textured), {row['seconds']:.0f} s", flush=True)

    try:
        trainer.prefit_reblur()
        record(0)
        for epoch in range(config.train.epochs):
            sums, started = trainer.train_epoch(epoch)
            trainer.end_epoch(epoch, sums, started)
            record(epoch + 1)
    finally:
        trainer.logger.close()
    spearman = [row["spearman"] for row in rows[1:]]
    print(f"epochs 1-{len(spearman)}: Spearman {min(spearman):.3f} to {max(spearman):.3f}, "
          f"largest change from one epoch to the next {max((abs(b - a) for a, b in zip(spearman, spearman[1:])), default=0.0):.3f}")
    payload = {"config": str(args.config), "overrides": args.overrides, "data": str(args.data), "split": args.split,
               "pairs": len(pairs), "prefit_steps": config.loss.reblur_prefit_steps,
               "reblur_lr": config.optim.effective_reblur_lr(), "reblur_prefit_lr": config.optim.effective_reblur_prefit_lr(),
               "rows": rows}
    path = args.json if args.json is not None else args.out / "map_by_epoch.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
