"""What did the reblurring net R learn: a blur, or the identity?

For each training run (a folder with the ``last.pt`` that ``jdrl train`` / ``jdrl ablate`` write),
the trained deblurring net F and R are run on the first training pairs of a synthetic set, and
the table reports, averaged over those pairs:

- ``max abs seed`` and ``mean abs seed``: R's kernel seeds (bounded by ``loss.seed_bound`` when set);
- ``w0``: the mean weight of level 0 (the identity) and ``w_top``: the mean of the largest weight;
- ``L_R``: the reblurring loss ``C(R(I_hat) - I_B)``; ``C(I_hat - I_B)``: what ``L_R`` would be
  with an identity R; ``C(R(I_hat) - I_hat)``: how much R changes its input (0.001 = the
  Charbonnier epsilon = not at all).

When the last three columns agree, R is the identity and ``L_R`` pulls ``I_hat`` towards ``I_B``.
Checkpoints from before ``loss.seed_bound`` / ``loss.weight_logit_bound`` existed are read as unbounded.

Example::

    PYTHONPATH=python:. python benchmarks/reblur_diagnostics.py runs/ablation256/runs/unet_eq1_seed0 \\
        --data runs/ablation256/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def diagnose(run_dir: Path, data_root: Path, pairs: int) -> dict[str, float]:
    from jdrl.checkpoint import load_checkpoint, load_deblur_net
    from jdrl.imageio import read_image
    from jdrl.defocus import checkpoint_loss_config
    from jdrl.losses import build_reblur_net, charbonnier

    checkpoint = run_dir / "last.pt"
    state = load_checkpoint(checkpoint)
    if state.get("reblur") is None:
        raise SystemExit(f"{checkpoint}: this run has no reblurring net (loss.reblurring=false)")
    # Settings a checkpoint predates (seed_bound, weight_logit_bound) were unbounded then.
    loss_config = checkpoint_loss_config(state)
    eps = loss_config.eps
    reblur_net = build_reblur_net(loss_config, state["config"]["model"]["levels"])
    reblur_net.load_state_dict(state["reblur"])
    reblur_net.eval()
    deblur_net = load_deblur_net(checkpoint)
    files = sorted((data_root / "train" / "blur").glob("*.png"))[:pairs]
    if not files:
        raise SystemExit(f"{data_root / 'train' / 'blur'}: no PNG pairs (made by `jdrl synth`)")
    sums: dict[str, float] = {}
    with torch.no_grad():
        for path in files:
            blurry = read_image(path)[None]
            estimate = deblur_net(blurry).sharp.clamp(0, 1)
            out = reblur_net(estimate, blurry)
            values = {
                "max abs seed": out.seeds.abs().max().item(),
                "mean abs seed": out.seeds.abs().mean().item(),
                "w0": out.weights[:, 0].mean().item(),
                "w_top": out.weights.max(dim=1).values.mean().item(),
                "L_R": charbonnier(out.reblurred - blurry, eps=eps).item(),
                "C(I_hat - I_B)": charbonnier(estimate - blurry, eps=eps).item(),
                "C(R(I_hat) - I_hat)": charbonnier(out.reblurred - estimate, eps=eps).item(),
            }
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value / len(files)
    return sums


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (each with last.pt)")
    parser.add_argument("--data", type=Path, required=True, help="synthetic data the runs trained on (train/blur)")
    parser.add_argument("--pairs", type=int, default=6, help="training pairs to average over (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rows = [(run, diagnose(run, args.data, args.pairs)) for run in args.runs]
    columns = list(rows[0][1])
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for run, values in rows:
        print(f"| {run} | " + " | ".join(f"{values[name]:.4g}" for name in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
