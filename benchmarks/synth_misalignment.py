"""How much of `jdrl synth`'s misalignment does the DIS flow fail to follow?

For each misalignment setting, the same scenes (one seed, the bundled photos) are made with
:func:`jdrl.synth.make_synthetic_dataset` and written as PNGs; then, as the training loss does,
the flow from the blurry image to ``gt`` is estimated with DIS (``jdrl.flow``, ``reference =
blurry``), and compared with the truth the data carries:

- ``mask_kept``: the fraction of pixels the loss's calibration mask keeps for that flow;
- ``epe_px``: mean end-point error of the DIS flow against ``warp/`` (the true flow), and
  ``epe_gt1``: the fraction of pixels where it exceeds 1 px;
- ``psnr_dis``: PSNR of ``flow_warp(gt, DIS flow)`` against ``gt_aligned``: how well the target
  that the loss sees matches what the network should output; ``psnr_true``: the same with the
  true flow (the ceiling: interpolation, occlusions and the photometric change); ``psnr_none``:
  ``gt`` unwarped; ``psnr_dis_vs_true``: ``flow_warp(gt, DIS flow)`` against ``flow_warp(gt, true
  flow)``, the flow error alone.

A border of 8 px is left out of every figure. Settings: ``global`` (2 px shift, 1% zoom: the
earlier default), ``default`` (the current one), and the default without one of its parts.

Example (the command behind the table in ``benchmarks/RESULTS.md``)::

    PYTHONPATH=python:. python benchmarks/synth_misalignment.py --out runs/synth_misalignment
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from jdrl.flow import build_flow_estimator
from jdrl.imageio import read_image
from jdrl.losses import calibration_mask
from jdrl.synth import make_synthetic_dataset

GLOBAL_ONLY = {"parallax": 0.0, "nonrigid": 0.0, "exposure": 0.0, "white_balance": 0.0, "gamma": 0.0, "occluders": 0}
SETTINGS: dict[str, dict] = {
    "global (earlier default)": GLOBAL_ONLY,
    "default": {},
    "default, no parallax": {"parallax": 0.0},
    "default, no occluders": {"occluders": 0},
    "default, no non-rigid": {"nonrigid": 0.0},
    "default, no photometric": {"exposure": 0.0, "white_balance": 0.0, "gamma": 0.0},
}
BORDER = 8


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).square().mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def measure(root: Path, split: str, estimator) -> dict[str, float]:
    import jdrl_ext

    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    rows = []
    for blur_path in sorted((root / split / "blur").glob("*.png")):
        name = blur_path.stem
        blurry = read_image(blur_path)[None]
        gt = read_image(root / split / "gt" / f"{name}.png")[None]
        aligned = read_image(root / split / "gt_aligned" / f"{name}.png")[None]
        true_flow = torch.from_numpy(np.load(root / split / "warp" / f"{name}.npy"))[None]
        flow = estimator(blurry, gt).float()
        epe = (flow - true_flow).norm(dim=1)[0][inner]
        warped_dis = jdrl_ext.flow_warp(gt, flow)
        warped_true = jdrl_ext.flow_warp(gt, true_flow)
        crop = (Ellipsis, *inner)
        rows.append(
            {
                "mask_kept": float(calibration_mask(flow).float().mean()),
                "true_flow_px": float(true_flow.norm(dim=1)[0][inner].mean()),
                "epe_px": float(epe.mean()),
                "epe_gt1": float((epe > 1).float().mean()),
                "psnr_dis": psnr(warped_dis[crop], aligned[crop]),
                "psnr_true": psnr(warped_true[crop], aligned[crop]),
                "psnr_dis_vs_true": psnr(warped_dis[crop], warped_true[crop]),
                "psnr_none": psnr(gt[crop], aligned[crop]),
            }
        )
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/synth_misalignment"))
    parser.add_argument("--pairs", type=int, default=16, help="pairs per setting (train split)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    estimator = build_flow_estimator("dis")
    table = {}
    for index, (name, overrides) in enumerate(SETTINGS.items()):
        root = make_synthetic_dataset(
            args.out / f"setting{index}", args.pairs, 0, size=args.size, seed=args.seed, overwrite=True, **overrides
        )
        table[name] = measure(root, "train", estimator)
        print(name, {k: round(v, 3) for k, v in table[name].items()}, flush=True)
    columns = [
        "mask_kept", "true_flow_px", "epe_px", "epe_gt1", "psnr_none", "psnr_dis", "psnr_true", "psnr_dis_vs_true"
    ]
    lines = [
        f"{args.pairs} pairs of {args.size} px per setting, seed {args.seed}, DIS 'medium', "
        f"border {BORDER} px excluded",
        "",
        "| setting | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    (args.out / "synth_misalignment.md").write_text("\n".join(lines) + "\n")
    (args.out / "synth_misalignment.json").write_text(json.dumps(table, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
