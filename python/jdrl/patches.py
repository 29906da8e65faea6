"""``jdrl make-patches``: cut large blurry/sharp pairs into patch pairs in the SDD layout.

Each pair is cut with the same windows in the blurry and the sharp image (``size`` x ``size``,
every ``stride`` pixels, optionally after resizing both by ``scale``), so a patch pair is exactly
as (mis)aligned as its source. An optional sharpness filter drops windows whose *sharp* patch has a
variance of Laplacian below ``min_sharpness`` (flat sky, walls: they teach the deblurring nothing
and the flow estimator cannot align them). Patches keep the bit depth of their source (8-bit
sources give 8-bit PNGs, 16-bit sources 16-bit PNGs) and go to ``DST/blur`` and ``DST/gt`` under
the name ``<pair>_y<top>_x<left>.png``; ``DST/patches.csv`` lists every window with its score and
whether it was kept, which helps to choose the threshold.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from jdrl.atomic import atomic_write
from jdrl.data import LAYOUTS, DatasetError, find_pairs
from jdrl.imageio import is_image_file, read_image_array, write_image_array

__all__ = ["PatchSummary", "laplacian_variance", "make_patches", "register", "run", "window_starts"]


@dataclass
class PatchSummary:
    """What ``make_patches`` did: counts, and the sharpness scores of all windows."""

    pairs: int
    kept: int
    dropped: int
    scores: list[float]


def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of the gray image, for ``(H, W, 3)`` values in ``[0, 1]``.

    Measured on ``[0, 1]`` values so that one threshold fits 8- and 16-bit data: roughly 1e-4 for
    smooth content and 1e-3 to 1e-2 and more for textured, in-focus content.
    """
    gray = np.asarray(image, dtype=np.float32).mean(axis=2)
    return float(cv2.Laplacian(gray, cv2.CV_32F, ksize=1).var())


def window_starts(length: int, size: int, stride: int, cover_edges: bool = False) -> list[int]:
    """Start offsets of the windows along one axis of ``length`` pixels.

    Windows start at ``0, stride, 2 * stride, ...`` while they fit; with ``cover_edges`` one more
    window, flush with the far edge, covers the remainder.
    """
    if size < 1 or stride < 1:
        raise ValueError(f"patch size and stride must be positive, got size={size}, stride={stride}")
    if length < size:
        return []
    starts = list(range(0, length - size + 1, stride))
    if cover_edges and starts[-1] + size < length:
        starts.append(length - size)
    return starts


