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
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from jdrl.errors import JdrlError, UsageError
from jdrl.imageio import IMAGE_EXTENSIONS, is_image_file, read_stored_image, write_image_array, write_png
from jdrl.models import DeblurOutput

__all__ = [
    "StreamingDefocusPCA",
    "colorize_defocus",
    "deblur_tiled",
    "defocus_map_to_scalar",
    "register",
    "resolve_device",
    "run",
    "tile_spans",
    "tile_weights",
]


# `jdrl deblur`'s tile side when --tile is not given. A 4096x2160 photo with the small preset on
# the CPU peaks at ~1.1 GB with 512 tiles now that the transformer blocks run in bands of rows
# without gradients (~1.7-1.9 GB before), and 512 tiles spend ~8% less arithmetic in the overlaps
# than 384 tiles (benchmarks/RESULTS.md, "Transformer blocks in bands of rows").
DEFAULT_TILE = 512


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


# A block sink: ``sink(top, left, block (B, C, h, w), (height, width))`` receives a finished block of
# the image whose top-left pixel is (top, left); ``block`` is valid only during the call.
BlockSink = Callable[[int, int, torch.Tensor, tuple[int, int]], None]


class _WholeImage:
    """A block sink that copies the finished blocks into one ``(B, C, H, W)`` float32 tensor."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.image: torch.Tensor | None = None

    def __call__(self, top: int, left: int, block: torch.Tensor, size: tuple[int, int]) -> None:
        if top == 0 and left == 0 and tuple(block.shape[2:]) == tuple(size):  # the whole image at once
            # contiguous: a network may return channels_last or another view; callers expect NCHW.
            self.image = block.to(self.device, torch.float32).contiguous()
            return
        if self.image is None:
            self.image = torch.empty(block.shape[0], block.shape[1], *size, dtype=torch.float32, device=self.device)
        self.image[:, :, top : top + block.shape[2], left : left + block.shape[3]] = block


def _fan_out(sinks: list[BlockSink]) -> BlockSink | None:
    """One sink that calls each of ``sinks`` in turn (None when there are none)."""
    if not sinks:
        return None

    def emit(top: int, left: int, block: torch.Tensor, size: tuple[int, int]) -> None:
        for sink in sinks:
            sink(top, left, block, size)

    return emit


class _TileBlender:
    """The weighted sum of overlapping tiles, visited in row-major order, without a whole-image buffer.

    Tile ``(i, j)`` covers rows ``rows[i]`` and columns ``columns[j]``. Once it has been added, the
    block from its top-left corner to the next tile row's and tile column's starts is final (no later
    tile covers it) and goes to ``emit``; what later tiles still add to stays in two carries: the
    rows below the next tile row's start (full width, a few tile overlaps high) and the columns
    right of the next tile column's start (one tile high). Each pixel receives the same additions
    in the same order as in one whole-image buffer, so the sums are the same to the bit.

    Use: ``region = begin(i, j)`` (the tile's partial sums so far), add the tile's share to
    ``region`` in place, then ``finish(i, j)``.
    """

    def __init__(
        self,
        rows: list[tuple[int, int]],
        columns: list[tuple[int, int]],
        batch: int,
        channels: int,
        dtype: torch.dtype,
        device: torch.device,
        emit: BlockSink,
    ) -> None:
        self.rows, self.columns, self.emit = rows, columns, emit
        self.size = (rows[-1][1], columns[-1][1])
        tallest = max(end - start for start, end in rows)
        widest = max(end - start for start, end in columns)
        # A region lies in memory as it would in a whole image, so that elementwise kernels walk it
        # the same way: rows apart (a spare column) when tiles are narrower than the image; rows
        # adjacent but channel planes apart (a spare row) when one tile spans the width.
        if len(columns) > 1:
            self.work = torch.empty(batch, channels, tallest, widest + 1, dtype=dtype, device=device)
        else:
            self.work = torch.empty(batch, channels, tallest + 1, widest, dtype=dtype, device=device)
        carried_rows = max([end - following[0] for (_, end), following in zip(rows, rows[1:])], default=0)
        carried_columns = max([end - following[0] for (_, end), following in zip(columns, columns[1:])], default=0)
        # The rows still open below the current tile row: read by the tile row being added and
        # written for the next one in the same buffer (a column is written only after it was read).
        self.row_carry = torch.zeros(batch, channels, carried_rows, self.size[1], dtype=dtype, device=device)
        self.column_carry = torch.empty(batch, channels, tallest, carried_columns, dtype=dtype, device=device)

    def _finished(self, i: int, j: int) -> tuple[int, int]:
        """Rows and columns of tile (i, j), from its top-left corner, that no later tile covers."""
        (row_start, _), (column_start, _) = self.rows[i], self.columns[j]
        next_row = self.rows[i + 1][0] if i + 1 < len(self.rows) else self.size[0]
        next_column = self.columns[j + 1][0] if j + 1 < len(self.columns) else self.size[1]
        return next_row - row_start, next_column - column_start

    def begin(self, i: int, j: int) -> torch.Tensor:
        """Tile (i, j)'s region ``(B, C, h, w)`` holding what earlier tiles added to its pixels."""
        (row_start, row_end), (column_start, column_end) = self.rows[i], self.columns[j]
        region = self.work[:, :, : row_end - row_start, : column_end - column_start]
        region.zero_()
        from_left = self.columns[j - 1][1] - column_start if j > 0 else 0  # tile (i, j-1) also covered these
        from_above = self.rows[i - 1][1] - row_start if i > 0 else 0  # tile row i-1 also covered these
        if from_left > 0:
            region[:, :, :, :from_left] = self.column_carry[:, :, : row_end - row_start, :from_left]
        if from_above > 0:
            region[:, :, :from_above, from_left:] = self.row_carry[:, :, :from_above, column_start + from_left : column_end]
        return region

    def finish(self, i: int, j: int) -> None:
        """Emit tile (i, j)'s finished block and keep the rest of its region for later tiles."""
        (row_start, row_end), (column_start, column_end) = self.rows[i], self.columns[j]
        region = self.work[:, :, : row_end - row_start, : column_end - column_start]
        finished_rows, finished_columns = self._finished(i, j)
        self.emit(row_start, column_start, region[:, :, :finished_rows, :finished_columns], self.size)
        if finished_columns < region.shape[3]:
            self.column_carry[:, :, : region.shape[2], : region.shape[3] - finished_columns] = region[:, :, :, finished_columns:]
        if finished_rows < region.shape[2]:
            self.row_carry[:, :, : region.shape[2] - finished_rows, column_start : column_start + finished_columns] = region[
                :, :, finished_rows:, :finished_columns
            ]


def _as_float(image: torch.Tensor) -> torch.Tensor:
    """A float tensor in [0, 1]: floats as they are, uint8 divided by 255."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


def _normalized_weights(spans: list[tuple[int, int]], length: int, overlap: int) -> list[torch.Tensor]:
    """Each span's :func:`tile_weights` divided by the sum over all spans at each pixel.

    The tiles form a full grid, so the 2-D weight sum at (y, x) is the product of the row sum at y
    and the column sum at x: normalizing each axis makes every pixel's weights sum to 1, each tile
    adds its finished share in place, and no whole-image weight buffer is needed.
    """
    weights = [tile_weights(span, length, overlap).double() for span in spans]
    total = torch.zeros(length, dtype=torch.float64)
    for (start, end), weight in zip(spans, weights):
        total[start:end] += weight
    if not bool((total > 0).all()):  # a bug in the tiling, never the caller's fault
        raise RuntimeError(f"tiling left pixels uncovered along an axis of {length}, overlap={overlap}")
    return [(weight / total[start:end]).float() for (start, end), weight in zip(spans, weights)]


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
    defocus_sink: BlockSink | None = None,
    sharp_sink: BlockSink | None = None,
    defocus_channels: int | None = None,
) -> DeblurOutput:
    """Deblur ``image (B, 3, H, W)`` tile by tile; returns ``DeblurOutput(sharp, defocus_map)``.

    ``image`` is float in [0, 1], or uint8 (read as value / 255 a tile at a time, so that a large
    photo is never held as floats).

    ``net(tiles) -> DeblurOutput`` (a plain tensor output is taken as ``sharp``); it runs on
    ``image.device``, in whatever train/eval mode it is in (call ``net.eval()`` first), without
    gradients. ``tile=None`` (or 0) runs the whole image at once. ``defocus_map`` is
    ``(B, S, H, W)`` when ``keep_defocus_map`` and the network returns one, else ``None``. The
    results are float32 on ``output_device`` (default: ``image.device``; "cpu" keeps a GPU's
    memory for the network). Blending and tolerance: see the module docstring.

    Memory: no whole-image float buffer is needed. Each tile's weighted share is added to a
    buffer one tile large; the block that no later tile covers then goes out, and only the
    overlaps that later tiles still add to are carried (``_TileBlender``). The sinks
    ``sharp_sink`` and ``defocus_sink``, ``sink(top, left, block (B, C, h, w), (H, W))``, receive
    the finished blocks in tile order (row-major), each pixel once; a block is valid only during
    the call. With ``sharp_sink`` the returned ``sharp`` is None (the caller keeps what it needs,
    e.g. 8-bit samples); without it the blocks fill one float32 image. The defocus map (S = 35
    channels, 9x the image) goes to ``defocus_sink`` (``StreamingDefocusPCA``,
    ``StreamingDefocusRadius``) and/or into a whole map (``keep_defocus_map``). With a sink only,
    its partial sums are stored as float16 (half the memory; each tile's share is computed in
    float32 and rounded once, relative error below 1e-3, invisible in the colour-mapped map); with
    ``keep_defocus_map`` as float32. ``defocus_channels`` (S, e.g. 35), when known, lets the
    defocus buffers be allocated before the first tile runs instead of after it (less heap
    fragmentation around the network's activations); None: allocated after the first tile.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got shape {tuple(image.shape)}")
    if not (image.is_floating_point() or image.dtype == torch.uint8):
        raise ValueError(f"image must be float or uint8, got {image.dtype}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if tile is not None and tile != 0 and overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than tile ({tile})")
    output_device = torch.device(output_device) if output_device is not None else image.device
    batch, _, height, width = image.shape
    whole_sharp = _WholeImage(output_device) if sharp_sink is None else None
    emit_sharp = sharp_sink if sharp_sink is not None else whole_sharp
    whole_map = _WholeImage(output_device) if keep_defocus_map else None
    emit_map = _fan_out([sink for sink in (whole_map, defocus_sink) if sink is not None])

    def result() -> DeblurOutput:
        return DeblurOutput(
            whole_sharp.image if whole_sharp is not None else None, whole_map.image if whole_map is not None else None
        )

    if not tile or (height <= tile and width <= tile):
        sharp, defocus_map = _split_output(net(_as_float(image)))
        emit_sharp(0, 0, sharp.float().to(output_device), (height, width))
        if emit_map is not None and defocus_map is not None:
            emit_map(0, 0, defocus_map.float().to(output_device), (height, width))
        return result()

    rows = tile_spans(height, tile, overlap, align)
    columns = tile_spans(width, tile, overlap, align)
    row_weights = _normalized_weights(rows, height, overlap)
    column_weights = [weight.to(output_device) for weight in _normalized_weights(columns, width, overlap)]
    sharp_blender = _TileBlender(rows, columns, batch, 3, torch.float32, output_device, emit_sharp)
    map_dtype = torch.float32 if keep_defocus_map else torch.float16

    def map_blender(channels: int) -> _TileBlender:
        return _TileBlender(rows, columns, batch, channels, map_dtype, output_device, emit_map)

    defocus_blender = map_blender(defocus_channels) if emit_map is not None and defocus_channels else None
    weight_buffer = torch.empty(
        max(end - start for start, end in rows) * max(end - start for start, end in columns), device=output_device
    )
    for i, (row_start, row_end) in enumerate(rows):
        row_weight = row_weights[i].to(output_device)
        for j, ((column_start, column_end), column_weight) in enumerate(zip(columns, column_weights)):
            weights = weight_buffer[: (row_end - row_start) * (column_end - column_start)].view(
                row_end - row_start, column_end - column_start
            )
            torch.mul(row_weight[:, None], column_weight[None, :], out=weights)
            sharp, defocus_map = _split_output(net(_as_float(image[:, :, row_start:row_end, column_start:column_end])))
            sharp_blender.begin(i, j).addcmul_(sharp.to(output_device, torch.float32), weights)
            sharp_blender.finish(i, j)
            del sharp
            if emit_map is not None and defocus_map is not None:
                if defocus_blender is None:
                    defocus_blender = map_blender(defocus_map.shape[1])
                share = torch.mul(defocus_map.to(output_device, torch.float32), weights)  # float32, rounded once
                defocus_map = None
                defocus_blender.begin(i, j).add_(share)
                del share
                defocus_blender.finish(i, j)
            del defocus_map
    return result()


class StreamingDefocusPCA:
    """:func:`defocus_map_to_scalar` of a map that arrives in blocks (a ``deblur_tiled``
    ``defocus_sink``), without holding the map in memory.

    The blocks go to an unnamed temporary file (``TMPDIR``; 35 float32 channels, pixel-major in
    image order, 1.2 GB for a 4096x2160 image). :meth:`scalar_map` then reads it back twice: once
    for the statistics (sum and second moment, float64, in runs of rows that start at the blocks'
    tops, ``chunk_pixels`` at a time), once to project onto the first principal component. Equals
    ``defocus_map_to_scalar`` up to float rounding (tests/test_inference.py).

    The file is closed by :meth:`close` (or at the end of a ``with`` block, or by
    :meth:`scalar_map`), not left to the garbage collector. Reads and writes go through the file
    object's ``seek``/``write``/``readinto``, which every platform has.
    """

    def __init__(self, chunk_pixels: int = 1 << 16) -> None:
        self.chunk_pixels = chunk_pixels
        self.storage = tempfile.TemporaryFile(prefix="jdrl-defocus-")
        self.channels = 0
        self.height = 0
        self.width = 0
        self.received = 0  # pixels written
        self.run_starts: set[int] = set()
        self.total: torch.Tensor | None = None
        self.second_moment: torch.Tensor | None = None

    def close(self) -> None:
        """Delete the temporary file (idempotent)."""
        self.storage.close()

    def __enter__(self) -> "StreamingDefocusPCA":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __call__(self, top: int, left: int, block: torch.Tensor, size: tuple[int, int]) -> None:
        if block.shape[0] != 1:
            raise ValueError(f"StreamingDefocusPCA takes one image, got a batch of {block.shape[0]}")
        channels, rows, columns = block.shape[1:]
        if not self.channels:
            self.channels, (self.height, self.width) = channels, size
        if channels != self.channels or tuple(size) != (self.height, self.width):
            raise ValueError(
                f"blocks must come from one (S, H, W) map: got {channels} channels of {tuple(size)} after "
                f"{self.channels} of {(self.height, self.width)}"
            )
        self.run_starts.add(top)
        # Pixel-major float32 at its place in the file, one image row of the block at a time
        # through one small reused buffer: no block-sized temporary between the network's tiles.
        row_buffer = torch.empty(columns, channels, dtype=torch.float32)
        row_bytes = memoryview(row_buffer.numpy()).cast("B")
        for row in range(rows):
            row_buffer.copy_(block[0, :, row].T)
            self.storage.seek(((top + row) * self.width + left) * channels * 4)
            if self.storage.write(row_bytes) != len(row_bytes):
                raise OSError("could not write the defocus map's temporary file (is TMPDIR full?)")
        self.received += rows * columns

    def _read(self, buffer: np.ndarray, pixel_start: int, pixels: int) -> torch.Tensor:
        """``pixels`` pixels from ``pixel_start`` as a ``(pixels, S)`` float32 view of ``buffer``."""
        values = buffer[: pixels * self.channels]
        self.storage.seek(pixel_start * self.channels * 4)
        if self.storage.readinto(memoryview(values).cast("B")) != values.nbytes:
            raise OSError("the defocus map's temporary file was cut short (is TMPDIR full?)")
        return torch.from_numpy(values.reshape(pixels, self.channels))

    def _statistics(self, buffer: np.ndarray) -> None:
        """Sum and second moment (float64) of every pixel, in the row runs the blocks started."""
        self.total = torch.zeros(self.channels, dtype=torch.float64)
        self.second_moment = torch.zeros(self.channels, self.channels, dtype=torch.float64)
        rows_per_chunk = max(1, self.chunk_pixels // self.width)
        starts = sorted(self.run_starts)
        for run_start, run_end in zip(starts, starts[1:] + [self.height]):
            for first in range(run_start, run_end, rows_per_chunk):
                count = min(rows_per_chunk, run_end - first)
                # Channel-major and contiguous, as the rows of a (S, h, W) map would be.
                chunk = self._read(buffer, first * self.width, count * self.width).T.contiguous().double()
                self.total += chunk.sum(dim=1)
                self.second_moment += chunk @ chunk.T

    def scalar_map(self) -> torch.Tensor:
        """The ``(H, W)`` first-principal-component map, sign as in :func:`defocus_map_to_scalar`."""
        if not self.channels:
            raise ValueError("no defocus map was received (does the network return one?)")
        count = self.height * self.width
        if self.received != count:
            raise ValueError(f"the defocus map's blocks covered {self.received} of its {count} pixels")
        buffer = np.empty(max(self.chunk_pixels, self.width) * self.channels, dtype=np.float32)  # reused
        self._statistics(buffer)
        mean = self.total / count
        covariance = self.second_moment / count - torch.outer(mean, mean)
        _, eigenvectors = torch.linalg.eigh(covariance)
        component = eigenvectors[:, -1]  # eigh sorts eigenvalues in ascending order
        projection = torch.empty(count, dtype=torch.float64)
        norms = torch.empty(count, dtype=torch.float64)
        for start in range(0, count, self.chunk_pixels):
            size = min(self.chunk_pixels, count - start)
            chunk = self._read(buffer, start, size).double().T
            projection[start : start + size] = component @ (chunk - mean[:, None])
            norms[start : start + size] = chunk.norm(dim=0)
        self.close()
        if float(((projection - projection.mean()) * (norms - norms.mean())).sum()) < 0:
            projection = -projection
        return projection.float().reshape(self.height, self.width)


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


def _collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Image files named directly or found (not recursively) in named folders, in order, and one
    message per entry that gave none (missing path, folder without images)."""
    files: list[Path] = []
    problems: list[str] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            if not found:
                problems.append(f"{path}: no images in this folder ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise UsageError(
                f"two inputs would write the same output name {path.stem!r}.png: {stems[path.stem]} and {path}; "
                "deblur them into different --out folders"
            )
        stems[path.stem] = path
    return files, problems


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this torch has no CUDA device available; use --device cpu")
    return device


def _writable_folder(folder: Path) -> Path:
    """Create ``folder`` if needed and check that files can be written in it (errors name it)."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder}: this is a file, not a folder; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise JdrlError(
            f"--out {folder}: cannot write in this folder ({error.strerror or error}); choose a writable folder"
        ) from error
    return folder


def register(subparsers) -> None:
    """Add the ``deblur`` subcommand."""
    parser = subparsers.add_parser(
        "deblur",
        help="deblur images with a trained checkpoint (tiled, for any size)",
        description=__doc__ + _CLI_NOTES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by jdrl train")
    parser.add_argument("--out", required=True, help="output folder (created); <name>.png per input")
    parser.add_argument(
        "--tile", type=int, default=DEFAULT_TILE,
        help=f"tile side in pixels; 0 = whole image at once (default {DEFAULT_TILE})",
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
        "--bit-depth",
        type=int,
        choices=(8, 16),
        default=None,
        help="bits per sample of the output PNGs (default: the input's; 16 for float TIFFs)",
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose outputs are already in --out (to resume an interrupted folder run)",
    )
    parser.set_defaults(func=run)


_CLI_NOTES = """
jdrl deblur writes <name>.png per input into --out (and <name>_defocus.png, <name>_radius.png
with --defocus-map):
same bit depth as the input (8 or 16; --bit-depth to choose), grayscale stays grayscale, an alpha
channel is carried through unchanged, and the ICC profile and EXIF (orientation) are kept. An input
that cannot be read is reported and skipped; the last line says how many succeeded and failed, and
the exit status is 1 if any failed. Outputs are written atomically: after an interruption,
--skip-existing continues where the run stopped.
"""


def _to_samples(image: torch.Tensor, bit_depth: int) -> np.ndarray:
    """``(C, H, W)`` floats -> ``(H, W, C)`` uint8/uint16, clipped and rounded (in place on ``image``)."""
    peak = 255.0 if bit_depth == 8 else 65535.0
    if not bool(torch.isfinite(image).all()):
        raise JdrlError("the network produced non-finite values (NaN or inf); is the checkpoint damaged?")
    samples = image.clamp_(0.0, 1.0).mul_(peak).round_().to(torch.uint8 if bit_depth == 8 else torch.int32)
    array = samples.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(array if bit_depth == 8 else array.astype(np.uint16))


def _alpha_at(alpha: np.ndarray, bit_depth: int) -> np.ndarray:
    """The input's alpha channel, unchanged when the output keeps its bit depth, else rescaled."""
    if alpha.dtype == np.uint8:
        return alpha if bit_depth == 8 else alpha.astype(np.uint16) * 257
    if alpha.dtype == np.uint16:
        return alpha if bit_depth == 16 else np.rint(alpha / 257.0).astype(np.uint8)
    peak = 255.0 if bit_depth == 8 else 65535.0  # float TIFF
    return np.rint(np.clip(alpha, 0.0, 1.0) * peak).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _radius_settings(checkpoint: str):
    """The checkpoint's loss settings (seed bound, kernel support) for ``<name>_radius.png``, or
    None where the map holds no radius: a map not supervised by Eq. 13 (Eq. 1, or raw seeds: no
    weights in it) or unbounded
    seeds (the split needs the whole map's largest value, which a streamed map never has)."""
    from jdrl.checkpoint import load_checkpoint
    from jdrl.defocus import checkpoint_loss_config

    config = checkpoint_loss_config(load_checkpoint(checkpoint))
    supervised = config.pseudo_supervision and config.weighted_pseudo_map  # else B_hat never learned B_P
    return config if supervised and config.seed_bound > 0 else None


class StreamingDefocusRadius:
    """F_B's map as a blur radius in pixels (:func:`jdrl.defocus.predicted_map_radius`, per pixel),
    filled block by block as a ``deblur_tiled`` ``defocus_sink``: only the ``(H, W)`` radius is kept.

    ``size`` ``(H, W)``, when known, allocates the radius map at once (before the network runs),
    else at the first block."""

    def __init__(
        self, seed_bound: float, support: str, rows_per_chunk: int = 32, size: tuple[int, int] | None = None
    ) -> None:
        self.seed_bound = seed_bound
        self.support = support
        self.rows_per_chunk = rows_per_chunk
        self.radius: torch.Tensor | None = torch.empty(size, dtype=torch.float32) if size is not None else None

    def __call__(self, top: int, left: int, block: torch.Tensor, size: tuple[int, int]) -> None:
        from jdrl.defocus import levels_for_seed_channels, predicted_map_radius

        if self.radius is None:
            self.radius = torch.empty(size, dtype=torch.float32)
        if tuple(self.radius.shape) != tuple(size):
            raise ValueError(f"blocks of a {tuple(size)} map, but the radius map is {tuple(self.radius.shape)}")
        levels = levels_for_seed_channels(block.shape[1])
        # A few rows at a time: the split into weights and seeds makes float32 copies of all S
        # channels, about 1 GB for a whole 448-row band of a 4096-wide image.
        columns = block.shape[3]
        for first in range(0, block.shape[2], self.rows_per_chunk):
            chunk = block[:1, :, first : first + self.rows_per_chunk]
            radius = predicted_map_radius(chunk, levels, self.seed_bound, self.support)[0]
            self.radius[top + first : top + first + radius.shape[0], left : left + columns] = radius.cpu()


class _SampleSink:
    """A ``deblur_tiled`` ``sharp_sink`` that turns each finished block into the output file's
    samples at once (8- or 16-bit, gray as the mean of the three channels, the input's alpha
    beside them), so that no float copy of the whole image is held."""

    def __init__(self, height: int, width: int, bit_depth: int, gray: bool, alpha: np.ndarray | None) -> None:
        self.bit_depth, self.gray = bit_depth, gray
        colour_channels = 1 if gray else 3
        channels = colour_channels + (alpha.shape[2] if alpha is not None else 0)
        dtype = np.uint8 if bit_depth == 8 else np.uint16
        self.pixels = np.empty((height, width, channels), dtype=dtype)
        if alpha is not None:
            self.pixels[:, :, colour_channels:] = _alpha_at(alpha, bit_depth)

    def __call__(self, top: int, left: int, block: torch.Tensor, size: tuple[int, int]) -> None:
        sharp = block[0]
        # A copy: _to_samples works in place, and the block belongs to the caller.
        sharp = sharp.mean(dim=0, keepdim=True) if self.gray else sharp.clone()  # gray: the net saw it 3 times
        samples = _to_samples(sharp, self.bit_depth)
        self.pixels[top : top + samples.shape[0], left : left + samples.shape[1], : samples.shape[2]] = samples


def _deblur_file(
    net: nn.Module, path: Path, out: Path, args: argparse.Namespace, device: torch.device, radius_config=None
) -> str:
    """Deblur one file into ``out``; returns a note for the progress line.

    Every whole-image buffer (the input, the output samples, the radius map) is allocated before
    the network runs, so that none lands between the network's freed activations and fragments the
    heap that later tiles reuse."""
    stored = read_stored_image(path)
    input_bit_depth = stored.bit_depth
    color = torch.from_numpy(stored.color).permute(2, 0, 1)
    if stored.color.dtype == np.uint8:
        image = color  # deblur_tiled converts a tile at a time
    elif stored.color.dtype == np.uint16:
        image = color.to(torch.int32).float().div_(65535.0)
    else:
        image = color.float().clamp_(0.0, 1.0)
    image = image.unsqueeze(0).to(device)
    del color
    stored.color = np.empty(0, dtype=stored.color.dtype)  # the pixels live on in `image` only
    height, width = image.shape[2:]
    bit_depth = args.bit_depth or (8 if input_bit_depth == 8 else 16)
    samples = _SampleSink(height, width, bit_depth, stored.gray, stored.alpha)
    stored.alpha = None  # copied into the samples
    defocus_pca = StreamingDefocusPCA() if args.defocus_map else None
    defocus_radius = (
        StreamingDefocusRadius(radius_config.seed_bound, radius_config.kernel_support, size=(height, width))
        if args.defocus_map and radius_config is not None
        else None
    )
    defocus_sink = _fan_out([sink for sink in (defocus_pca, defocus_radius) if sink is not None])
    map_net = getattr(net, "defocus_map_net", None)
    try:
        deblur_tiled(
            net, image, tile=args.tile, overlap=args.overlap, output_device="cpu", sharp_sink=samples,
            defocus_sink=defocus_sink, defocus_channels=getattr(map_net, "out_channels", None),
        )
        del image
        write_png(out / f"{path.stem}.png", samples.pixels, stored.metadata)
        del samples
        if defocus_pca is None:
            return ""
        if not defocus_pca.channels:
            return " (this network has no defocus map)"
        scalar_map = defocus_pca.scalar_map()
    finally:  # an error or Ctrl-C between tiles: the 1.2 GB temporary file goes now, not at GC
        if defocus_pca is not None:
            defocus_pca.close()
    write_image_array(out / f"{path.stem}_defocus.png", colorize_defocus(scalar_map))
    if defocus_radius is not None and defocus_radius.radius is not None:
        from jdrl.defocus import radius_picture

        write_image_array(out / f"{path.stem}_radius.png", radius_picture(defocus_radius.radius))
    return ""


def run(args: argparse.Namespace) -> int:
    """Run ``deblur`` from parsed arguments; 0 when every input was deblurred, else 1."""
    from jdrl.checkpoint import load_deblur_net
    from jdrl.cli import error_line
    from jdrl.process_env import keep_freed_memory

    if args.tile < 0 or args.overlap < 0:
        raise UsageError(f"--tile and --overlap must be >= 0, got {args.tile} and {args.overlap}")
    if args.tile and (args.tile - args.overlap) // 32 < 1:
        raise UsageError(
            f"--tile {args.tile} minus --overlap {args.overlap} must be at least 32 (tiles start on a 32-pixel grid)"
        )
    device = resolve_device(args.device)
    files, problems = _collect_inputs(args.inputs)
    out = _writable_folder(Path(args.out))
    net = load_deblur_net(args.checkpoint, map_location="cpu").to(device).eval()
    has_defocus_map = hasattr(net, "defocus_map_net")  # the jdrl net; the UNet has none
    radius_config = _radius_settings(args.checkpoint) if args.defocus_map and has_defocus_map else None
    keep_freed_memory()
    for problem in problems:
        print(f"jdrl deblur: skipped {problem}", file=sys.stderr)
    succeeded, failed, skipped = 0, len(problems), 0
    for path in files:
        targets = [out / f"{path.stem}.png"]
        if args.defocus_map and has_defocus_map:
            targets.append(out / f"{path.stem}_defocus.png")
            if radius_config is not None:
                targets.append(out / f"{path.stem}_radius.png")
        if args.skip_existing and all(target.exists() for target in targets):
            skipped += 1
            continue
        began = time.perf_counter()
        try:
            note = _deblur_file(net, path, out, args, device, radius_config)
        except KeyboardInterrupt:
            print(
                f"jdrl deblur: interrupted after {succeeded} images; every output written is complete: "
                "run the same command with --skip-existing to continue",
                file=sys.stderr,
            )
            return 130
        except (JdrlError, OSError) as error:  # this input's problem: report it, go on with the rest
            failed += 1
            print(f"jdrl deblur: skipped {path}: {error_line(error)[0]}", file=sys.stderr)
            continue
        succeeded += 1
        print(f"{path} -> {targets[0]} in {time.perf_counter() - began:.1f} s{note}", flush=True)
    summary = f"deblurred {succeeded}, failed {failed}"
    if args.skip_existing:
        summary += f", skipped {skipped} already done"
    print(f"{summary}; outputs in {out}")
    return 1 if failed else 0
