"""Train the defocus-map predictor F_B alone: can it learn what ``L_P`` asks of it, and how fast?

In joint training (Eq. 2) F_B regresses R's pseudo defocus map ``B_P`` (Eq. 13) from the blurry
image alone, while the deblurring loss also pulls on it through the fusion and R's targets move.
This script removes both: it takes a trained run's R (frozen, run on its inputs of training, as
``jdrl.defocus.defocus_radii`` does), computes ``B_P`` once per pair, and trains a fresh F_B
(``jdrl.models.defocus_map.DefocusMapNet`` at the preset's size) on ``C(F_B(I_B) - B_P)`` with
Adam and random flips, one pair per step, as ``jdrl demo`` trains. ``--target radius`` trains the
same body with one output channel on the true radius map instead (``jdrl synth`` writes it): how
fast F_B could learn the blur from the blurry image with perfect labels.

Every ``--log-every`` steps it reports, on the test pairs:

- ``L_P``: ``C(F_B(I_B) - target)`` (Charbonnier, the loss's epsilon), beside ``L_P of the mean``:
  the loss of the constant map that is the training targets' per-channel mean (with ``--moving``,
  of R's maps of that moment). An F_B at or above
  it has learned no more than the mean;
- ``spearman`` / ``spearman_all``: F_B's map as a radius (``jdrl.defocus.predicted_map_radius``
  for ``B_P``, the map itself for ``--target radius``) against the true radius, textured pixels /
  all pixels (``jdrl.defocus.defocus_correlations``);
- ``vs R``: the same against R's own implied radius (with ``--ema``, the averaged R's).

With ``--moving`` F_B's initial weights are drawn after the fresh R's, so they differ from those of
a frozen-target run with the same ``--seed``.

The first line, ``run's F_B``, scores the run's jointly trained F_B the same way (``pseudo``
target only).

``--moving`` (anchored runs, ``loss.reblur_anchor``) puts one thing of joint training back: the
target moves. A fresh R trains beside F_B, as joint training fits it (its fit ``C(R(warp(I_S),
I_B) - I_B)`` with the run's seed and logit penalties, at the run's ``optim.reblur_lr``, alone for
the run's warm-up steps first), and each F_B step regresses R's pseudo map of that moment; the
test scores use R's map of that moment too. Still no ``L_D``. ``--ema D`` takes the targets from
an exponential moving average of R's weights instead (decay ``D`` per step; a slow teacher).

Example (one thread, about 3 minutes; ``jdrl demo`` trains 448 steps, ``L_P`` joins after the 32
warm-up steps)::

    PYTHONPATH=python:. python benchmarks/defocus_map_alone.py runs/demo/runs/ours --data runs/demo/data \\
        --checkpoint best.pt --steps 448
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def load_run(checkpoint: Path) -> dict:
    """What the script needs of a run, loaded once: its checkpoint ``state``, its frozen R
    (``net_r``) and loss settings (``config``), its deblurring net and its flow estimator."""
    from jdrl.checkpoint import load_checkpoint, load_deblur_net
    from jdrl.defocus import load_reblur_net
    from jdrl.flow import build_flow_estimator

    state = load_checkpoint(checkpoint)
    reblur = load_reblur_net(state)
    if reblur is None:
        raise SystemExit(f"{checkpoint}: this run has no reblurring net, so no pseudo map to learn")
    net_r, config = reblur
    if not (config.pseudo_supervision and config.weighted_pseudo_map):
        raise SystemExit(f"{checkpoint}: this run's F_B was not trained on Eq. 13's weighted pseudo map")
    flow_config = state["config"].get("flow") or {}
    return {
        "state": state,
        "net_r": net_r,
        "config": config,
        "deblur": load_deblur_net(checkpoint).eval(),
        "flow": build_flow_estimator(flow_config.get("backend", "dis"), flow_config.get("weights")),
    }


def load_pairs(run: dict, data_root: Path, split: str) -> list[dict]:
    """The pairs of ``data_root/split`` with R's pseudo map and implied radius (R frozen, run on its
    inputs of training) and the run's own F_B map; ``run``: :func:`load_run`'s."""
    from jdrl.defocus import implied_radius, reblur_net_input
    from jdrl.imageio import read_image
    from jdrl.losses import pseudo_defocus_map

    net_r, config, deblur, flow = run["net_r"], run["config"], run["deblur"], run["flow"]
    pairs = []
    for blur_path in sorted((data_root / split / "blur").glob("*.png")):
        stem = blur_path.stem
        blurry = read_image(blur_path)[None]
        sharp = read_image(data_root / split / "gt" / blur_path.name)[None]
        with torch.no_grad():
            output = deblur(blurry)
            r_input = reblur_net_input(blurry, output.sharp.clamp(0, 1), config, sharp, flow)
            seeds, weights, _ = net_r.predict(r_input, blurry)
            pairs.append({
                "blurry": blurry,
                "r_input": r_input,
                "pseudo": pseudo_defocus_map(seeds, weights, weighted=True),
                "r_radius": implied_radius(seeds, weights, net_r.support)[0],
                "run_map": output.defocus_map,
                "radius": torch.from_numpy(np.load(data_root / split / "radius" / f"{stem}.npy")).float(),
                "aligned": read_image(data_root / split / "gt_aligned" / blur_path.name),
            })
    if not pairs:
        raise SystemExit(f"no pairs in {data_root / split / 'blur'}")
    return pairs


def target_of(pair: dict, target: str) -> torch.Tensor:
    """What F_B regresses for ``pair``: R's pseudo map ``(1, S, H, W)`` or the true radius ``(1, 1, H, W)``."""
    return pair["pseudo"] if target == "pseudo" else pair["radius"][None, None]


