"""How the deformation loss L_D (Eq. 7) scores an estimate moved by a fraction of a pixel.

L_D compares the estimate with the sharp image warped onto it by optical flow (and back, the cycle),
so it is meant not to care where the estimate lies. This script measures whether it does care: on
pairs whose sharp image is perfectly aligned (``gt_aligned`` of a ``jdrl synth`` folder), it stands
in for a network's output with ``gt_aligned`` blurred by a Gaussian of ``--blur`` px (an output not
yet sharp; 0: exact) and moved by a sub-pixel shift (a Fourier shift: no interpolation blur of its
own), and prints L_D of "#4 w/o reblurring" (the paper's L_D with its calibration mask, the flow of
the training, never the warm-up) against that shift, beside the pixel loss (Charbonnier against
``gt_aligned``, what L1 training would see). Where L_D is lower at a shift than at none, a network
trained with it on well-aligned pairs gains by moving its output: the bilinear warp blurs the
sharp image it resamples at a fractional flow, and a blurry estimate matches a blurred target
better. ``--warp-interp bicubic`` scores L_D with cubic warps (``loss.warp_interp``), which blur
less; where L_D is flat against the shift, nothing holds the output in place either.

Example::

    jdrl synth runs/train256 --train 256 --test 1 --size 128 --max-radius 7 --scale 0.3:0.6 --seed 7
    PYTHONPATH=python:. python benchmarks/deformation_shift.py --data runs/train256 --split train --pairs 16 --blur 0 0.8
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

DEFAULT_SHIFTS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


def fourier_shift(image: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """``image`` (..., H, W) moved by ``(dx, dy)`` px (positive: right, down), periodically, by a
    phase ramp: no interpolation blur at fractional shifts. One exception: along an even side the
    Nyquist frequency, which has no sign to shift by, is scaled by ``cos(pi * shift)`` (zero at half a
    pixel); a Gaussian of 0.5 px has already damped it to 30% and one of 0.8 px to 4%."""
    height, width = image.shape[-2:]
    fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(width, dtype=torch.float64).view(1, -1)
    ramp = torch.exp(-2j * math.pi * (fx * dx + fy * dy))
    return torch.fft.ifft2(torch.fft.fft2(image.double()) * ramp).real.to(image.dtype)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` (B, C, H, W) blurred by a separable Gaussian of ``sigma`` px, borders replicated
    (0: unchanged)."""
    if sigma <= 0:
        return image
    radius = int(math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    rows = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def loss_against_shift(paths: list[Path], blurs: list[float], shifts: list[float], warp_interp: str = "bilinear") -> list[dict]:
    """Mean L_D (#4's, its warps interpolated by ``warp_interp``) and pixel loss over the pairs whose
    blurry images are ``paths`` (their ``gt_aligned`` beside them), for each blur, axis and shift -> rows."""
    from jdrl.config import load_config
    from jdrl.demo import METHODS
    from jdrl.flow import build_flow_estimator
    from jdrl.imageio import read_image
    from jdrl.losses import JDRLLoss, charbonnier

    # "#4 w/o reblurring" as the demo trains it: L_D alone.
    config = load_config(None, {**METHODS["no_reblur"][1], "loss.warp_interp": warp_interp})
    loss = JDRLLoss(config.loss, build_flow_estimator(config.flow.backend, config.flow.weights), levels=config.model.levels)
    images = [(read_image(path)[None], read_image(path.parent.parent / "gt_aligned" / path.name)[None]) for path in paths]
    rows = []
    for blur in blurs:
        for axis in ("x", "y"):
            for shift in shifts:
                deformation = pixel = 0.0
                for blurry, sharp in images:
                    moved = fourier_shift(gaussian_blur(sharp, blur), shift if axis == "x" else 0.0, shift if axis == "y" else 0.0)
                    estimate = moved.clamp(0, 1)
                    with torch.no_grad():
                        # After the warm-up: the flow is taken against the estimate (epoch past any warm-up).
                        value = loss(blurry, sharp, estimate, None, epoch=config.loss.flow_warmup_epochs).terms["deblur"]
                    deformation += float(value)
                    pixel += float(charbonnier(estimate - sharp, None, config.loss.eps))
                rows.append({"blur": blur, "axis": axis, "shift": shift, "deformation": deformation / len(images), "pixel": pixel / len(images)})
    return rows


def main(argv: list[str] | None = None) -> int:
    from jdrl.process_env import flush_denormals, set_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="`jdrl synth` folder (its SPLIT/blur and SPLIT/gt_aligned are read)")
    parser.add_argument("--split", default="test", help="train or test (default test)")
    parser.add_argument("--pairs", type=int, default=16, help="the first N pairs (default 16)")
    parser.add_argument("--blur", type=float, nargs="+", default=[0.0, 0.8], help="Gaussian sigmas of the stand-in estimate, px (default 0 0.8)")
    parser.add_argument("--shifts", type=float, nargs="+", default=list(DEFAULT_SHIFTS), help="shifts, px, along x then along y")
    parser.add_argument("--warp-interp", choices=["bilinear", "bicubic"], default="bilinear",
                        help="the interpolation of L_D's warps (loss.warp_interp; default bilinear, the paper's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch and OpenCV (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    for name in ("pairs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(not (sigma >= 0 and math.isfinite(sigma)) for sigma in args.blur):
        parser.error(f"--blur: sigmas must be finite and >= 0, got {args.blur}")
    if any(not math.isfinite(shift) for shift in args.shifts):
        parser.error(f"--shifts must be finite, got {args.shifts}")
    for folder in ("blur", "gt_aligned"):
        if not any((args.data / args.split / folder).glob("*.png")):
            parser.error(f"--data {args.data}: no {args.split}/{folder}/*.png (make it with `jdrl synth`)")
    set_threads(args.threads)
    flush_denormals()
    paths = sorted((args.data / args.split / "blur").glob("*.png"))[: args.pairs]
    print(f"{len(paths)} pairs of {args.data / args.split}", flush=True)
    rows = loss_against_shift(paths, args.blur, args.shifts, args.warp_interp)
    for blur in args.blur:
        for axis in ("x", "y"):
            mine = [row for row in rows if row["blur"] == blur and row["axis"] == axis]
            unshifted = next((row for row in mine if row["shift"] == 0.0), None)
            print(f"blur {blur:g} px, shift along {axis}:")
            for row in mine:
                relative = f" ({row['deformation'] / unshifted['deformation'] - 1:+.1%} against no shift)" if unshifted else ""
                print(f"  {row['shift']:+.2f} px: L_D {row['deformation']:.5f}{relative}, pixel loss {row['pixel']:.5f}")
    if args.json is not None:
        from common import write_json

        write_json(args.json, {"args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
                               "pairs": len(paths), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
