"""Where one trained net beats another: PSNR against ``gt_aligned`` by kind of pixel.

``method_at_scale.py`` and ``compare_runs.py`` say by how much ours and #4 differ on whole test
images; this script says where. It runs two checkpoints (``--a``, ``--b``; the weight average where
the run kept one, as ``jdrl eval`` loads them) on the test pairs of a ``jdrl synth`` folder and
splits every pair's pixels four ways, each from what only a synthetic pair knows:

- ``flow``: where DIS, run as the training runs it between the blurry input and the misaligned
  sharp shot (``flow_reference: blurry``, without ``flow_refine``), misses the true correspondence
  (``warp/``) by more than ``--flow-miss`` pixels (parallax edges, disocclusions, strong blur),
  against where it follows it. On such content #4's only target is a wrong one.
- ``mask``: where Eq. 6's calibration mask of that flow (lambda 0.35, floor 1 px: the training's
  defaults) drops the pixel, against where it keeps it. Dropped pixels lose the first term of
  Eq. 7 (and the cycle term too where the reverse flow's mask drops them); ours still has the
  reblurring loss there.
- ``radius``: the true blur radius (``radius/``) below 1 px, 1-3 px, 3 px and above.
- ``texture``: the textured half of each image (``jdrl.defocus.texture_mask`` of ``gt_aligned``)
  against the flat half.

For each region and pair it takes the mean squared error of the net's output (clipped to [0, 1])
over the region's pixels and channels, as PSNR; a pair with fewer than ``--min-pixels`` pixels in a
region is left out of that region's per-pair means (not of its pooled numbers). Per region it prints the mean PSNR of the blurry input, of A
and of B over those pairs, A - B with its standard error over the pairs, how many pairs A wins,
and the pooled A - B (``10 log10`` of B's over A's mean squared error over all the region's
pixels). A second table gives, per region, the pooled mean squared error, that of its fine part
(what is left after a Gaussian blur of 1.5 px: noise, ringing, false or lost detail), and the share
of the true fine detail the image holds (its fine part projected on ``gt_aligned``'s; 1 = all of
it, noise and false detail add nothing) of the input, A, B, and L_D's target: ``I_S`` warped onto
``I_B`` by DIS against ``I_B`` (``flow_reference: blurry``), with the loss's bilinear and bicubic
interpolations (``loss.warp_interp``), clipped to [0, 1] as the nets' outputs are; its error
includes the small exposure and colour change between the two shots.

Several checkpoints per side pair up by position (``--a ours_s2 ours_s3 --b no_reb_s2 no_reb_s3``),
and the mean of their A - B over the pairs follows with its standard error over the seeds.

The regions come from the test pair, not from the training: a test pair's flow-miss and dropped
pixels mark the kind of content whose training targets were missing or wrong, not the very pixels
(the training ran DIS on crops, and a run with the flow against its estimate, the paper's
``flow_reference``, met other flows: the script says so for such a checkpoint).

Example (the seed-3 runs of "A fourth seed" in benchmarks/RESULTS.md)::

    PYTHONPATH=python:. python benchmarks/region_gains.py --a runs/oldR_S3/last.pt \\
        --b runs/no_reb_IB_S3/last.pt --test-data runs/test64 --test-pairs 32
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import write_json

# Region -> its parts, in the order they are printed.
REGIONS = {
    "flow": ("flow misses", "flow follows"),
    "mask": ("mask drops", "mask keeps"),
    "radius": ("radius < 1", "radius 1-3", "radius >= 3"),
    "texture": ("textured", "flat"),
}
PARTS = ["all"] + [part for parts in REGIONS.values() for part in parts]
# Fine detail: what an image keeps after its Gaussian blur of this width (pixels) is taken away.
FINE_SIGMA = 1.5
# What the second table scores: the input, the two nets, and L_D's target (I_S warped onto I_B by DIS
# against I_B, as flow_reference: blurry has it) with the loss's two interpolations.
IMAGES = ("input", "a", "b", "target bilinear", "target bicubic")


@dataclass
class TestPair:
    """One test pair of a ``jdrl synth`` folder: the blurry input and misaligned sharp shot
    ``(1, 3, H, W)``, ``gt_aligned`` ``(1, 3, H, W)``, the true flow ``(1, 2, H, W)`` and blur
    radius ``(H, W)``."""

    name: str
    blurry: torch.Tensor
    sharp: torch.Tensor
    aligned: torch.Tensor
    flow: torch.Tensor
    radius: np.ndarray


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a .npy array ({error})") from None


def read_pairs(root: Path, limit: int | None) -> list[TestPair]:
    """The first ``limit`` (all for None) test pairs of ``root/test``; errors name the folder."""
    from jdrl.imageio import read_image

    folder = root / "test"
    paths = sorted((folder / "blur").glob("*.png"))[:limit]
    needed = ("gt", "gt_aligned", "warp", "radius")
    if not paths or not all((folder / sub).is_dir() for sub in needed):
        raise ValueError(f"--test-data {root}: needs test/blur/*.png with test/{', test/'.join(needed)} "
                         "(make it with `jdrl synth`)")
    pairs = []
    for path in paths:
        companions = {sub: folder / sub / path.name for sub in ("gt", "gt_aligned")}
        companions.update({sub: folder / sub / f"{path.stem}.npy" for sub in ("warp", "radius")})
        for companion in companions.values():
            if not companion.is_file():
                raise ValueError(f"--test-data {root}: {companion} is missing (each blur/ image needs it)")
        image = {sub: read_image(folder / sub / path.name)[None] for sub in ("blur", "gt", "gt_aligned")}
        flow, radius = _load_array(companions["warp"]), _load_array(companions["radius"])
        size = tuple(image["blur"].shape[-2:])
        if flow.shape != (2, *size) or radius.shape != size:
            raise ValueError(f"--test-data {root}: {companions['warp']} is {flow.shape} and {companions['radius']} "
                             f"{radius.shape}; expected (2, {size[0]}, {size[1]}) and {size}, as {path} is {size[0]}x{size[1]}")
        pairs.append(TestPair(path.stem, image["blur"], image["gt"], image["gt_aligned"], torch.from_numpy(flow)[None], radius))
    return pairs


def region_masks(pair: TestPair, estimated: torch.Tensor, flow_miss: float) -> dict[str, np.ndarray]:
    """Part name -> ``(H, W)`` bool: which of the pair's pixels belong to it (:data:`PARTS`);
    ``estimated``: the flow from ``I_B`` to ``I_S`` as the training estimates it ``(1, 2, H, W)``."""
    from jdrl.defocus import texture_mask
    from jdrl.losses import calibration_mask

    misses = (torch.linalg.vector_norm(estimated - pair.flow, dim=1)[0] > flow_miss).numpy()
    dropped = ~calibration_mask(estimated)[0, 0].numpy()
    textured = texture_mask(pair.aligned[0])
    radius = pair.radius
    return {
        "all": np.ones_like(textured),
        "flow misses": misses, "flow follows": ~misses,
        "mask drops": dropped, "mask keeps": ~dropped,
        "radius < 1": radius < 1, "radius 1-3": (radius >= 1) & (radius < 3), "radius >= 3": radius >= 3,
        "textured": textured, "flat": ~textured,
    }


def fine_part(image: torch.Tensor) -> np.ndarray:
    """``(H, W, 3)`` float64: ``(1, 3, H, W)`` minus its Gaussian blur of ``FINE_SIGMA`` px."""
    import cv2

    array = image[0].permute(1, 2, 0).double().numpy()
    return array - cv2.GaussianBlur(array, (0, 0), FINE_SIGMA)


def pixel_scores(estimate: torch.Tensor, aligned: torch.Tensor, aligned_fine: np.ndarray) -> dict[str, np.ndarray]:
    """``(H, W)`` maps, summed over the channels, of the clipped estimate against ``gt_aligned``:
    ``error`` (squared), ``fine_error`` (squared, of the error's fine part) and ``detail`` (the
    estimate's fine part times the truth's: summed over pixels and divided by the truth's fine
    energy, the share of the true detail the estimate holds; noise and false detail do not add to it)."""
    estimate = estimate.clamp(0, 1)
    fine = fine_part(estimate)
    error = (estimate - aligned)[0].permute(1, 2, 0).double().numpy()
    return {"error": (error ** 2).sum(axis=2), "fine_error": ((fine - aligned_fine) ** 2).sum(axis=2),
            "detail": (fine * aligned_fine).sum(axis=2)}


def _psnr(mse: float) -> float:
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf  # compare() refuses non-finite outputs


@dataclass
class ScoredPair:
    """What a test pair scores that does not depend on the nets, computed once per run: its
    ``masks`` (:func:`region_masks`), ``gt_aligned``'s fine part and fine energy per pixel, and
    the :func:`pixel_scores` of the input and of L_D's two targets."""

    pair: TestPair
    masks: dict[str, np.ndarray]
    aligned_fine: np.ndarray
    truth_detail: np.ndarray
    scores: dict[str, dict[str, np.ndarray]]