@torch.no_grad()
def score(maps: list[torch.Tensor], pairs: list[dict], target: str, mean: torch.Tensor, levels: int,
          seed_bound: float, support: str, eps: float) -> dict[str, float]:
    """``L_P``, ``L_P of the mean`` and the Spearman columns of the module docstring."""
    from jdrl.defocus import defocus_correlations, predicted_map_radius
    from jdrl.losses import charbonnier

    if target == "pseudo":
        radii = [predicted_map_radius(m, levels, seed_bound, support)[0] for m in maps]
    else:
        radii = [m[0, 0] for m in maps]
    aligned = [p["aligned"] for p in pairs]
    truth = defocus_correlations(radii, [p["radius"] for p in pairs], aligned, levels - 1)
    versus_r = defocus_correlations(radii, [p["r_radius"] for p in pairs], aligned, levels - 1)
    return {
        "L_P": float(np.mean([charbonnier(m - target_of(p, target), eps=eps).item() for m, p in zip(maps, pairs)])),
        "L_P_of_mean": float(np.mean([charbonnier(mean - target_of(p, target), eps=eps).item() for p in pairs])),
        "spearman": truth["spearman"],
        "spearman_all": truth["spearman_all"],
        "spearman_vs_r": versus_r["spearman"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a training run's folder (Eq. 2, with F_B and R)")
    parser.add_argument("--data", type=Path, required=True, help="`jdrl synth` data (train/ and test/ with radius/)")
    parser.add_argument("--checkpoint", default="last.pt", help="checkpoint file in the run (jdrl demo: best.pt)")
    parser.add_argument("--target", choices=("pseudo", "radius"), default="pseudo")
    parser.add_argument("--steps", type=int, default=448)
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam rate (jdrl demo's default)")
    parser.add_argument("--preset", default=None, help="size of F_B (default: the run's model.preset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=112)
    parser.add_argument("--moving", action="store_true",
                        help="train a fresh R beside F_B (anchored runs): F_B regresses R's pseudo map of each step")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="with --moving: F_B's targets from an average of R's weights, decay EMA per step (e.g. 0.99)")
    parser.add_argument("--json", type=Path, default=None, help="write the scores there")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.log_every < 1:
        parser.error("--steps and --log-every must be positive")
    if not 0.0 <= args.ema < 1.0:
        parser.error(f"--ema must be a decay in [0, 1), got {args.ema}")
    if args.ema > 0 and not args.moving:
        parser.error("--ema averages the R that --moving trains; add --moving")
    if args.moving and args.target != "pseudo":
        parser.error("--moving needs --target pseudo (the true radius does not move)")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from jdrl.config import REBLUR_LR_CAP
    from jdrl.defocus import implied_radius
    from jdrl.losses import build_reblur_net, charbonnier, logit_penalty, pseudo_defocus_map, seed_penalty
    from jdrl.models.common import TwoScaleResNet, he_initialize
    from jdrl.models.defocus_map import DefocusMapNet
    from jdrl.models.restormer import RESTORMER_PRESETS

    run = load_run(args.run / args.checkpoint)
    state, net_r, config = run["state"], run["net_r"], run["config"]
    model = state["config"]["model"]
    preset = RESTORMER_PRESETS[args.preset or model["preset"]]
    levels = int(model["levels"])
    train_pairs = load_pairs(run, args.data, "train")
    test_pairs = load_pairs(run, args.data, "test")

    def training_mean() -> torch.Tensor:
        """The constant map of the baseline: the training targets' per-channel mean."""
        return torch.cat([target_of(p, args.target) for p in train_pairs]).mean(dim=(0, 2, 3), keepdim=True)

    def measure(maps: list[torch.Tensor]) -> dict[str, float]:
        return score(maps, test_pairs, args.target, training_mean(), levels, config.seed_bound, net_r.support, config.eps)

    rows = []
    if args.target == "pseudo":
        rows.append({"step": "run's F_B", **measure([p["run_map"] for p in test_pairs])})
    torch.manual_seed(args.seed)
    fresh_r = None
    if args.moving:
        if not config.reblur_anchor:
            raise SystemExit("--moving needs an anchored run (loss.reblur_anchor): R's input must not depend on F")
        if config.reblur_fit_mask:
            raise SystemExit("--moving fits R on every pixel; this run's loss.reblur_fit_mask is true (not supported)")
        optim = state["config"]["optim"]
        # As jdrl.config.OptimConfig.effective_reblur_lr: reblur_lr, or lr capped when unset.
        reblur_lr = optim["reblur_lr"] if optim.get("reblur_lr") is not None else min(optim["lr"], REBLUR_LR_CAP)
        fresh_r = build_reblur_net(config, levels)
        # --ema: the targets come from an exponential moving average of R's weights (a slow teacher).
        teacher = copy.deepcopy(fresh_r).requires_grad_(False) if args.ema > 0 else None
        r_optimizer = torch.optim.Adam(fresh_r.parameter_groups(reblur_lr, optim.get("reblur_kernel_lr_scale", 1.0)))

        def fit_r(pair: dict, flips: list[int]) -> torch.Tensor:
            """One step of R's fit on the pair, as joint training takes it; -> R's pseudo map, detached."""
            r_input, blurry = pair["r_input"], pair["blurry"]
            if flips:
                r_input, blurry = torch.flip(r_input, flips), torch.flip(blurry, flips)
            out = fresh_r(r_input, blurry)
            fit = charbonnier(out.reblurred - blurry, eps=config.eps)
            if config.seed_penalty > 0 and out.seeds.requires_grad:
                fit = fit + seed_penalty(out.seeds, config.seed_penalty, config.seed_penalty_margin)
            if config.logit_penalty > 0 and out.level_logits is not None:
                fit = fit + logit_penalty(out.level_logits, config.logit_penalty, config.logit_penalty_margin)
            r_optimizer.zero_grad(set_to_none=True)
            (config.alpha * fit).backward()
            r_optimizer.step()
            if teacher is None:
                return pseudo_defocus_map(out.seeds.detach(), out.weights.detach(), weighted=True)
            with torch.no_grad():
                for slow, fast in zip(teacher.parameters(), fresh_r.parameters()):
                    slow.lerp_(fast, 1.0 - args.ema)
                seeds, weights, _ = teacher.predict(r_input, blurry)
            return pseudo_defocus_map(seeds, weights, weighted=True)

        @torch.no_grad()
        def refresh_targets(pairs: list[dict]) -> None:
            source = teacher if teacher is not None else fresh_r
            for pair in pairs:
                seeds, weights, _ = source.predict(pair["r_input"], pair["blurry"])
                pair["pseudo"] = pseudo_defocus_map(seeds, weights, weighted=True)
                pair["r_radius"] = implied_radius(seeds, weights, source.support)[0]

        # R alone through the run's warm-up (with loss.reblur_pretrain; L_P joins after it), one step
        # per pair and epoch (train.max_steps_per_epoch is not read), pairs from their own stream.
        warmup_order = np.random.default_rng(args.seed + 1)
        warmup_steps = config.flow_warmup_epochs * len(train_pairs) if config.reblur_after_warmup and config.reblur_pretrain else 0
        for _ in range(warmup_steps):
            fit_r(train_pairs[int(warmup_order.integers(len(train_pairs)))], [])
    if args.target == "pseudo":
        net = DefocusMapNet(levels, preset.defocus_width, preset.defocus_blocks)
    else:
        net = TwoScaleResNet(3, 1, preset.defocus_width, preset.defocus_blocks)
        he_initialize(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    order = np.random.default_rng(args.seed)
    began = time.perf_counter()
    for step in range(1, args.steps + 1):
        pair = train_pairs[int(order.integers(len(train_pairs)))]
        flips = [dim for dim, draw in ((3, order.random()), (2, order.random())) if draw < 0.5]
        blurry, target = pair["blurry"], target_of(pair, args.target)
        if flips:
            blurry, target = torch.flip(blurry, flips), torch.flip(target, flips)
        if fresh_r is not None:
            target = fit_r(pair, flips)  # R's map of this moment (of the flipped pair)
        loss = charbonnier(net(blurry) - target, eps=config.eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps:
            net.eval()
            if fresh_r is not None:
                refresh_targets(train_pairs + test_pairs)
            with torch.no_grad():
                row = {"step": step, **measure([net(p["blurry"]) for p in test_pairs])}
            net.train()
            row["seconds"] = time.perf_counter() - began
            rows.append(row)
            print(f"step {step}: test L_P {row['L_P']:.4f} (mean {row['L_P_of_mean']:.4f}), Spearman {row['spearman']:.3f}",
                  file=sys.stderr, flush=True)

    print(f"| F_B alone, target {args.target} | test L_P | L_P of the mean | spearman | spearman_all | vs R |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['step']} | {row['L_P']:.4f} | {row['L_P_of_mean']:.4f} | {row['spearman']:.3f} | "
              f"{row['spearman_all']:.3f} | {row['spearman_vs_r']:.3f} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