def _as_integer_samples(array: np.ndarray) -> np.ndarray:
    """Float TIFF samples in [0, 1] become 16-bit; integer samples are kept as they are."""
    if array.dtype == np.float32:
        return np.rint(np.clip(array, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return array


def _unit_range(array: np.ndarray) -> np.ndarray:
    peak = 255.0 if array.dtype == np.uint8 else 65535.0
    return array.astype(np.float32) / peak


def make_patches(
    source_root: str | os.PathLike | None,
    destination: str | os.PathLike,
    size: int = 512,
    stride: int | None = None,
    min_sharpness: float = 0.0,
    layout: str = "sdd",
    split: str = "train",
    blur_dir: str | os.PathLike | None = None,
    sharp_dir: str | os.PathLike | None = None,
    scale: float = 1.0,
    cover_edges: bool = False,
    overwrite: bool = False,
) -> PatchSummary:
    """Cut every pair of the dataset at ``source_root`` into patch pairs under ``destination``.

    ``stride`` defaults to ``size`` (no overlap). ``min_sharpness`` 0 keeps every window. Raises
    ``DatasetError`` for a bad source (see ``jdrl.data.find_pairs``) or an image smaller than the
    patch, and ``FileExistsError`` when the destination already holds images and not ``overwrite``.
    """
    stride = size if stride is None else stride
    if size < 1 or stride < 1:
        raise ValueError(f"--size and --stride must be positive, got size={size}, stride={stride}")
    if scale <= 0:
        raise ValueError(f"--scale must be positive, got {scale}")
    pairs = find_pairs(source_root, layout, split, blur_dir, sharp_dir)
    destination = Path(destination)
    blurry_out, sharp_out = destination / "blur", destination / "gt"
    for folder in (blurry_out, sharp_out):
        if folder.is_dir() and not overwrite and any(is_image_file(p) for p in folder.iterdir()):
            raise FileExistsError(f"{folder} already holds images; pass --overwrite to add to / replace them")
        folder.mkdir(parents=True, exist_ok=True)

    records = []
    kept = dropped = 0
    scores: list[float] = []
    for pair in pairs:
        try:
            blurry = _as_integer_samples(read_image_array(pair.blurry_path))
            sharp = _as_integer_samples(read_image_array(pair.sharp_path))
        except OSError as error:
            raise DatasetError(str(error)) from error
        if scale != 1.0:
            new_size = (max(1, round(blurry.shape[1] * scale)), max(1, round(blurry.shape[0] * scale)))
            blurry = cv2.resize(blurry, new_size, interpolation=cv2.INTER_AREA)
            sharp = cv2.resize(sharp, new_size, interpolation=cv2.INTER_AREA)
        height, width = blurry.shape[:2]
        if min(height, width) < size:
            raise DatasetError(
                f"patch size {size} is larger than image {pair.blurry_path} ({width}x{height} WxH after scale {scale})"
            )
        for top in window_starts(height, size, stride, cover_edges):
            for left in window_starts(width, size, stride, cover_edges):
                sharp_patch = sharp[top : top + size, left : left + size]
                score = laplacian_variance(_unit_range(sharp_patch))
                scores.append(score)
                keep = score >= min_sharpness
                name = f"{pair.name}_y{top:05d}_x{left:05d}"
                records.append((name, pair.name, top, left, f"{score:.6g}", int(keep)))
                if not keep:
                    dropped += 1
                    continue
                write_image_array(blurry_out / f"{name}.png", blurry[top : top + size, left : left + size])
                write_image_array(sharp_out / f"{name}.png", sharp_patch)
                kept += 1

    manifest = destination / "patches.csv"
    with atomic_write(manifest, "w") as stream:
        writer = csv.writer(stream)
        writer.writerow(["patch", "source_pair", "top", "left", "sharpness", "kept"])
        writer.writerows(records)
    return PatchSummary(pairs=len(pairs), kept=kept, dropped=dropped, scores=scores)


def register(subparsers) -> None:
    """Add the ``make-patches`` subcommand."""
    parser = subparsers.add_parser(
        "make-patches",
        help="cut large blurry/sharp pairs into patch pairs (SDD layout: DST/blur, DST/gt)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="dataset root with the large pairs")
    parser.add_argument("dst", help="output folder; blur/ and gt/ are created in it")
    parser.add_argument("--size", type=int, default=512, help="patch side in pixels (default 512)")
    parser.add_argument("--stride", type=int, default=None, help="step between windows (default: --size)")
    parser.add_argument(
        "--min-sharpness",
        type=float,
        default=0.0,
        help="drop windows whose sharp patch has a Laplacian variance (on [0,1] values) below this (0: keep all)",
    )
    parser.add_argument("--layout", default="sdd", choices=sorted(LAYOUTS), help="layout of SRC (default sdd)")
    parser.add_argument("--split", default="train", help="split of SRC to cut (default train)")
    parser.add_argument("--blur-dir", default=None, help="explicit blurry folder (relative to SRC), with --sharp-dir")
    parser.add_argument("--sharp-dir", default=None, help="explicit sharp folder (relative to SRC), with --blur-dir")
    parser.add_argument("--scale", type=float, default=1.0, help="resize both images by this factor first (default 1)")
    parser.add_argument("--cover-edges", action="store_true", help="add windows flush with the right/bottom edges")
    parser.add_argument("--overwrite", action="store_true", help="write into a DST that already holds patches")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``make-patches`` from parsed arguments; prints a summary and returns the exit code."""
    summary = make_patches(
        args.src,
        args.dst,
        size=args.size,
        stride=args.stride,
        min_sharpness=args.min_sharpness,
        layout=args.layout,
        split=args.split,
        blur_dir=args.blur_dir,
        sharp_dir=args.sharp_dir,
        scale=args.scale,
        cover_edges=args.cover_edges,
        overwrite=args.overwrite,
    )
    print(f"{summary.pairs} pairs -> {summary.kept} patch pairs kept, {summary.dropped} dropped by --min-sharpness")
    if summary.scores:
        quantiles = np.quantile(np.asarray(summary.scores), [0.0, 0.1, 0.5, 0.9, 1.0])
        print("sharp-patch Laplacian variance min/p10/median/p90/max: " + " / ".join(f"{q:.3g}" for q in quantiles))
    print(f"written to {Path(args.dst) / 'blur'} and {Path(args.dst) / 'gt'}; list in {Path(args.dst) / 'patches.csv'}")
    return 0
