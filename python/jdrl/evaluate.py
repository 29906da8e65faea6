"""``jdrl eval``: aligned and unaligned PSNR/SSIM(/LPIPS) of a checkpoint or of saved predictions.

The paper measures deblurred images against the sharp image *warped onto the prediction* with an
optical flow (section 4.2), because the test pairs of SDD (and, slightly, DPDD and RealDOF) are
misaligned; the plain ("unaligned") metrics are reported beside. With ``--checkpoint`` the net
(rebuilt by ``jdrl.checkpoint.load_deblur_net``) deblurs each blurry test image, tile by tile
(``jdrl.inference.deblur_tiled``); with ``--pred-dir`` the already deblurred images in that folder,
matched to the test pairs by file stem, are measured instead. Outputs in ``--out``:
``metrics.csv`` (one row per image) and ``summary.json`` (means and settings); the means are also
printed. LPIPS is measured only when the ``lpips`` package and its backbone weights are already on
the machine; otherwise it is reported as skipped.

Defocus maps: where the test set has true blur radius maps (``jdrl synth`` writes
``radius/NAME.npy`` and ``gt_aligned/NAME.png`` beside ``blur/``) and ``--checkpoint`` is given,
the summary's ``"defocus"`` holds the Spearman and Pearson correlations (textured pixels and all
pixels, :func:`jdrl.defocus.defocus_correlations`) of the true radius against the reblurring net's
implied radius (``"reblur"``, R run on the prediction and the blurry input) and against the
deblurring net's defocus map mapped to a radius (``"predicted_map"``,
:func:`jdrl.defocus.predicted_map_radius`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from jdrl.atomic import atomic_write
from jdrl.data import LAYOUTS, DatasetError, ImagePair, find_pairs
from jdrl.imageio import is_image_file, read_image, write_image
from jdrl.metrics import aligned_metrics, load_lpips

__all__ = ["evaluate", "register", "run"]

METRIC_COLUMNS = ("psnr", "ssim", "lpips", "psnr_unaligned", "ssim_unaligned", "lpips_unaligned")


def _predictions_by_name(pred_dir: Path, pairs: list[ImagePair]) -> dict[str, Path]:
    """The prediction file of each pair, by stem; a pair without one is an error naming it."""
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--pred-dir {pred_dir} is not a folder")
    by_stem: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        if path.is_file() and is_image_file(path):
            if path.stem in by_stem:
                raise DatasetError(
                    f"two predictions in {pred_dir} share the name {path.stem!r}: {by_stem[path.stem]} and {path}"
                )
            by_stem[path.stem] = path
    missing = [pair.name for pair in pairs if pair.name not in by_stem]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DatasetError(f"{pred_dir} has no prediction for test pair(s) {shown} (expected <name>.png etc.)")
    return {pair.name: by_stem[pair.name] for pair in pairs}


def _radius_files(pair: ImagePair) -> tuple[Path, Path] | None:
    """``(radius/NAME.npy, gt_aligned/NAME.png)`` beside the pair's blur folder (``jdrl synth``'s
    layout), or None when either is missing."""
    split_root = pair.blurry_path.parent.parent
    radius = split_root / "radius" / f"{pair.name}.npy"
    aligned = split_root / "gt_aligned" / f"{pair.name}.png"
    return (radius, aligned) if radius.is_file() and aligned.is_file() else None


def _collect_radii(defocus: dict[str, list], pair: ImagePair, blurry, output, reblur, sharp, flow_estimator) -> None:
    """Append this pair's predicted radius maps, its true one and its aligned sharp image."""
    import numpy as np

    from jdrl.defocus import defocus_radii

    radius_path, aligned_path = _radius_files(pair)
    for source, radius in defocus_radii(blurry, output.sharp, output.defocus_map, reblur, sharp, flow_estimator).items():
        defocus.setdefault(source, []).append(radius)
    defocus["true"].append(np.load(radius_path))
    defocus["sharp"].append(read_image(aligned_path))


