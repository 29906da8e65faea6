"""How close the flow-aligned sharp target is to the truth, for several flow references.

The deformation loss L_D (Eq. 7) trains the network towards ``I_S`` warped by optical flow onto a
reference: the estimate ``I_hat`` (the paper, after the warm-up) or the blurry input ``I_B``
(``loss.flow_reference=blurry``). On ``jdrl synth`` pairs the truth is known (``gt_aligned``: the
sharp image in the blurry image's frame), so this script measures each reference's target: PSNR of
``warp(I_S, flow(reference, I_S))`` against ``gt_aligned``, over all pixels and over the pixels the
calibration mask keeps (what L_D sees), the mask's share, and the same on the textured pixels only
(local standard deviation of ``gt_aligned`` above the split's median: where fine detail is).

References:
- ``blurry``: ``I_B``, as ``loss.flow_reference=blurry`` and the warm-up do.
- ``blurry:S``: ``I_B`` against ``I_S`` blurred by a Gaussian of ``S`` px for the flow estimate only
  (the target is still the warped ``I_S``): a flow between two images of similar blur.
- ``oracle``: ``gt_aligned`` itself, the estimate a perfect network would give: the best the
  paper's flow against ``I_hat`` can do.
- ``oracle:S``: ``gt_aligned`` blurred by ``S`` px, an estimate not yet sharp.
- ``estimate``: the output of a trained network (``--checkpoint``, its weight average where it
  kept one) on ``I_B``: what the paper's flow is taken against late in a training.
- ``refined``: ``loss.flow_refine``, as the loss computes it (``JDRLLoss._refined_flows``): R of
  ``--checkpoint`` (a run of ours) reads the blur from ``I_S`` warped onto ``I_B``, that blur is
  carried into ``I_S``'s frame, and both flows are estimated again between ``I_B`` and ``I_S``
  blurred by it: two images of one blur.
- ``composed:N``: another refinement, N times: R reblurs the current target, a second flow
  between ``I_B`` and it corrects the first, and the two are composed (``I_S`` resampled once).
  It refines the first flow only (no reverse score).

Each flow's mean over the image is compared with that of the flow against the truth: the mean of
that offset over the pairs says whether the error has a common direction, its mean length how
large it is per pair. Each reference is also scored in the reverse direction, as the cycle term of Eq. 7 warps: the
truth warped onto ``I_S`` by the flow from ``I_S`` to the reference, against ``I_S`` (the
exposure and colour change between the two shots are in every row alike).

With ``--anchor L`` each ``oracle`` and ``estimate`` reference is also scored "anchored": the flow
against it plus a Gaussian low-pass of ``L`` px of the difference between the flow against ``I_B``
and it. Its coarse part then comes from ``I_B``, which does not move with the network's output,
and its detail from the sharper reference.

Example::

    PYTHONPATH=python:benchmarks python benchmarks/flow_target.py --data runs/train256 --split train --pairs 64 \\
        --references blurry blurry:1 oracle
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def parse_reference(text: str) -> tuple[str, float]:
    """``"blurry"``, ``"blurry:1.5"``, ``"oracle"``, ``"oracle:0.8"`` -> (kind, sigma)."""
    kind, _, sigma = text.partition(":")
    if kind not in ("blurry", "oracle", "estimate", "refined", "composed"):
        raise argparse.ArgumentTypeError(
            f"reference must be blurry[:SIGMA], oracle[:SIGMA], estimate[:SIGMA], refined or composed:N, got {text!r}")
    try:
        value = float(sigma) if sigma else 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"reference {text!r}: SIGMA must be a number") from None
    if kind == "composed" and not (value >= 1 and value == int(value)):
        raise argparse.ArgumentTypeError(f"reference {text!r}: N must be a whole number >= 1")
    if kind == "refined" and sigma:
        raise argparse.ArgumentTypeError(f"reference {text!r}: refined takes no number")
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"reference {text!r}: SIGMA must be finite and >= 0")
    return kind, value


def textured(image: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Local standard deviation of ``image``'s luma over ``window`` px, ``(B, 1, H, W)``."""
    luma = image.mean(dim=1, keepdim=True)
    mean = F.avg_pool2d(luma, window, stride=1, padding=window // 2, count_include_pad=False)
    square = F.avg_pool2d(luma**2, window, stride=1, padding=window // 2, count_include_pad=False)
    return (square - mean**2).clamp_min(0).sqrt()


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> float:
    """PSNR over the pixels where ``keep`` (B, 1, H, W) is True (all channels); nan if none."""
    weights = keep.to(pred.dtype).expand_as(pred)
    count = float(weights.sum())
    if count == 0:
        return float("nan")
    mse = float(((pred - target) ** 2 * weights).sum()) / count
    return 10 * math.log10(1 / max(mse, 1e-12))


def nanmean(values: list[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return sum(kept) / len(kept) if kept else float("nan")


def lowpass(flow: torch.Tensor, sigma: float) -> torch.Tensor:
    from deformation_shift import gaussian_blur

    return gaussian_blur(flow, sigma)


def composed(flow: torch.Tensor, blurry: torch.Tensor, sharp: torch.Tensor, reblur_net, estimator, times: int, loss_config) -> torch.Tensor:
    """The flow of ``I_S`` onto ``I_B`` corrected ``times`` times by the flow between ``I_B`` and
    the target reblurred by R (see the module docstring); R reads the blur once, from the first target."""
    from jdrl.losses import loss_warp

    with torch.no_grad():
        out = reblur_net(loss_warp(sharp, flow, loss_config), blurry)
        reblurred = out.reblurred
        for _ in range(times):
            correction = estimator(blurry.clamp(0, 1), reblurred.clamp(0, 1))
            # target(p) = I_S(p + correction(p) + flow(p + correction(p))): one resampling of I_S.
            flow = correction + loss_warp(flow, correction, loss_config)
            reblurred = reblur_net.blur(loss_warp(sharp, flow, loss_config), out.seeds, out.weights)
    return flow


def score(paths: list[Path], references: list[tuple[str, float]], border: int, checkpoint: Path | None = None,
          anchor: float = 0.0) -> dict:
    from deformation_shift import gaussian_blur
    from jdrl.config import load_config
    from jdrl.flow import build_flow_estimator
    from jdrl.imageio import read_image
    from jdrl.losses import calibration_mask, loss_warp

    config = load_config(None, {})
    estimator = build_flow_estimator(config.flow.backend, config.flow.weights)
    triples = []
    for path in paths:
        split = path.parent.parent
        triples.append((path.stem, read_image(path)[None], read_image(split / "gt" / path.name)[None], read_image(split / "gt_aligned" / path.name)[None]))
    detail = torch.cat([textured(truth) for _, _, _, truth in triples])
    threshold = float(detail.median())
    estimates = None
    if any(kind == "estimate" for kind, _ in references):
        from jdrl.checkpoint import load_deblur_net
        from jdrl.inference import _split_output

        net = load_deblur_net(checkpoint)
        with torch.no_grad():
            estimates = [_split_output(net(blurry))[0].clamp(0, 1) for _, blurry, _, _ in triples]
    loss = None
    if any(kind in ("refined", "composed") for kind, _ in references):
        from jdrl.defocus import load_reblur_net
        from jdrl.losses import JDRLLoss

        loaded = load_reblur_net(checkpoint)
        if loaded is None:
            raise ValueError(f"--checkpoint {checkpoint}: holds no reblurring net (a run of ours has one)")
        reblur_net, trained = loaded
        # R's run's own loss settings (its colour space, bounds and warps), keys it predates as they were then.
        loss = JDRLLoss(trained, estimator, levels=reblur_net.levels, reblur_net=reblur_net)

    def flows(kind: str, sigma: float, index: int, blurry, sharp, truth) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (the flow from the reference to I_S, the flow from I_S to the reference or None)."""
        if kind in ("blurry", "refined", "composed"):
            moving = gaussian_blur(sharp, sigma) if kind == "blurry" else sharp
            forward = estimator(blurry.clamp(0, 1), moving.clamp(0, 1))
            if kind == "blurry":
                return forward, estimator(moving.clamp(0, 1), blurry.clamp(0, 1))
            if kind == "composed":
                return composed(forward, blurry, sharp, loss.reblur_net, estimator, int(sigma), loss.config), None
            with torch.no_grad():
                # R's fit on the pair the first flow aligns, as the loss fits it; then the loss's refinement.
                fitted = loss.reblur_net(loss_warp(sharp, forward, loss.config), blurry)
            return loss._refined_flows(sharp, blurry, fitted.seeds, fitted.weights)
        reference = gaussian_blur(truth if kind == "oracle" else estimates[index], sigma).clamp(0, 1)
        return estimator(reference, sharp.clamp(0, 1)), estimator(sharp.clamp(0, 1), reference)

    # The flow against the truth, per pair: each flow's mean offset from it says whether its error
    # has a common direction (a bias) or not.
    truth_flows = [estimator(truth.clamp(0, 1), sharp.clamp(0, 1)) for _, _, sharp, truth in triples]
    variants = [(kind, sigma, 0.0) for kind, sigma in references]
    if anchor > 0:
        variants += [(kind, sigma, anchor) for kind, sigma in references if kind in ("oracle", "estimate")]
    rows = {}
    for kind, sigma, low in variants:
        name = kind + (f":{sigma:g}" if sigma else "") + (f" anchored {low:g}" if low else "")
        per_pair = []
        for index, ((stem, blurry, sharp, truth), local) in enumerate(zip(triples, detail)):
            flow, reverse = flows(kind, sigma, index, blurry, sharp, truth)
            if low:
                flow = flow + lowpass(estimator(blurry.clamp(0, 1), sharp.clamp(0, 1)) - flow, low)
                reverse = reverse + lowpass(estimator(sharp.clamp(0, 1), blurry.clamp(0, 1)) - reverse, low)
            warped = loss_warp(sharp, flow, config.loss)
            mask = calibration_mask(flow, config.loss.mask_lambda, config.loss.mask_tau)
            inside = torch.zeros_like(mask)
            inside[..., border : mask.shape[-2] - border, border : mask.shape[-1] - border] = True
            rich = local[None] > threshold
            offset = (flow - truth_flows[index])[..., border : flow.shape[-2] - border, border : flow.shape[-1] - border].mean(dim=(2, 3))[0]
            per_pair.append({
                "pair": stem,
                "psnr": masked_psnr(warped, truth, inside),
                "psnr_masked": masked_psnr(warped, truth, inside & mask),
                "psnr_textured": masked_psnr(warped, truth, inside & rich),
                "psnr_textured_masked": masked_psnr(warped, truth, inside & mask & rich),
                "mask_kept": float((mask & inside).sum() / inside.sum()),
                "offset_x": float(offset[0]),
                "offset_y": float(offset[1]),
                "offset_length": float(offset.norm()),
                "psnr_reverse": float("nan") if reverse is None else masked_psnr(loss_warp(truth, reverse, config.loss), sharp, inside),
            })
        means = {key: nanmean([row[key] for row in per_pair]) for key in per_pair[0] if key != "pair"}
        rows[name] = {"mean": means, "pairs": per_pair}
        print(f"{name:>12}: PSNR {means['psnr']:.2f}, masked {means['psnr_masked']:.2f}, textured {means['psnr_textured']:.2f}, "
              f"textured masked {means['psnr_textured_masked']:.2f}, mask keeps {means['mask_kept']:.3f}; "
              f"reverse {means['psnr_reverse']:.2f}; mean offset from the truth's flow ({means['offset_x']:+.3f}, "
              f"{means['offset_y']:+.3f}) px, length {means['offset_length']:.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from jdrl.process_env import flush_denormals, set_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="`jdrl synth` folder (its SPLIT/blur, gt and gt_aligned are read)")
    parser.add_argument("--split", default="train", help="train or test (default train)")
    parser.add_argument("--pairs", type=int, default=64, help="the first N pairs (default 64)")
    parser.add_argument("--references", type=parse_reference, nargs="+", default=[("blurry", 0.0), ("oracle", 0.0)],
                        help="any of blurry[:SIGMA], oracle[:SIGMA], estimate[:SIGMA], refined, composed:N (default: blurry oracle)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained run's checkpoint: its net gives the estimate reference, its reblurring net refined and composed")
    parser.add_argument("--anchor", type=float, default=0.0, help="also score oracle/estimate anchored to I_B's flow by a low-pass of this many px (0: not)")
    parser.add_argument("--border", type=int, default=4, help="pixels left out along each side (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch and OpenCV (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-pair rows here")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.threads < 1 or args.border < 0:
        parser.error(f"--pairs and --threads must be >= 1 and --border >= 0, got {args.pairs}, {args.threads}, {args.border}")
    for folder in ("blur", "gt", "gt_aligned"):
        if not any((args.data / args.split / folder).glob("*.png")):
            parser.error(f"--data {args.data}: no {args.split}/{folder}/*.png (make it with `jdrl synth`)")
    if any(kind in ("estimate", "refined", "composed") for kind, _ in args.references) and args.checkpoint is None:
        parser.error("--references estimate, refined and composed need --checkpoint")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    if not (args.anchor >= 0 and math.isfinite(args.anchor)):
        parser.error(f"--anchor must be finite and >= 0, got {args.anchor}")
    set_threads(args.threads)
    flush_denormals()
    paths = sorted((args.data / args.split / "blur").glob("*.png"))[: args.pairs]
    print(f"{len(paths)} pairs of {args.data / args.split}", flush=True)
    rows = score(paths, args.references, args.border, args.checkpoint, args.anchor)
    if args.json is not None:
        from common import write_json

        write_json(args.json, {"args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
                               "pairs": len(paths), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
