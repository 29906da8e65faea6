"""Tiled inference for large images, the defocus-map visualization, and ``jdrl deblur``.

``deblur_tiled`` runs a deblurring network on overlapping tiles so that the network's memory
depends on the tile size, not on the image: a 4096x2160 SDD image goes through in 512x512 tiles.
How tiles are cut and blended, along each axis:

- Tile starts are multiples of ``align`` (32 by default, a multiple of the networks' internal
  size multiple of 8 and of every stride inside them), so that every tile sees the same
  downsampling grid and the same bottom/right padding as the whole image would.
- Consecutive tiles overlap by at least ``overlap`` pixels. In each overlap, each tile first drops
  ``overlap // 4`` pixels next to its cut edge (where its convolutions saw padding instead of the
  neighbouring pixels), then fades in over the next ``overlap - 2 * (overlap // 4)`` pixels with a
  raised-cosine ramp. Edges on the image border are not cut, so they keep full weight.
- The output is the weighted sum of the tiles divided by the sum of the weights.

Tolerance. For a fully convolutional network whose receptive-field radius is at most
``overlap // 4`` and whose strides divide ``align``, the tiled output equals whole-image inference
up to float rounding (the tests assert a max abs difference below 1e-5 on a 96x80 image, tile 48,
overlap 16). Networks with global operations cannot be equal: the "jdrl" network's
squeeze-excitation fusion averages over the whole input and its Restormer blocks' transposed
attention mixes channels with statistics of the whole feature map, so a tile sees different
statistics from the whole image. For those the difference is small but not rounding-level; the
tests bound it for the tiny untrained preset (see tests/test_inference.py), and it shrinks as tiles
grow.

The defocus map: the "jdrl" network also returns ``B_hat (B, S(m), H, W)`` (35 channels for
m = 8). ``defocus_map_to_scalar`` reduces it to one channel with PCA, as the paper does for its
Fig. 10: the first principal component over pixels. Its sign is arbitrary, so it is fixed to
correlate positively with the per-pixel norm ``||B_hat(p)||``: ``B_hat`` is trained to match the
pseudo defocus map ``B_P = w_r * seeds_r``, which vanishes where the reblurring network leaves the
pixel unblurred (all weight on level 0). So larger values mean blurrier, as far as the network is
concerned. ``colorize_defocus`` maps it to a colour image (OpenCV's inferno colour map, values
normalized between the 1st and 99th percentile).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from jdrl.imageio import is_image_file, read_image, write_image, write_image_array
from jdrl.models import DeblurOutput

__all__ = [
    "colorize_defocus",
    "deblur_tiled",
    "defocus_map_to_scalar",
    "register",
    "resolve_device",
    "run",
    "tile_spans",
    "tile_weights",
]


def tile_spans(length: int, tile: int, overlap: int, align: int = 32) -> list[tuple[int, int]]:
    """``(start, end)`` of the tiles along an axis of ``length`` pixels.

    Starts are multiples of ``align``; the step is ``tile - overlap`` rounded down to a multiple
    of ``align``; the last tile ends at ``length`` (and may be up to ``align - 1`` pixels longer than
    ``tile``). One tile when ``length <= tile``.
    """
    if tile < 1 or overlap < 0 or align < 1:
        raise ValueError(
            f"tile must be >= 1, overlap >= 0 and align >= 1; got tile={tile}, overlap={overlap}, align={align}"
        )
    if length <= tile:
        return [(0, length)]
    step = (tile - overlap) // align * align
    if step < align:
        raise ValueError(
            f"tile - overlap = {tile - overlap} must be at least align = {align} (tile={tile}, overlap={overlap})"
        )
    spans = []
    start = 0
    while start + tile < length:
        spans.append((start, start + tile))
        start += step
    last_start = (length - tile) // align * align
    if spans and spans[-1][0] == last_start:
        spans.pop()
    spans.append((last_start, length))
    return spans


def _profile(size: int, dropped: int, ramp: torch.Tensor) -> torch.Tensor:
    """Weights along a tile that was cut at its start: ``dropped`` zeros, the ramp, then ones."""
    profile = torch.ones(size, dtype=torch.float64)
    profile[:dropped] = 0.0
    kept_ramp = ramp[: max(0, min(ramp.numel(), size - dropped))]
    profile[dropped : dropped + kept_ramp.numel()] = kept_ramp
    return profile


def tile_weights(span: tuple[int, int], length: int, overlap: int) -> torch.Tensor:
    """Blending weights ``(end - start,)`` float32 of one tile along an axis of ``length`` pixels.

    An edge on the image border keeps weight 1; a cut edge drops ``overlap // 4`` pixels and then
    fades in with a raised cosine over ``overlap - 2 * (overlap // 4)`` pixels (module docstring).
    """
    start, end = span
    size = end - start
    dropped = overlap // 4
    ramp_length = overlap - 2 * dropped
    # Strictly inside (0, 1): every ramp pixel contributes, so the tiling never leaves a hole.
    steps = torch.arange(1, ramp_length + 1, dtype=torch.float64)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * steps / (ramp_length + 1))
    weights = torch.ones(size, dtype=torch.float64)
    if start > 0:
        weights = torch.minimum(weights, _profile(size, dropped, ramp))
    if end < length:
        weights = torch.minimum(weights, torch.flip(_profile(size, dropped, ramp), [0]))
    return weights.float()


def _split_output(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``DeblurOutput`` (or any ``(sharp, defocus_map)`` pair) or a plain tensor -> ``(sharp, defocus_map)``."""
    if isinstance(output, torch.Tensor):
        return output, None
    sharp, defocus_map = output[0], output[1]
    return sharp, defocus_map


@torch.no_grad()
def deblur_tiled(
    net: nn.Module,
    image: torch.Tensor,
    tile: int | None = 512,
    overlap: int = 64,
    *,
    align: int = 32,
    keep_defocus_map: bool = False,
    output_device: str | torch.device | None = None,
) -> DeblurOutput:
    """Deblur ``image (B, 3, H, W)`` tile by tile; returns ``DeblurOutput(sharp, defocus_map)``.

    ``net(tiles) -> DeblurOutput`` (a plain tensor output is taken as ``sharp``); it runs on
    ``image.device``, in whatever train/eval mode it is in (call ``net.eval()`` first), without
    gradients. ``tile=None`` (or 0) runs the whole image at once. ``defocus_map`` is
    ``(B, S, H, W)`` when ``keep_defocus_map`` and the network returns one, else ``None``. The
    results are float32 on ``output_device`` (default: ``image.device``; "cpu" keeps a GPU's
    memory for the network). Blending and tolerance: see the module docstring.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got shape {tuple(image.shape)}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if tile is not None and tile != 0 and overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than tile ({tile})")
    output_device = torch.device(output_device) if output_device is not None else image.device
    batch, _, height, width = image.shape
    if not tile or (height <= tile and width <= tile):
        sharp, defocus_map = _split_output(net(image))
        defocus_map = defocus_map.float().to(output_device) if keep_defocus_map and defocus_map is not None else None
        return DeblurOutput(sharp.float().to(output_device), defocus_map)

    rows = tile_spans(height, tile, overlap, align)
    columns = tile_spans(width, tile, overlap, align)
    sharp_sum = torch.zeros(batch, 3, height, width, device=output_device)
    weight_sum = torch.zeros(1, 1, height, width, device=output_device)
    defocus_sum = None
    for row in rows:
        row_weights = tile_weights(row, height, overlap)
        for column in columns:
            weights = (row_weights[:, None] * tile_weights(column, width, overlap)[None, :]).to(output_device)
            patch = image[:, :, row[0] : row[1], column[0] : column[1]]
            sharp, defocus_map = _split_output(net(patch))
            rows_slice, columns_slice = slice(*row), slice(*column)
            sharp_sum[:, :, rows_slice, columns_slice] += weights * sharp.float().to(output_device)
            weight_sum[:, :, rows_slice, columns_slice] += weights
            if keep_defocus_map and defocus_map is not None:
                if defocus_sum is None:
                    defocus_sum = torch.zeros(batch, defocus_map.shape[1], height, width, device=output_device)
                defocus_sum[:, :, rows_slice, columns_slice] += weights * defocus_map.float().to(output_device)
    if not bool((weight_sum > 0).all()):  # a bug in the tiling, never the caller's fault
        raise RuntimeError(f"tiling left pixels uncovered for {height}x{width}, tile={tile}, overlap={overlap}")
    sharp = sharp_sum / weight_sum
    defocus_map = defocus_sum / weight_sum if defocus_sum is not None else None
    return DeblurOutput(sharp, defocus_map)


def defocus_map_to_scalar(defocus_map: torch.Tensor, chunk_pixels: int = 1 << 20) -> torch.Tensor:
    """First principal component of ``defocus_map (S, H, W)`` or ``(1, S, H, W)`` over pixels -> ``(H, W)``.

    The sign is fixed so that the component correlates positively with the per-pixel norm
    ``||B_hat(p)||`` (module docstring: larger means blurrier). Statistics accumulate in float64,
    ``chunk_pixels`` pixels at a time, so a 4096x2160x35 map needs no float64 copy of itself.
    """
    if defocus_map.dim() == 4:
        if defocus_map.shape[0] != 1:
            raise ValueError(f"defocus_map_to_scalar takes one map, got a batch of shape {tuple(defocus_map.shape)}")
        defocus_map = defocus_map[0]
    if defocus_map.dim() != 3:
        raise ValueError(f"defocus_map must be (S, H, W) or (1, S, H, W), got shape {tuple(defocus_map.shape)}")
    channels, height, width = defocus_map.shape
    pixels = defocus_map.reshape(channels, height * width)
    total = torch.zeros(channels, dtype=torch.float64, device=pixels.device)
    second_moment = torch.zeros(channels, channels, dtype=torch.float64, device=pixels.device)
    for start in range(0, pixels.shape[1], chunk_pixels):
        chunk = pixels[:, start : start + chunk_pixels].double()
        total += chunk.sum(dim=1)
        second_moment += chunk @ chunk.T
    count = pixels.shape[1]
    mean = total / count
    covariance = second_moment / count - torch.outer(mean, mean)
    _, eigenvectors = torch.linalg.eigh(covariance)
    component = eigenvectors[:, -1]  # eigh sorts eigenvalues in ascending order
    projection = torch.empty(count, dtype=torch.float64, device=pixels.device)
    norms = torch.empty(count, dtype=torch.float64, device=pixels.device)
    for start in range(0, count, chunk_pixels):
        chunk = pixels[:, start : start + chunk_pixels].double()
        projection[start : start + chunk.shape[1]] = component @ (chunk - mean[:, None])
        norms[start : start + chunk.shape[1]] = chunk.norm(dim=0)
    if float(((projection - projection.mean()) * (norms - norms.mean())).sum()) < 0:
        projection = -projection
    return projection.float().reshape(height, width)


def colorize_defocus(
    scalar_map: torch.Tensor, low_percentile: float = 1.0, high_percentile: float = 99.0
) -> np.ndarray:
    """``(H, W)`` map -> ``(H, W, 3)`` uint8 RGB with OpenCV's inferno colour map (dark = sharp).

    Values between the given percentiles are stretched over the colour map; a constant map is dark.
    """
    values = scalar_map.detach().float().cpu().numpy()
    low, high = np.percentile(values, [low_percentile, high_percentile])
    scaled = np.zeros_like(values) if high <= low else np.clip((values - low) / (high - low), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.rint(scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _collect_inputs(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (not recursively) in named folders, in order."""
    files: list[Path] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            if not found:
                raise FileNotFoundError(f"no images in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise ValueError(
                f"two inputs would write the same output name {path.stem!r}: {stems[path.stem]} and {path}"
            )
        stems[path.stem] = path
    return files


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: this torch has no CUDA device available")
    return device


def register(subparsers) -> None:
    """Add the ``deblur`` subcommand."""
    parser = subparsers.add_parser(
        "deblur",
        help="deblur images with a trained checkpoint (tiled, for any size)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by jdrl train")
    parser.add_argument("--out", required=True, help="output folder (created); <name>.png per input")
    parser.add_argument(
        "--tile", type=int, default=512, help="tile side in pixels; 0 = whole image at once (default 512)"
    )
    parser.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles in pixels (default 64)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    parser.add_argument(
        "--defocus-map",
        action="store_true",
        help="also write <name>_defocus.png (PCA of B_hat, colour-mapped) and <name>_radius.png (B_hat as a "
        "blur radius in pixels, jdrl.defocus.predicted_map_radius, with a colour bar)",
    )
    parser.add_argument(
        "--bit-depth", type=int, choices=(8, 16), default=8, help="bits per sample of the PNGs (default 8)"
    )
    parser.set_defaults(func=run)


def _radius_settings(checkpoint: str):
    """The checkpoint's loss settings (seed bound, kernel support), or None for a defocus map
    trained on raw seeds, which holds no weights to make a radius of."""
    from jdrl.checkpoint import load_checkpoint
    from jdrl.defocus import checkpoint_loss_config

    config = checkpoint_loss_config(load_checkpoint(checkpoint))
    return config if config.weighted_pseudo_map else None


def _write_radius(path: Path, defocus_map: torch.Tensor, config) -> None:
    """``<name>_radius.png``: F_B's map as a radius in pixels with a colour bar (jdrl.defocus)."""
    from jdrl.defocus import levels_for_seed_channels, predicted_map_radius, radius_picture

    levels = levels_for_seed_channels(defocus_map.shape[1])
    radius = predicted_map_radius(defocus_map, levels, config.seed_bound, config.kernel_support)[0]
    write_image_array(path, radius_picture(radius))


def run(args: argparse.Namespace) -> int:
    """Run ``deblur`` from parsed arguments; returns the exit code."""
    from jdrl.checkpoint import load_deblur_net

    device = resolve_device(args.device)
    files = _collect_inputs(args.inputs)
    net = load_deblur_net(args.checkpoint, map_location="cpu").to(device).eval()
    radius_config = _radius_settings(args.checkpoint) if args.defocus_map else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        began = time.perf_counter()
        image = read_image(path).unsqueeze(0).to(device)
        result = deblur_tiled(
            net, image, tile=args.tile, overlap=args.overlap, keep_defocus_map=args.defocus_map, output_device="cpu"
        )
        write_image(out / f"{path.stem}.png", result.sharp[0], bit_depth=args.bit_depth)
        note = ""
        if args.defocus_map:
            if result.defocus_map is None:
                note = " (this network has no defocus map)"
            else:
                write_image_array(
                    out / f"{path.stem}_defocus.png", colorize_defocus(defocus_map_to_scalar(result.defocus_map))
                )
                if radius_config is not None:
                    _write_radius(out / f"{path.stem}_radius.png", result.defocus_map, radius_config)
        height, width = image.shape[-2:]
        print(f"{path} ({width}x{height}) -> {out / (path.stem + '.png')} in {time.perf_counter() - began:.1f} s{note}")
    return 0