def score_pairs(pairs: list[TestPair], flow_miss: float, flow_estimator=None) -> list[ScoredPair]:
    """The net-independent part of :func:`compare` for each pair: DIS from ``I_B`` to ``I_S``
    (``flow_estimator`` instead where given), the regions, and the input and targets scored."""
    from jdrl.flow import build_flow_estimator
    from jdrl.losses import LossConfig, loss_warp

    estimator = flow_estimator or build_flow_estimator("dis")
    warps = {name: LossConfig(warp_interp=interp) for name, interp in
             (("target bilinear", "bilinear"), ("target bicubic", "bicubic"))}
    scored = []
    with torch.no_grad():
        for pair in pairs:
            flow = estimator(pair.blurry, pair.sharp)
            aligned_fine = fine_part(pair.aligned)
            estimates = {"input": pair.blurry, **{name: loss_warp(pair.sharp, flow, config) for name, config in warps.items()}}
            scored.append(ScoredPair(pair, region_masks(pair, flow, flow_miss), aligned_fine, (aligned_fine ** 2).sum(axis=2),
                                     {image: pixel_scores(estimate, pair.aligned, aligned_fine) for image, estimate in estimates.items()}))
    return scored


def compare(net_a, net_b, scored_pairs: list[ScoredPair], min_pixels: int) -> dict[str, Any]:
    """Per part: the pairs it has ``min_pixels`` in, mean PSNR of input / A / B over them, A - B
    (mean, standard error over the pairs, wins) and pooled; the share of pixels in it; and per
    image of :data:`IMAGES` the pooled mean squared error, that of its fine part, and the share of
    the true detail it holds. ``scored_pairs``: :func:`score_pairs` of the test pairs."""
    sums = {part: {"pixels": 0, "truth_detail": 0.0, **{image: {"error": 0.0, "fine_error": 0.0, "detail": 0.0} for image in IMAGES}}
            for part in PARTS}
    per_pair: dict[str, list[tuple[float, float, float]]] = {part: [] for part in PARTS}
    total_pixels = 0
    with torch.no_grad():
        for scored in scored_pairs:
            pair = scored.pair
            outputs = {"a": net_a(pair.blurry).sharp, "b": net_b(pair.blurry).sharp}
            for name, output in outputs.items():
                if not torch.isfinite(output).all():  # clamp keeps NaN; a PSNR of it would mislead
                    raise ValueError(f"net {name.upper()} gives non-finite values on test pair {pair.name}")
            scores = {**scored.scores, **{name: pixel_scores(output, pair.aligned, scored.aligned_fine) for name, output in outputs.items()}}
            total_pixels += scored.truth_detail.size
            for part, mask in scored.masks.items():
                count = int(mask.sum())
                sums[part]["pixels"] += count
                sums[part]["truth_detail"] += float(scored.truth_detail[mask].sum())
                for image, maps in scores.items():
                    for key, values in maps.items():
                        sums[part][image][key] += float(values[mask].sum())
                if count >= min_pixels:
                    # Mean over the region's pixels and the 3 channels, as jdrl.metrics.psnr averages.
                    per_pair[part].append(tuple(_psnr(float(scores[key]["error"][mask].sum()) / (3 * count))
                                                for key in ("input", "a", "b")))
    result = {}
    for part in PARTS:
        rows = per_pair[part]
        differences = [a - b for _, a, b in rows]
        pooled = sums[part]
        values = 3 * pooled["pixels"]
        result[part] = {
            "pairs": len(rows),
            "pixel_share": pooled["pixels"] / total_pixels,
            "input": statistics.fmean(row[0] for row in rows) if rows else None,
            "a": statistics.fmean(row[1] for row in rows) if rows else None,
            "b": statistics.fmean(row[2] for row in rows) if rows else None,
            "difference": statistics.fmean(differences) if rows else None,
            "standard_error": statistics.stdev(differences) / math.sqrt(len(rows)) if len(rows) > 1 else None,
            "a_wins": sum(difference > 0 for difference in differences),
            "pooled_difference": (10.0 * math.log10(pooled["b"]["error"] / pooled["a"]["error"])
                                  if pooled["a"]["error"] > 0 and pooled["b"]["error"] > 0 else None),
            # Per image: pooled mean squared error per pixel and channel, whole and of its fine part,
            # and the share of the truth's fine detail it holds.
            "images": {image: {"mse": pooled[image]["error"] / values if values else None,
                               "mse_fine": pooled[image]["fine_error"] / values if values else None,
                               "detail": pooled[image]["detail"] / pooled["truth_detail"] if pooled["truth_detail"] > 0 else None}
                       for image in IMAGES},
        }
    return result


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def report(label: str, result: dict[str, Any]) -> str:
    from common import render_table

    rows = []
    for part in PARTS:
        entry = result[part]
        error = "" if entry["standard_error"] is None else f" ± {entry['standard_error']:.2f}"
        rows.append([part, f"{100 * entry['pixel_share']:.1f}%", str(entry["pairs"]), _number(entry["input"]),
                     _number(entry["a"]), _number(entry["b"]), _number(entry["difference"], True) + error,
                     f"{entry['a_wins']}/{entry['pairs']}", _number(entry["pooled_difference"], True)])
    def image_cell(entry: dict[str, Any], image: str) -> str:
        scores = entry["images"][image]
        if scores["mse"] is None:
            return "-"
        return f"{1e4 * scores['mse']:.2f} / {1e4 * scores['mse_fine']:.2f} / {_number(scores['detail'])}"

    images = [[part] + [image_cell(result[part], image) for image in IMAGES] for part in PARTS]
    return (label + "\n" + render_table(
        ["pixels", "share", "pairs", "input", "A", "B", "A - B ± s.e. (pairs)", "A wins", "A - B pooled"], rows)
        + f"\nPooled mean squared error x 1e4 / that of its fine part (less its {FINE_SIGMA:g} px Gaussian blur) / "
        "share of the true fine detail held; targets: I_S warped onto I_B by DIS:\n"
        + render_table(["pixels", *IMAGES], images))


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per part: the mean of the checkpoint pairs' A - B and its standard error over them."""
    summary = {}
    for part in PARTS:
        values = [result[part]["difference"] for result in results if result[part]["difference"] is not None]
        summary[part] = {
            "mean_difference": statistics.fmean(values) if values else None,
            "standard_error": statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None,
            "checkpoint_pairs": len(values),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    from jdrl.checkpoint import load_checkpoint, load_deblur_net
    from jdrl.errors import JdrlError
    from jdrl.process_env import flush_denormals, set_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, nargs="+", required=True, help="checkpoints of method A (e.g. ours), one per seed")
    parser.add_argument("--b", type=Path, nargs="+", required=True, help="checkpoints of method B (e.g. #4), paired with --a by position")
    parser.add_argument("--test-data", type=Path, required=True, help="`jdrl synth` folder whose test/ holds gt, gt_aligned, warp, radius")
    parser.add_argument("--test-pairs", type=int, default=None, help="the first N test pairs (default all)")
    parser.add_argument("--flow-miss", type=float, default=1.0, help="end-point error in pixels above which DIS misses (default 1)")
    parser.add_argument("--min-pixels", type=int, default=64, help="a pair counts in a region with at least this many of its pixels (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here (atomically)")
    args = parser.parse_args(argv)
    if len(args.a) != len(args.b):
        parser.error(f"--a names {len(args.a)} checkpoints and --b {len(args.b)}: they pair up by position")
    if args.test_pairs is not None and args.test_pairs < 1:
        parser.error(f"--test-pairs must be at least 1, got {args.test_pairs}")
    if not args.flow_miss > 0 or args.min_pixels < 1:  # "not >" refuses NaN too
        parser.error(f"--flow-miss must be > 0 and --min-pixels >= 1, got {args.flow_miss} and {args.min_pixels}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    for path in [*args.a, *args.b]:
        if not path.is_file():
            parser.error(f"checkpoint {path}: no such file")
    set_threads(args.threads)
    flush_denormals()
    try:
        pairs = read_pairs(args.test_data, args.test_pairs)
        scored_pairs = score_pairs(pairs, args.flow_miss)  # once for all the checkpoint pairs
        # Every checkpoint loads before the first comparison: a bad one fails at once.
        nets = {path: load_deblur_net(path) for path in [*args.a, *args.b]}
        for path in nets:
            flow_reference = ((load_checkpoint(path)["config"].get("loss") or {}).get("flow_reference", "estimate"))
            if flow_reference != "blurry":
                print(f"note: {path} trained with the flow against {flow_reference!r}, not the blurry input: "
                      "its flow misses and dropped pixels were not these", flush=True)
        results = []
        for path_a, path_b in zip(args.a, args.b):
            try:
                result = compare(nets[path_a], nets[path_b], scored_pairs, args.min_pixels)
            except ValueError as error:
                raise ValueError(f"A = {path_a}, B = {path_b}: {error}") from None
            results.append({"a": str(path_a), "b": str(path_b), "parts": result})
            print(report(f"A = {path_a}, B = {path_b}, {len(pairs)} test pairs:", result), flush=True)
    except (ValueError, OSError, JdrlError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = summarize([entry["parts"] for entry in results])
    if len(results) > 1:
        lines = [f"mean A - B over {len(results)} checkpoint pairs (± standard error over them):"]
        for part in PARTS:
            entry = summary[part]
            error = "" if entry["standard_error"] is None else f" ± {entry['standard_error']:.2f}"
            lines.append(f"  {part}: {_number(entry['mean_difference'], True)}{error}")
        print("\n".join(lines))
    if args.json is not None:
        write_json(args.json, {"args": {key: (str(value) if isinstance(value, Path) else
                                              [str(item) for item in value] if isinstance(value, list) else value)
                                        for key, value in vars(args).items()},
                               "test_pairs": len(pairs), "results": results, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
