"""Train the reblurring net R alone on synthetic pairs: does it learn the blur, and at which settings?

R gets (a sharp image, the blurry image) and is trained with ``L_R = C(R(sharp) - blurry)``, nothing
else: no deblurring net. The sharp image is ``gt_aligned`` (ground truth, ``--target aligned``) or
the misaligned ``gt`` warped onto the blurry image by DIS flow (``--target warped``: what R's fit
in training uses, ``loss.reblur_pretrain`` and ``loss.reblur_anchor``, no ground truth; ``--mask``
counts only the pixels the calibration mask of that flow keeps). After training, on the
training pairs and on the test pairs it reports:

- PSNR of R's reblurred image against the blurry one, and of the sharp input itself (identity R);
- Spearman / Pearson between R's implied radius map (``jdrl.defocus.implied_radius``) and the true
  radius map, on textured pixels and on all (``jdrl.defocus.defocus_correlations``);
- the level-logit spread (max - min of R_wpn's logits per pixel, averaged) and the mean |seed|;
- ``level_weight_means`` (each level's mean weight) and ``level_weight_spatial_std`` (how much the
  weights vary over the image: ~0 when the logits sit at their bound and every pixel mixes the
  same levels);
- ``radius_true_below_2`` and ``radius_true_at_least_4``: R's radius where the true radius is
  below 2 px (nearly in focus) and where it is at least 4 px, as ``reblur_diagnostics.py`` reports;
- ``pseudo_map_spearman``: R's pseudo defocus map (Eq. 13, what F_B is trained to predict) read back
  as a radius the way F_B's map is (``jdrl.defocus.predicted_map_radius``), against the true
  radius: the best F_B's radius could score with this R.

``--seed-penalty`` and ``--logit-penalty`` add the hinges of ``loss.seed_penalty`` and
``loss.logit_penalty`` to ``L_R``. ``--crop`` trains on a random window of the pair at each step
(R's step costs in proportion to its pixels) and ``--repeats`` takes that many steps in a row on one
pair: is it steps or pixels that R needs, and do repeated steps on one pair count as new ones?
(The windows are drawn from the generator that draws the pairs, so ``--crop`` also changes which
pairs come in which order.)

Example (one thread, about two minutes)::

    PYTHONPATH=python:. python benchmarks/reblur_alone.py --out runs/reblur_alone --steps 200 --lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _pairs(root: Path, split: str, target: str, flow_estimator) -> list[dict[str, torch.Tensor]]:
    import jdrl_ext
    from jdrl.imageio import read_image
    from jdrl.losses import calibration_mask

    names = sorted(p.stem for p in (root / split / "blur").glob("*.png"))
    pairs = []
    for name in names:
        blurry = read_image(root / split / "blur" / f"{name}.png")[None]
        aligned = read_image(root / split / "gt_aligned" / f"{name}.png")[None]
        mask = None  # the calibration mask of the flow (Eq. 6, the loss's defaults), for --mask
        if target == "aligned":
            sharp = aligned
        else:
            gt = read_image(root / split / "gt" / f"{name}.png")[None]
            with torch.no_grad():
                flow = flow_estimator(blurry, gt)
                sharp = jdrl_ext.flow_warp(gt, flow, padding_mode="border")
                mask = calibration_mask(flow)
        radius = torch.from_numpy(np.load(root / split / "radius" / f"{name}.npy"))
        pairs.append({"name": name, "blurry": blurry, "sharp": sharp, "aligned": aligned[0], "radius": radius,
                      "mask": mask})
    return pairs


@torch.no_grad()
def measure(net, pairs, levels: int, seed_bound: float) -> dict[str, float]:
    from jdrl.defocus import defocus_correlations, implied_radius, predicted_map_radius
    from jdrl.losses import pseudo_defocus_map
    from jdrl.metrics import psnr

    net.eval()
    predicted, from_pseudo_map, psnr_reblur, psnr_identity, spread, seeds = [], [], [], [], [], []
    level_means, level_spatial_std = [], []
    # R's radius where the true blur is small / large, as benchmarks/reblur_diagnostics.py: per image
    # the mean over those pixels inside an m px border, then the mean over the images that have some.
    by_true_radius: dict[str, list[float]] = {"radius_true_below_2": [], "radius_true_at_least_4": []}
    inner = (slice(levels, -levels), slice(levels, -levels))  # m px: the reach of the kernels plus one
    for pair in pairs:
        out = net(pair["sharp"], pair["blurry"])
        predicted.append(implied_radius(out.seeds, out.weights, net.support)[0])
        r_inner, true_inner = predicted[-1][inner], pair["radius"][inner]
        for name, where in (("radius_true_below_2", true_inner < 2), ("radius_true_at_least_4", true_inner >= 4)):
            if where.any():
                by_true_radius[name].append(r_inner[where].mean().item())
        # The ceiling of F_B's radius: R's own pseudo map (Eq. 13, what F_B regresses) read back as a
        # radius the way F_B's map is (jdrl.defocus.predicted_map_radius).
        pseudo_map = pseudo_defocus_map(out.seeds, out.weights, weighted=True)
        from_pseudo_map.append(predicted_map_radius(pseudo_map, levels, seed_bound, net.support)[0])
        psnr_reblur.append(psnr(out.reblurred.clamp(0, 1), pair["blurry"]).item())
        psnr_identity.append(psnr(pair["sharp"], pair["blurry"]).item())
        if out.level_logits is not None:
            spread.append((out.level_logits.amax(dim=1) - out.level_logits.amin(dim=1)).mean().item())
        seeds.append(out.seeds.abs().mean().item())
        # Whether R_wpn chooses levels per pixel: each level's mean weight, and how much it varies
        # over the image (0 when the weight logits sit at their bound everywhere).
        level_means.append(out.weights.mean(dim=(0, 2, 3)))
        level_spatial_std.append(out.weights.std(dim=(2, 3)).mean().item())
    net.train()
    true_radius, aligned = [p["radius"] for p in pairs], [p["aligned"] for p in pairs]
    correlations = defocus_correlations(predicted, true_radius, aligned, levels - 1)
    pseudo = defocus_correlations(from_pseudo_map, true_radius, aligned, levels - 1)
    return {
        "psnr_reblurred": float(np.mean(psnr_reblur)),
        "psnr_identity": float(np.mean(psnr_identity)),
        **{key: value for key, value in correlations.items() if key != "pixels"},
        "logit_spread": float(np.mean(spread)) if spread else float("nan"),
        "mean_abs_seed": float(np.mean(seeds)),
        "level_weight_means": [round(float(w), 4) for w in torch.stack(level_means).mean(dim=0)],
        "level_weight_spatial_std": float(np.mean(level_spatial_std)),
        "mean_radius": float(np.mean([p.mean().item() for p in predicted])),
        **{name: float(np.mean(values)) if values else float("nan") for name, values in by_true_radius.items()},
        "pseudo_map_spearman": pseudo["spearman"],
        "pseudo_map_spearman_all": pseudo["spearman_all"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the data (made once) and result.json files")
    parser.add_argument("--data", type=Path, default=None, help="existing `jdrl synth` data (default: make OUT/data)")
    parser.add_argument("--train", type=int, default=32, help="training pairs to make (default 32)")
    parser.add_argument("--size", type=int, default=128, help="image side (default 128)")
    parser.add_argument("--shift", type=float, default=2.0, help="misalignment shift of gt in px (default 2)")
    parser.add_argument("--zoom", type=float, default=0.01, help="misalignment zoom of gt (default 0.01)")
    parser.add_argument("--target", choices=("aligned", "warped"), default="aligned")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--kernel-lr-scale", type=float, default=1.0,
                        help="R_kpn (the seeds' branch) at this fraction of --lr (optim.reblur_kernel_lr_scale)")
    parser.add_argument("--seed-penalty", type=float, default=0.0,
                        help="weight of mean(relu(|seed| - margin)^2) added to L_R (loss.seed_penalty)")
    parser.add_argument("--seed-penalty-margin", type=float, default=3.0, help="(loss.seed_penalty_margin)")
    parser.add_argument("--logit-penalty", type=float, default=0.0,
                        help="weight of the hinge penalty on R's level logits past the margin (loss.logit_penalty)")
    parser.add_argument("--logit-penalty-margin", type=float, default=3.0, help="(loss.logit_penalty_margin)")
    parser.add_argument("--seed-bound", type=float, default=6.0)
    parser.add_argument("--logit-bound", type=float, default=6.0, help="R_wpn logit bound (0: unbounded)")
    parser.add_argument("--mask", action="store_true",
                        help="with --target warped: L_R only where the calibration mask of the flow (Eq. 6, "
                             "lambda 0.35 and the loss's floor) trusts it, as training does with loss.reblur_fit_mask=true")
    parser.add_argument("--space", choices=("srgb", "linear"), default="srgb")
    parser.add_argument("--transfer", choices=("srgb", "gamma2.2"), default="srgb")
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--crop", type=int, default=None,
                        help="train on a random CROP x CROP window of the pair at each step (default: whole pairs)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="steps in a row on one pair before drawing the next (default 1; with --crop each on its own window)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--name", default=None, help="result file name (default from the settings)")
    parser.add_argument("--save", type=Path, default=None, help="write R's weights (state_dict) there")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    from jdrl.losses import MIN_PREFIT_CROP

    if args.crop is not None and args.crop < MIN_PREFIT_CROP:
        parser.error(f"--crop must be at least {MIN_PREFIT_CROP} px (a kernel of radius 7 and a pixel), got {args.crop}")
    if args.mask and args.target != "warped":
        parser.error("--mask needs --target warped (the mask is that of the flow that aligns gt)")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from jdrl.ablation import SMALL_SCALE_DATA
    from jdrl.flow import build_flow_estimator
    from jdrl.losses import LossConfig, build_reblur_net, charbonnier, logit_penalty, seed_penalty
    from jdrl.synth import make_synthetic_dataset

    data = args.data
    if data is None:
        data = args.out / "data"
        if not (data / "meta.json").is_file():
            make_synthetic_dataset(data, args.train, 4, size=args.size, shift=args.shift, zoom=args.zoom,
                                   max_radius=SMALL_SCALE_DATA["max_radius"], scale=SMALL_SCALE_DATA["scale"], seed=0)
    flow = build_flow_estimator("dis")
    train_pairs = _pairs(data, "train", args.target, flow)
    test_pairs = _pairs(data, "test", args.target, flow)
    smallest = min(min(pair["blurry"].shape[-2:]) for pair in train_pairs)
    if args.crop is not None and args.crop > smallest:
        parser.error(f"--crop {args.crop} is larger than the smallest training pair of {data} ({smallest} px)")
    torch.manual_seed(args.seed)
    config = LossConfig(seed_bound=args.seed_bound, weight_logit_bound=args.logit_bound, reblur_space=args.space,
                        reblur_transfer=args.transfer)
    net = build_reblur_net(config, args.levels)
    optimizer = torch.optim.Adam(net.parameter_groups(args.lr, args.kernel_lr_scale))
    began = time.perf_counter()
    history = []
    order = np.random.default_rng(args.seed)
    for step in range(1, args.steps + 1):
        if (step - 1) % args.repeats == 0:
            pair = train_pairs[int(order.integers(len(train_pairs)))]
        sharp, blurry, mask = pair["sharp"], pair["blurry"], pair["mask"] if args.mask else None
        if args.crop is not None:
            height, width = blurry.shape[-2:]
            top, left = int(order.integers(height - args.crop + 1)), int(order.integers(width - args.crop + 1))
            window = (..., slice(top, top + args.crop), slice(left, left + args.crop))
            sharp, blurry, mask = sharp[window], blurry[window], None if mask is None else mask[window]
        out = net(sharp, blurry)
        loss = charbonnier(out.reblurred - blurry, mask)
        if args.seed_penalty:
            loss = loss + seed_penalty(out.seeds, args.seed_penalty, args.seed_penalty_margin)
        if args.logit_penalty and out.level_logits is not None:
            loss = loss + logit_penalty(out.level_logits, args.logit_penalty, args.logit_penalty_margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps:
            spread = (out.level_logits.amax(1) - out.level_logits.amin(1)).mean().item() if out.level_logits is not None else float("nan")
            history.append({"step": step, "loss": loss.item(), "logit_spread": spread, "seconds": time.perf_counter() - began})
            print(f"step {step}: L_R {loss.item():.5f}, logit spread {spread:.3g}, {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - began
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": seconds,
        "train": measure(net, train_pairs, args.levels, args.seed_bound),
        "test": measure(net, test_pairs, args.levels, args.seed_bound),
        "history": history,
    }
    name = args.name or (f"{args.target}{'_mask' if args.mask else ''}_lr{args.lr:g}_lb{args.logit_bound:g}_{args.space}"
                         f"{'_' + args.transfer if args.space == 'linear' else ''}_s{args.steps}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.save is not None:
        torch.save(net.state_dict(), args.save)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    for split in ("train", "test"):
        values = result[split]
        print(f"{name} {split}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
