"""``jdrl inspect-pairs``: how misaligned are a dataset's blurry/sharp pairs?

For each pair, the optical flow from the blurry image to the sharp one is estimated (DIS by
default, ``jdrl.flow``): ``flow = estimator(reference=blurry, moving=sharp)``, so that
``sharp(p + flow(p)) ~ blurry(p)``, the same direction as the training loss warps. Reported:

- ``median_flow_px``: the median flow magnitude, in pixels of the full-size image.
- ``zoom_pct``, ``shift_x_px``, ``shift_y_px``: the global zoom and shift that best explain the
  flow, from a least-squares fit of ``flow(p) = s * (p - c) + t`` about the image centre ``c``,
  refitted once without the pixels whose residual exceeds 2.5 times the median residual (flow in
  flat regions is unreliable). ``zoom_pct = 100 * (1 / (1 + s) - 1)``: how much larger the scene
  appears in the blurry image than in the sharp one (the SDD camera's lens motion makes this
  nonzero). ``shift = t``: ``blurry(c) ~ sharp(c + t)``, the flow at the centre.
- ``fit_rms_px``: RMS of the fit's residual over the kept pixels: what zoom and shift do not explain
  (parallax, local motion, flow errors).
- ``mask_kept``: the fraction of pixels the calibration mask of the loss keeps
  (``jdrl.losses.calibration_mask`` with its default lambda and tau) for this flow.

``--max-side N`` downsizes both images so that their longer side is at most N pixels before the flow
is estimated (DIS on a 4096x2160 pair takes seconds); flows are scaled back to full-size pixels.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from jdrl.atomic import atomic_write
from jdrl.data import LAYOUTS, find_pairs
from jdrl.imageio import read_image

__all__ = ["PairReport", "fit_zoom_shift", "inspect_dataset", "inspect_pair", "register", "run", "summarize"]

RESIDUAL_TRIM = 2.5


@dataclass
class PairReport:
    """The misalignment of one pair (module docstring for each field)."""

    name: str
    width: int
    height: int
    median_flow_px: float
    zoom_pct: float
    shift_x_px: float
    shift_y_px: float
    fit_rms_px: float
    mask_kept: float


def _solve_zoom_shift(
    u: torch.Tensor, v: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor
) -> tuple[float, float, float]:
    """Least squares of ``fx = s u + tx``, ``fy = s v + ty`` over the given samples (float64)."""
    count = float(u.numel())
    normal = torch.tensor(
        [
            [float((u * u + v * v).sum()), float(u.sum()), float(v.sum())],
            [float(u.sum()), count, 0.0],
            [float(v.sum()), 0.0, count],
        ],
        dtype=torch.float64,
    )
    rhs = torch.tensor([float((u * fx + v * fy).sum()), float(fx.sum()), float(fy.sum())], dtype=torch.float64)
    s, tx, ty = torch.linalg.solve(normal, rhs).tolist()
    return s, tx, ty


def fit_zoom_shift(flow: torch.Tensor) -> tuple[float, float, float, float]:
    """Fit ``flow(p) = s * (p - c) + t`` to ``flow (2, H, W)`` (x first); returns ``(s, tx, ty, rms)``.

    ``c = ((W - 1) / 2, (H - 1) / 2)``; one refit without the pixels whose residual exceeds
    ``RESIDUAL_TRIM`` times the median residual; ``rms`` is over the pixels of the refit.
    """
    if flow.dim() != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must be (2, H, W), got shape {tuple(flow.shape)}")
    _, height, width = flow.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    u = (xs - (width - 1) / 2).flatten()
    v = (ys - (height - 1) / 2).flatten()
    fx = flow[0].double().flatten()
    fy = flow[1].double().flatten()
    s, tx, ty = _solve_zoom_shift(u, v, fx, fy)
    residual = torch.hypot(fx - (s * u + tx), fy - (s * v + ty))
    inliers = residual <= RESIDUAL_TRIM * residual.median().clamp_min(1e-6)
    if int(inliers.sum()) >= 3:
        s, tx, ty = _solve_zoom_shift(u[inliers], v[inliers], fx[inliers], fy[inliers])
        residual = torch.hypot(fx - (s * u + tx), fy - (s * v + ty))[inliers]
    return s, tx, ty, float(residual.pow(2).mean().sqrt())


def inspect_pair(
    name: str, blurry: torch.Tensor, sharp: torch.Tensor, flow_estimator, max_side: int | None = None
) -> PairReport:
    """Measure one pair: ``blurry``, ``sharp`` ``(3, H, W)`` in ``[0, 1]``; see the module docstring."""
    from jdrl.losses import calibration_mask

    height, width = blurry.shape[-2:]
    factor = 1.0
    if max_side is not None and max(height, width) > max_side:
        factor = max_side / max(height, width)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        blurry = F.interpolate(blurry[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        sharp = F.interpolate(sharp[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    flow = flow_estimator(blurry[None], sharp[None])[0].float()
    full_size_flow = flow / factor  # in pixels of the full-size image
    s, tx, ty, rms = fit_zoom_shift(flow)
    mask = calibration_mask(full_size_flow[None])
    return PairReport(
        name=name,
        width=int(width),
        height=int(height),
        median_flow_px=float(full_size_flow.norm(dim=0).median()),
        zoom_pct=100.0 * (1.0 / (1.0 + s) - 1.0),
        shift_x_px=tx / factor,
        shift_y_px=ty / factor,
        fit_rms_px=rms / factor,
        mask_kept=float(mask.float().mean()),
    )


def inspect_dataset(
    root: str | os.PathLike | None,
    layout: str = "sdd",
    split: str = "train",
    blur_dir: str | os.PathLike | None = None,
    sharp_dir: str | os.PathLike | None = None,
    flow_backend: str = "dis",
    flow_weights: str | os.PathLike | None = None,
    max_side: int | None = None,
    verbose: bool = True,
) -> list[PairReport]:
    """``inspect_pair`` for every pair of a dataset (printing a line per pair when ``verbose``)."""
    from jdrl.flow import build_flow_estimator

    pairs = find_pairs(root, layout, split, blur_dir, sharp_dir)
    flow_estimator = build_flow_estimator(flow_backend, flow_weights)
    reports = []
    for index, pair in enumerate(pairs):
        report = inspect_pair(
            pair.name, read_image(pair.blurry_path), read_image(pair.sharp_path), flow_estimator, max_side
        )
        reports.append(report)
        if verbose:
            print(
                f"[{index + 1}/{len(pairs)}] {report.name}: median flow {report.median_flow_px:.2f} px, "
                f"zoom {report.zoom_pct:+.3f} %, shift ({report.shift_x_px:+.2f}, {report.shift_y_px:+.2f}) px, "
                f"fit rms {report.fit_rms_px:.2f} px, mask keeps {100 * report.mask_kept:.1f} %"
            )
    return reports


def summarize(reports: list[PairReport]) -> str:
    """A table of mean / median / min / max of each measure over the pairs."""
    numeric = [f.name for f in fields(PairReport) if f.name not in ("name", "width", "height")]
    lines = [f"{len(reports)} pairs", f"{'':16s} {'mean':>10s} {'median':>10s} {'min':>10s} {'max':>10s}"]
    for column in numeric:
        values = np.array([getattr(r, column) for r in reports], dtype=np.float64)
        lines.append(
            f"{column:16s} {values.mean():10.4f} {np.median(values):10.4f} {values.min():10.4f} {values.max():10.4f}"
        )
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the ``inspect-pairs`` subcommand."""
    parser = subparsers.add_parser(
        "inspect-pairs",
        help="measure the misalignment (flow, zoom, shift, mask coverage) of a dataset's pairs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", help="dataset root")
    parser.add_argument("--layout", default="sdd", choices=sorted(LAYOUTS), help="layout of ROOT (default sdd)")
    parser.add_argument("--split", default="train", help="split to inspect (default train)")
    parser.add_argument("--blur-dir", default=None, help="explicit blurry folder (relative to ROOT), with --sharp-dir")
    parser.add_argument("--sharp-dir", default=None, help="explicit sharp folder (relative to ROOT), with --blur-dir")
    parser.add_argument("--csv", default=None, help="also write one row per pair to this CSV file")
    parser.add_argument("--max-side", type=int, default=None, help="downsize so the longer side is at most this first")
    parser.add_argument("--flow", default="dis", help="flow backend: dis (default) or torchscript")
    parser.add_argument("--flow-weights", default=None, help="local TorchScript flow model for --flow torchscript")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``inspect-pairs`` from parsed arguments; returns the exit code."""
    if args.max_side is not None and args.max_side < 8:
        raise SystemExit(f"jdrl inspect-pairs: --max-side must be at least 8, got {args.max_side}")
    reports = inspect_dataset(
        args.root,
        layout=args.layout,
        split=args.split,
        blur_dir=args.blur_dir,
        sharp_dir=args.sharp_dir,
        flow_backend=args.flow,
        flow_weights=args.flow_weights,
        max_side=args.max_side,
    )
    print(summarize(reports))
    if args.csv:
        with atomic_write(args.csv, "w") as stream:
            writer = csv.DictWriter(stream, fieldnames=[f.name for f in fields(PairReport)])
            writer.writeheader()
            for report in reports:
                writer.writerow(
                    {
                        k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v)
                        for k, v in asdict(report).items()
                    }
                )
        print(f"written: {args.csv}")
    return 0
