"""What did the reblurring net R learn: a blur, or the identity?

For each training run (a folder with the ``last.pt`` that ``jdrl train`` / ``jdrl ablate`` write;
``--checkpoint best.pt`` for the weights ``jdrl demo`` evaluates), the trained deblurring net F and
R are run on the first pairs of a synthetic set (``--split``: ``train``, the default, or ``test``),
and the table reports, averaged over those pairs:

- ``max abs seed`` and ``mean abs seed``: R's kernel seeds (bounded by ``loss.seed_bound`` when set);
- ``w0``: the mean weight of level 0 (the identity) and ``w_top``: the mean of the largest weight;
- ``L_R``: the reblurring loss ``C(R(I_hat) - I_B)``; ``C(I_hat - I_B)``: what ``L_R`` would be
  with an identity R; ``C(R(I_hat) - I_hat)``: how much R changes its input (0.001 = the
  Charbonnier epsilon = not at all);
- where the data has ``gt_aligned/`` and ``radius/`` (``jdrl synth`` writes them): ``sharpness
  I_hat`` and ``sharpness I_B``, the high-frequency energy (mean squared Laplacian, 8 px border left
  out) of F's output and of the blurry input relative to ``gt_aligned``'s (1 = as sharp as the
  truth); ``R radius`` and ``true radius``, the means of R's implied blur radius
  (:func:`jdrl.defocus.implied_radius`, R run as in training: on ``(I_hat, I_B)``, or anchored
  as below) and of the true
  one; ``R radius, true < 2`` and ``R radius, true >= 4``, R's radius where the true blur is
  small and where it is large (per image the mean over those pixels, then the mean over the images
  that have such pixels: each image counts once). An anchored R (``loss.reblur_anchor``) runs as it
  trained: on the sharp target warped onto ``I_B`` by the run's flow estimator (``flow.backend``,
  DIS unless the run chose another), its seeds and weights then applied to ``I_hat``. A run without a reblurring net (``#4``, ``L1``) gets only the
  sharpness columns.

Where the data has ``gt_aligned/`` and ``radius/``, ``PSNR I_hat, true < 2`` / ``2-4`` / ``>= 4``
and the same for ``I_B``: PSNR against ``gt_aligned`` of F's output and of the blurry input on the
pixels whose true radius falls in that band (squared errors pooled over the pairs, 8 px border
left out): where F gains or loses, in focus or defocused. Runs without R get them too.

Where F has a defocus map supervised by Eq. 13's weighted pseudo map (Eq. 2) and the data has
``gt_aligned/`` and ``radius/``, two Spearman correlations pooled over the pairs (textured pixels,
m - 1 px border, as ``jdrl eval``): ``pseudo map Spearman``, R's pseudo map ``B_P`` read back as a
radius (:func:`jdrl.defocus.predicted_map_radius`) against the true radius, the best F_B's map
could score with this R; and ``F_B vs pseudo map``, F_B's map read back the same way against that
read-back of ``B_P``: whether F_B learned what ``L_P`` asks of it.

When the three ``L_R``-like columns agree, R is the identity and ``L_R`` pulls ``I_hat`` towards
``I_B``. When ``R radius`` stays far below ``true radius`` while ``sharpness I_hat`` stays near
``sharpness I_B``, R explains only the little blur F did not remove: ``L_R`` is small for a blurry
``I_hat`` and does not ask F for more.
Checkpoints from before ``loss.seed_bound`` / ``loss.weight_logit_bound`` existed are read as unbounded.

Example::

    PYTHONPATH=python:. python benchmarks/reblur_diagnostics.py runs/ablation256/runs/unet_eq1_seed0 \\
        --data runs/ablation256/data
    python benchmarks/reblur_diagnostics.py runs/demo/runs/ours runs/demo/runs/no_reblur \\
        --data runs/demo/data --split test --checkpoint best.pt
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch


# Left out of the sharpness and radius means: a fixed margin, the reach of the m = 8 kernels
# (7 px) plus one.
BORDER = 8
# Bands of the true blur radius (px) for the PSNR columns: nearly in focus, middle, strongly defocused.
RADIUS_BANDS = (("< 2", (0.0, 2.0)), ("2-4", (2.0, 4.0)), (">= 4", (4.0, math.inf)))
# Laplacian, one per colour channel: its mean square is the image's high-frequency energy.
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)


def high_frequency_energy(image: torch.Tensor) -> float:
    """Mean squared Laplacian of ``(1, 3, H, W)`` inside a ``BORDER`` px margin."""
    response = torch.nn.functional.conv2d(image, _LAPLACIAN.to(image), groups=3)
    inner = BORDER - 1  # the 3x3 filter already took one pixel off each side
    return response[..., inner:-inner, inner:-inner].pow(2).mean().item()


def diagnose(
    run_dir: Path, data_root: Path, pairs: int, split: str = "train", checkpoint_name: str = "last.pt"
) -> dict[str, float | None]:
    """The table's columns for one run (see the module's docstring), averaged over ``pairs`` pairs
    of ``data_root/split``; a column that the run or the data cannot give is None."""
    import numpy as np

    from jdrl.checkpoint import load_checkpoint, load_deblur_net
    from jdrl.defocus import defocus_correlations, implied_radius, load_reblur_net, predicted_map_radius, reblur_net_input
    from jdrl.flow import build_flow_estimator
    from jdrl.imageio import read_image
    from jdrl.losses import charbonnier, pseudo_defocus_map

    checkpoint = run_dir / checkpoint_name
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: no such checkpoint (--checkpoint names the file inside each run folder)")
    state = load_checkpoint(checkpoint)
    # Settings a checkpoint predates (seed_bound, weight_logit_bound) take the values of its time.
    reblur_net, loss_config = load_reblur_net(state) or (None, None)
    eps = loss_config.eps if loss_config is not None else None
    deblur_net = load_deblur_net(checkpoint).eval()
    split_root = data_root / split
    files = sorted((split_root / "blur").glob("*.png"))[:pairs]
    if not files:
        raise SystemExit(f"{split_root / 'blur'}: no PNG pairs (made by `jdrl synth`)")
    with_truth = all((split_root / "gt_aligned" / path.name).is_file() for path in files)
    with_radius = all((split_root / "radius" / f"{path.stem}.npy").is_file() for path in files)
    anchored = reblur_net is not None and getattr(loss_config, "reblur_anchor", False)
    flow_estimator = None
    if anchored:
        missing = [path.name for path in files if not (split_root / "gt" / path.name).is_file()]
        if missing:
            raise SystemExit(
                f"{split_root / 'gt'}: no {missing[0]}; an anchored R (loss.reblur_anchor) reads the blur from "
                "the sharp target warped onto the blurry image, as it trained"
            )
        flow_config = state["config"].get("flow") or {}
        flow_estimator = build_flow_estimator(flow_config.get("backend", "dis"), flow_config.get("weights"))
    means: dict[str, float] = {}
    # R's mean radius where the true blur is small / large, over the images that have such pixels.
    by_true_radius: dict[str, list[float]] = {"R radius, true < 2": [], "R radius, true >= 4": []}
    # Squared errors against gt_aligned (channel mean per pixel) pooled over the images by true-radius
    # band: [sum, pixels] for F's output and for the blurry input.
    band_errors: dict[str, list[float]] = {f"PSNR {image}, true {band}": [0.0, 0]
                                           for image in ("I_hat", "I_B") for band, _ in RADIUS_BANDS}
    # Per image, for the pooled correlations: R's pseudo map and F_B's map read back as radii.
    pseudo_radii, fb_radii, true_radii, aligned_images = [], [], [], []
    with torch.no_grad():
        for path in files:
            blurry = read_image(path)[None]
            # The margin must leave pixels inside, or every mean below would be NaN.
            if min(blurry.shape[-2:]) <= 2 * BORDER:
                raise SystemExit(f"{path}: an image of {min(blurry.shape[-2:])} px leaves nothing inside the {BORDER} px margin")
            output = deblur_net(blurry)
            estimate = output.sharp.clamp(0, 1)
            values: dict[str, float] = {}
            if reblur_net is not None:
                sharp = read_image(split_root / "gt" / path.name)[None] if anchored else None
                # R reads the blur from its input of training (I_hat, or anchored the flow-aligned
                # sharp target), and that blur is what L_R applies to I_hat.
                seeds, weights, _ = reblur_net.predict(reblur_net_input(blurry, estimate, loss_config, sharp, flow_estimator), blurry)
                reblurred = reblur_net.blur(estimate, seeds, weights)
                values.update({
                    "max abs seed": seeds.abs().max().item(),
                    "mean abs seed": seeds.abs().mean().item(),
                    "w0": weights[:, 0].mean().item(),
                    "w_top": weights.max(dim=1).values.mean().item(),
                    "L_R": charbonnier(reblurred - blurry, eps=eps).item(),
                    "C(I_hat - I_B)": charbonnier(estimate - blurry, eps=eps).item(),
                    "C(R(I_hat) - I_hat)": charbonnier(reblurred - estimate, eps=eps).item(),
                })
            aligned = read_image(split_root / "gt_aligned" / path.name)[None] if with_truth else None
            if with_truth:
                truth = high_frequency_energy(aligned)
                values["sharpness I_hat"] = high_frequency_energy(estimate) / truth
                values["sharpness I_B"] = high_frequency_energy(blurry) / truth
            if with_truth and with_radius:
                inside = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
                band_radius = np.load(split_root / "radius" / f"{path.stem}.npy")[inside]
                for image_name, image in (("I_hat", estimate), ("I_B", blurry)):
                    squared = (image - aligned).pow(2).mean(dim=1)[0].numpy()[inside]
                    for band, (low, high) in RADIUS_BANDS:
                        where = (band_radius >= low) & (band_radius < high)
                        pooled = band_errors[f"PSNR {image_name}, true {band}"]
                        pooled[0] += float(squared[where].sum())
                        pooled[1] += int(where.sum())
            if reblur_net is not None and with_radius:
                inside = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
                r_radius = implied_radius(seeds, weights, reblur_net.support)[0].numpy()[inside]
                true_radius = np.load(split_root / "radius" / f"{path.stem}.npy")[inside]
                values["R radius"] = float(r_radius.mean())
                values["true radius"] = float(true_radius.mean())
                for name, where in (("R radius, true < 2", true_radius < 2), ("R radius, true >= 4", true_radius >= 4)):
                    if where.any():
                        by_true_radius[name].append(float(r_radius[where].mean()))
                if with_truth and output.defocus_map is not None and loss_config.weighted_pseudo_map:
                    def read_back(defocus_map: torch.Tensor) -> torch.Tensor:
                        return predicted_map_radius(defocus_map, reblur_net.levels, loss_config.seed_bound, reblur_net.support)[0]

                    pseudo_radii.append(read_back(pseudo_defocus_map(seeds, weights)))
                    fb_radii.append(read_back(output.defocus_map))
                    true_radii.append(torch.from_numpy(np.load(split_root / "radius" / f"{path.stem}.npy")))
                    aligned_images.append(read_image(split_root / "gt_aligned" / path.name))
            for name, value in values.items():
                means[name] = means.get(name, 0.0) + value / len(files)
    for name, per_image in by_true_radius.items():
        if per_image:
            means[name] = sum(per_image) / len(per_image)
    for name, (total, pixels) in band_errors.items():
        if pixels:
            means[name] = 10.0 * math.log10(pixels / max(total, 1e-20))
    if pseudo_radii:
        means["pseudo map Spearman"] = defocus_correlations(pseudo_radii, true_radii, aligned_images)["spearman"]
        means["F_B vs pseudo map"] = defocus_correlations(fb_radii, pseudo_radii, aligned_images)["spearman"]
    return {name: means.get(name) for name in COLUMNS}


COLUMNS = (
    "max abs seed", "mean abs seed", "w0", "w_top", "L_R", "C(I_hat - I_B)", "C(R(I_hat) - I_hat)",
    "sharpness I_hat", "sharpness I_B", "R radius", "true radius", "R radius, true < 2", "R radius, true >= 4",
    "pseudo map Spearman", "F_B vs pseudo map",
    "PSNR I_hat, true < 2", "PSNR I_hat, true 2-4", "PSNR I_hat, true >= 4",
    "PSNR I_B, true < 2", "PSNR I_B, true 2-4", "PSNR I_B, true >= 4",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (each with the --checkpoint file)")
    parser.add_argument("--data", type=Path, required=True,
                        help="synthetic data the runs trained on (SPLIT/blur, and gt, gt_aligned, radius where there)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="pairs to run on (default train)")
    parser.add_argument("--pairs", type=int, default=6, help="pairs to average over (default 6)")
    parser.add_argument("--checkpoint", default="last.pt", help="checkpoint file in each run folder (default last.pt)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    rows = [(run, diagnose(run, args.data, args.pairs, args.split, args.checkpoint)) for run in args.runs]
    # Columns no run has (no reblurring net anywhere, data without truth) are left out.
    columns = [name for name in COLUMNS if any(values[name] is not None for _, values in rows)]
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for run, values in rows:
        cells = ("-" if values[name] is None else f"{values[name]:.4g}" for name in columns)
        print(f"| {run} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