def _write_csv_atomically(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_write(path, "w") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)


def evaluate(
    data_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    layout: str = "sdd",
    split: str = "test",
    blur_dir: str | os.PathLike | None = None,
    sharp_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    pred_dir: str | os.PathLike | None = None,
    tile: int | None = 512,
    overlap: int = 64,
    device: str = "auto",
    flow_backend: str = "dis",
    flow_weights: str | os.PathLike | None = None,
    use_lpips: bool = True,
    save_images: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the images in ``pred_dir``) on a test set; returns the summary.

    Exactly one of ``checkpoint`` and ``pred_dir``. The summary dict holds ``"means"`` (metric ->
    mean over images), ``"count"``, ``"lpips"`` ("measured" or "skipped: <reason>") and the
    settings; it is also written to ``out_dir/summary.json``, and per-image rows to
    ``out_dir/metrics.csv``. ``save_images`` writes the deblurred images to ``out_dir/images``.
    """
    from jdrl.flow import build_flow_estimator
    from jdrl.inference import deblur_tiled, resolve_device

    if (checkpoint is None) == (pred_dir is None):
        raise ValueError("give exactly one of --checkpoint (deblur with a net) and --pred-dir (saved predictions)")
    pairs = find_pairs(data_root, layout, split, blur_dir, sharp_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    flow_estimator = build_flow_estimator(flow_backend, flow_weights)
    lpips_metric, lpips_reason = load_lpips(torch_device) if use_lpips else (None, "turned off (--lpips off)")
    lpips_status = "measured" if lpips_metric is not None else f"skipped: {lpips_reason}"
    columns = [c for c in METRIC_COLUMNS if lpips_metric is not None or not c.startswith("lpips")]

    net = None
    reblur = None
    predictions: dict[str, Path] = {}
    if checkpoint is not None:
        from jdrl.checkpoint import load_deblur_net
        from jdrl.defocus import load_reblur_net

        net = load_deblur_net(checkpoint, map_location="cpu").to(torch_device).eval()
        reblur = load_reblur_net(checkpoint, map_location=torch_device)
    else:
        predictions = _predictions_by_name(Path(pred_dir), pairs)

    rows: list[list[Any]] = []
    sums = {column: 0.0 for column in columns}
    # Radius maps per source ("reblur", "predicted_map"), the true ones and the aligned sharp images.
    defocus: dict[str, list] = {"true": [], "sharp": []}
    with_radius = net is not None and all(_radius_files(pair) is not None for pair in pairs)
    for index, pair in enumerate(pairs):
        began = time.perf_counter()
        sharp = read_image(pair.sharp_path).unsqueeze(0)
        if net is not None:
            blurry = read_image(pair.blurry_path).unsqueeze(0).to(torch_device)
            output = deblur_tiled(
                net, blurry, tile=tile, overlap=overlap, output_device="cpu", keep_defocus_map=with_radius
            )
            if with_radius:
                _collect_radii(defocus, pair, blurry.cpu(), output, reblur, sharp, flow_estimator)
            pred = output.sharp.clamp(0, 1)
            if save_images:
                write_image(out_dir / "images" / f"{pair.name}.png", pred[0])
        else:
            pred = read_image(predictions[pair.name]).unsqueeze(0)
            if pred.shape != sharp.shape:
                raise DatasetError(
                    f"prediction {predictions[pair.name]} is {pred.shape[-1]}x{pred.shape[-2]} (WxH) but its sharp "
                    f"image {pair.sharp_path} is {sharp.shape[-1]}x{sharp.shape[-2]}"
                )
        metrics = aligned_metrics(pred, sharp, flow_estimator, lpips_metric)
        rows.append([pair.name] + [f"{metrics[c]:.6f}" for c in columns])
        for column in columns:
            sums[column] += metrics[column]
        if verbose:
            shown = "  ".join(f"{c} {metrics[c]:.4f}" for c in columns)
            print(f"[{index + 1}/{len(pairs)}] {pair.name}: {shown}  ({time.perf_counter() - began:.1f} s)")

    _write_csv_atomically(out_dir / "metrics.csv", ["name"] + columns, rows)
    means = {column: sums[column] / len(pairs) for column in columns}
    summary = {
        "means": means,
        "count": len(pairs),
        "lpips": lpips_status,
        "source": {"checkpoint": str(checkpoint)} if checkpoint is not None else {"pred_dir": str(pred_dir)},
        "data": {"root": None if data_root is None else str(data_root), "layout": layout, "split": split},
        "flow": {"backend": flow_backend, "weights": None if flow_weights is None else str(flow_weights)},
        "tiling": {"tile": tile, "overlap": overlap} if checkpoint is not None else None,
    }
    if with_radius:
        from jdrl.defocus import defocus_correlations

        levels = reblur[0].levels if reblur is not None else 8
        summary["defocus"] = {
            source: defocus_correlations(maps, defocus["true"], defocus["sharp"], border=levels - 1)
            for source, maps in defocus.items()
            if source not in ("true", "sharp")
        }
    with atomic_write(out_dir / "summary.json", "w") as stream:
        stream.write(json.dumps(summary, indent=2) + "\n")
    if verbose:
        print(f"means over {len(pairs)} images (aligned = sharp warped onto the prediction by {flow_backend} flow):")
        for column in columns:
            print(f"  {column:16s} {means[column]:.4f}")
        print(f"  LPIPS: {lpips_status}")
        for source, values in summary.get("defocus", {}).items():
            print(
                f"  defocus radius ({source}) vs true: Spearman {values['spearman']:.3f}, Pearson {values['pearson']:.3f} "
                f"(textured pixels); {values['spearman_all']:.3f}, {values['pearson_all']:.3f} (all)"
            )
        print(f"written: {out_dir / 'metrics.csv'}, {out_dir / 'summary.json'}")
    return summary


def register(subparsers) -> None:
    """Add the ``eval`` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint or saved predictions (aligned and unaligned PSNR/SSIM/LPIPS)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint written by jdrl train")
    source.add_argument("--pred-dir", help="folder of already deblurred images named like the test pairs")
    parser.add_argument("--data", help="test set root (see jdrl.data for the layouts)")
    parser.add_argument("--layout", default="sdd", choices=sorted(LAYOUTS), help="layout of --data (default sdd)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument(
        "--blur-dir", default=None, help="explicit blurry folder (relative to --data), with --sharp-dir"
    )
    parser.add_argument("--sharp-dir", default=None, help="explicit sharp folder (relative to --data), with --blur-dir")
    parser.add_argument("--out", required=True, help="output folder for metrics.csv and summary.json")
    parser.add_argument("--tile", type=int, default=512, help="tile side for the net; 0 = whole images (default 512)")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (default 64)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--flow", default="dis", help="flow backend for the alignment: dis (default) or torchscript")
    parser.add_argument("--flow-weights", default=None, help="local TorchScript flow model for --flow torchscript")
    parser.add_argument(
        "--lpips", choices=("auto", "off"), default="auto", help="auto: measure LPIPS if available locally"
    )
    parser.add_argument("--save-images", action="store_true", help="also write the deblurred images to OUT/images")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``eval`` from parsed arguments; returns the exit code."""
    if args.data is None and args.blur_dir is None:
        raise SystemExit("jdrl eval: give --data (a test set root) or --blur-dir and --sharp-dir")
    evaluate(
        args.data,
        args.out,
        layout=args.layout,
        split=args.split,
        blur_dir=args.blur_dir,
        sharp_dir=args.sharp_dir,
        checkpoint=args.checkpoint,
        pred_dir=args.pred_dir,
        tile=args.tile,
        overlap=args.overlap,
        device=args.device,
        flow_backend=args.flow,
        flow_weights=args.flow_weights,
        use_lpips=args.lpips == "auto",
        save_images=args.save_images,
    )
    return 0
