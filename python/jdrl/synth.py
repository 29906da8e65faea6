"""Synthetic misaligned defocus pairs from sharp photos (`jdrl synth`).

Real defocus pairs (SDD, DPDD) come with an unknown misalignment between the blurry input and the
sharp target. This module makes pairs whose misalignment is known, so that the framework's
handling of it can be measured: each pair is

- ``blur/NAME.png``: a sharp photo crop, blurred by a spatially varying defocus (a smooth random
  depth map -> a per-pixel blur radius -> a layered disk or gaussian blur in linear light), plus
  mild noise. This is the reference geometry.
- ``gt/NAME.png``: the same scene as a second, sharp shot, misaligned the way real DSLR pairs are
  and the way a global flow cannot follow:

  * a zoom about a point near the centre (lens movement) and a shift of a few pixels, as the paper
    describes for SDD (section 3.5);
  * depth-dependent parallax: the second shot is taken from a slightly shifted viewpoint, so each
    point moves by ``parallax * (d - focus) / span`` along one direction, with ``d`` the same
    inverse-depth map that drives the blur radius (thin lens: radius ~ |d - focus|), ``focus`` the
    in-focus depth and ``span`` the largest ``|d - focus|`` on the crop: the focal plane stays,
    nearer points move one way, farther ones the other;
  * occluders: the scene has ``occluders`` fronto-parallel objects (a blob cut from elsewhere in the
    photo) in front of the background, each a step nearer than what it covers. Parallax moves them
    against the background, so the second shot shows background that the blurry shot hides
    (disocclusions, filled from the complete background layer) and hides some that it shows;
  * a smooth non-rigid warp of about ``nonrigid`` px (lens distortion, focus breathing, hand motion);
  * a small photometric change: exposure gain, per-channel white balance (both in linear light)
    and a gamma change.

  Training sees this one.
- For evaluation only: ``gt_aligned/NAME.png`` (the sharp scene in the blurry image's geometry and
  photometry: what a perfect deblurring would give), ``warp/NAME.npy`` (float32 ``(2, H, W)``,
  channel 0 = x, 1 = y, in pixels), the true correspondence of the surface visible at each blurry
  pixel, such that ``gt_aligned(p) = gt(p + flow(p))`` up to the photometric change, wherever that
  surface is not occluded in ``gt`` (``jdrl_ext.flow_warp(gt, flow) ~ gt_aligned``), and
  ``radius/NAME.npy`` (float32 ``(H, W)``, the true blur radius in pixels).

``--train N --test M`` write ``OUT/train`` and ``OUT/test``, each in that SDD layout, and
``OUT/meta.json`` records the parameters and every pair's draws. When there are at least four
source photos the test split uses photos that the train split never sees.

Everything is deterministic given the seed. The scene content (photo, crop, depth, occluders, blur,
noise) and the misalignment (shift, zoom, parallax, non-rigid warp, photometric change) come from
separate random streams, and the content does not depend on the misalignment settings, so datasets
made with the same seed at shifts 0, 1, 2, 4 px, zooms 0.5%, 1%, 2% or any parallax hold the same
blurry images and differ only in the misalignment of ``gt``. ``--parallax 0 --nonrigid 0
--exposure 0 --white-balance 0 --gamma 0 --occluders 0`` gives the pairs of the earlier versions
(one global shift and zoom), byte for byte.

Example:
    >>> import tempfile
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), 1, 1, size=32, shift=1.0, zoom=0.01)
    >>> sorted(p.name for p in (root / "train").iterdir())
    ['blur', 'gt', 'gt_aligned', 'radius', 'warp']
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from jdrl.atomic import atomic_write
from jdrl.errors import UsageError

__all__ = [
    "BUNDLED_PHOTOS",
    "BUNDLED_TEST_PHOTOS",
    "SynthError",
    "SynthParams",
    "SyntheticPair",
    "load_source_photos",
    "make_pair",
    "make_synthetic_dataset",
    "pair_sources",
    "photo_means",
    "register",
    "run",
    "synth_defaults_meta",
]

# Photos that ship inside the scikit-image wheel (read from its package folder, never downloaded).
# Left out: clock (motion-blurred), page/text (smaller than a crop), checkerboard/colorwheel/logo/
# horse (synthetic), cat (the same photo as chelsea).
BUNDLED_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "motorcycle_left",
    "motorcycle_right",
    "retina",
    "rocket",
)
# Held out for the test split, so a test crop never shows a scene trained on. Both motorcycle views
# stay in train: they are nearly the same scene.
BUNDLED_TEST_PHOTOS: tuple[str, ...] = ("chelsea", "coffee", "gravel", "moon")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
PSF_CHOICES = ("disk", "gaussian", "mixed")
SPLITS = ("train", "test")
OUTPUT_FOLDERS = ("blur", "gt", "gt_aligned", "warp", "radius")

# Blur radii between layered-blur levels: a pixel of radius 1.3 blends the 1.0 and 1.5 px blurs.
RADIUS_STEP = 0.5
# Defocus mixes light, so blur in (approximately) linear intensity, not in gamma-encoded sRGB.
DISPLAY_GAMMA = 2.2
# A crop whose gray standard deviation is below this is mostly flat (a black sky, a retina's
# border) and is drawn again, up to CROP_ATTEMPTS times.
MIN_CROP_CONTRAST = 0.04
CROP_ATTEMPTS = 8
# The zoom centre lies within this fraction of the crop side from the crop centre.
ZOOM_CENTRE_SPREAD = 0.1

# Occluder blobs: radius as a fraction of the crop side, the depth step in front of what they cover
# (in the units of the [0, 1] depth map), and the amplitude of the wobble of their outline.
OCCLUDER_RADIUS = (0.12, 0.24)
OCCLUDER_DEPTH_STEP = (0.3, 0.6)
OCCLUDER_WOBBLE = 0.12
# Outside the crop (in the margin) parallax may exceed its crop maximum by this factor at most.
PARALLAX_CLIP = 1.25
# The non-rigid warp: a sum of this many gaussian bumps of displacement, each of width
# NONRIGID_SIGMA (fraction of the crop side), scaled so that its largest displacement on the crop
# is the drawn amplitude.
NONRIGID_BUMPS = 4
NONRIGID_SIGMA = (0.08, 0.2)
# Fixed-point iterations that invert a layer's smooth warp; each divides the error by about
# 1 / (largest warp gradient) >= 10 at the default settings.
INVERSE_ITERATIONS = 8
INVERSE_TOLERANCE = 0.05  # px

# Independent random streams per pair, keyed by (seed, split, stream, index).
_STREAM_ORDER, _STREAM_CONTENT, _STREAM_MISALIGN, _STREAM_LAYERS = 0, 1, 2, 3
_SPLIT_CODE = {"train": 0, "test": 1}


class SynthError(UsageError, ValueError):
    """A bad argument or unusable source for the synthetic data; the message names it."""


Range = tuple[float, float]


@dataclass(frozen=True)
class SynthParams:
    """How every pair is made. Ranges are ``(low, high)``, drawn uniformly per pair.

    size: side of the square crops in pixels.
    shift: shift magnitude of ``gt`` in pixels; the direction is uniform on the circle.
    zoom: relative scale change of ``gt`` (0.01 = 1%); zoom in or out with equal odds.
    max_radius: largest defocus blur radius in pixels (each image peaks at 60-100% of it).
    psf: "disk", "gaussian" (sigma = radius / 2, the disk's second moment) or "mixed" (per image).
    noise: largest standard deviation of the gaussian noise on the blurry image, in [0, 1] units.
    scale: down-scaling of the photo before cropping (raised where the photo is too small).
    parallax: largest parallax of ``gt`` on the crop in pixels, reached at the depth farthest from
        the focal plane (the crop's nearest or farthest point); the direction is uniform on the circle.
    nonrigid: largest displacement of the smooth non-rigid warp of ``gt`` on the crop, in pixels.
    exposure: ``gt``'s exposure gain is ``1 + u * exposure``, ``u`` uniform in [-1, 1] (linear light).
    white_balance: each channel's gain of ``gt`` is ``1 + u_c * white_balance`` on top (linear light).
    gamma: ``gt``'s sRGB values are raised to ``1 + u * gamma``.
    occluders: objects in front of the background (scene content: they are in the blurry image too).

    The defaults resemble a real DSLR pair at 256 px: a 2 px shift, 1% zoom, up to 3 px of
    parallax, two occluders, 1 px of non-rigid warp, exposure within 3%, white balance and gamma
    within 2%.
    """

    size: int = 256
    shift: Range = (2.0, 2.0)
    zoom: Range = (0.01, 0.01)
    max_radius: float = 5.0
    psf: str = "mixed"
    noise: float = 0.01
    scale: Range = (0.5, 1.0)
    parallax: Range = (3.0, 3.0)
    nonrigid: Range = (1.0, 1.0)
    exposure: float = 0.03
    white_balance: float = 0.02
    gamma: float = 0.02
    occluders: int = 2


@dataclass
class SyntheticPair:
    """One pair, all images float32 RGB ``(H, W, 3)`` in [0, 1] (not yet quantized).

    blurry: the defocused input (reference geometry). sharp: the misaligned target (``gt``).
    sharp_aligned: the target in the blurry geometry. flow: ``(2, H, W)`` float32, channel 0 = x,
    1 = y, with ``sharp_aligned(p) = sharp(p + flow(p))`` (up to the photometric change, where
    ``occluded`` is false). radius: ``(H, W)`` float32 blur radius.
    record: the draws (crop, psf, focus, shift, zoom, parallax, gains, ...) as plain JSON values.
    depth: ``(H, W)`` float32, the inverse-depth map of the blurry geometry (larger = nearer) that
    drives both the blur radius and the parallax.
    occluded: ``(H, W)`` bool, blurry-geometry pixels whose surface is hidden in ``sharp``.
    disoccluded: ``(H, W)`` bool, ``sharp`` pixels that show a surface the blurry image hides.
    """

    blurry: np.ndarray
    sharp: np.ndarray
    sharp_aligned: np.ndarray
    flow: np.ndarray
    radius: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)
    depth: np.ndarray | None = None
    occluded: np.ndarray | None = None
    disoccluded: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Argument checks


def _as_range(name: str, value: float | tuple[float, float] | list[float]) -> Range:
    """A number or a (low, high) pair -> a checked (low, high) range."""
    if isinstance(value, (int, float)):
        low = high = float(value)
    else:
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise SynthError(f"{name} must be a number or a (low, high) pair, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SynthError(f"{name} must be finite, got {value!r}")
    if low < 0 or high < low:
        raise SynthError(f"{name} must satisfy 0 <= low <= high, got {value!r}")
    return low, high


def _check_fraction(name: str, value: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= high):
        raise SynthError(f"{name} must be a number in [0, {high:g}], got {value!r}")
    return float(value)


# Every check's message starts with the parameter's name (as make_synthetic_dataset spells it): the
# command turns that word into its flag (_in_flag_words), so a new check should start the same way.
def _check_params(
    size: int,
    shift: Any,
    zoom: Any,
    max_radius: float,
    psf: str,
    noise: float,
    scale: Any,
    parallax: Any = SynthParams.parallax,
    nonrigid: Any = SynthParams.nonrigid,
    exposure: float = SynthParams.exposure,
    white_balance: float = SynthParams.white_balance,
    gamma: float = SynthParams.gamma,
    occluders: int = SynthParams.occluders,
) -> SynthParams:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise SynthError(f"size must be an integer >= 8 (pixels), got {size!r}")
    size = int(size)
    shift_range = _as_range("shift", shift)
    if shift_range[1] >= size / 4:
        raise SynthError(f"shift must stay below size / 4 = {size / 4:g} px, got {shift!r}")
    zoom_range = _as_range("zoom", zoom)
    if zoom_range[1] >= 0.25:
        raise SynthError(f"zoom must stay below 0.25 (25%), got {zoom!r}; 0.01 means 1%")
    if not (math.isfinite(max_radius) and 0 <= max_radius <= size / 4):
        raise SynthError(f"max_radius must be in [0, size / 4 = {size / 4:g}] px, got {max_radius!r}")
    if psf not in PSF_CHOICES:
        raise SynthError(f"psf must be one of {', '.join(PSF_CHOICES)}, got {psf!r}")
    if not (math.isfinite(noise) and 0 <= noise <= 0.5):
        raise SynthError(f"noise must be in [0, 0.5], got {noise!r}")
    scale_range = _as_range("scale", scale)
    if scale_range[0] <= 0:
        raise SynthError(f"scale must be positive, got {scale!r}")
    parallax_range = _as_range("parallax", parallax)
    # Beyond about these, the warps of steep depth slopes start to fold over (see _inverse_map).
    if parallax_range[1] >= size / 10:
        raise SynthError(f"parallax must stay below size / 10 = {size / 10:g} px, got {parallax!r}")
    nonrigid_range = _as_range("nonrigid", nonrigid)
    if nonrigid_range[1] >= size / 20:
        raise SynthError(f"nonrigid must stay below size / 20 = {size / 20:g} px, got {nonrigid!r}")
    if isinstance(occluders, bool) or not isinstance(occluders, (int, np.integer)) or not 0 <= occluders <= 8:
        raise SynthError(f"occluders must be an integer in [0, 8], got {occluders!r}")
    return SynthParams(
        size=size,
        shift=shift_range,
        zoom=zoom_range,
        max_radius=float(max_radius),
        psf=psf,
        noise=float(noise),
        scale=scale_range,
        parallax=parallax_range,
        nonrigid=nonrigid_range,
        exposure=_check_fraction("exposure", exposure, 0.5),
        white_balance=_check_fraction("white_balance", white_balance, 0.5),
        gamma=_check_fraction("gamma", gamma, 0.5),
        occluders=int(occluders),
    )


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise SynthError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Source photos


def _to_rgb_uint8(image: np.ndarray, name: str) -> np.ndarray:
    """Gray, RGB or RGBA, any integer/float depth -> contiguous uint8 RGB ``(H, W, 3)``."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise SynthError(f"source photo {name} has shape {image.shape}; expected gray, RGB or RGBA")
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.integer):
            image = image.astype(np.float64) / np.iinfo(image.dtype).max
        image = np.clip(np.asarray(image, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _bundled_loader(name: str) -> Callable[[], np.ndarray]:
    from skimage import data

    if name == "motorcycle_left":
        return lambda: data.stereo_motorcycle()[0]
    if name == "motorcycle_right":
        return lambda: data.stereo_motorcycle()[1]
    return getattr(data, name)


@functools.lru_cache(maxsize=len(BUNDLED_PHOTOS))
def _load_bundled(name: str) -> np.ndarray:
    return _to_rgb_uint8(_bundled_loader(name)(), name)


@functools.lru_cache(maxsize=4)
def _load_file(path: str) -> np.ndarray:
    # IMREAD_COLOR gives 8-bit BGR for any depth and channel count that OpenCV reads.
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SynthError(f"cannot read source photo {path}")
    return np.ascontiguousarray(image[:, :, ::-1])


@dataclass(frozen=True)
class SourcePhoto:
    """A photo to crop from: a bundled scikit-image name or a file, loaded on demand."""

    name: str
    path: Path | None = None

    def load(self) -> np.ndarray:
        """-> uint8 RGB ``(H, W, 3)``."""
        if self.path is None:
            return _load_bundled(self.name)
        return _load_file(str(self.path))


def load_source_photos(source: str | os.PathLike | None = None) -> list[SourcePhoto]:
    """The photos to crop from: scikit-image's bundled ones (``None``) or a folder's images.

    A folder is read non-recursively; files with a suffix in ``IMAGE_SUFFIXES`` count. Photos are
    loaded lazily; an unreadable one raises ``SynthError`` naming it when it is first used.
    """
    if source is None:
        return [SourcePhoto(name) for name in BUNDLED_PHOTOS]
    folder = Path(source)
    if not folder.is_dir():
        raise SynthError(f"source folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SynthError(f"source folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    photos = []
    used_names: set[str] = set()
    for path in files:
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem) or "photo"
        unique = name
        suffix = 2
        while unique in used_names:  # a.png and a.jpg both exist
            unique = f"{name}_{suffix}"
            suffix += 1
        used_names.add(unique)
        photos.append(SourcePhoto(unique, path))
    return photos


def _split_sources(photos: list[SourcePhoto], bundled: bool) -> tuple[list[SourcePhoto], list[SourcePhoto], bool]:
    """-> (train photos, test photos, shared). Disjoint when there are at least four photos."""
    if bundled:
        test = [p for p in photos if p.name in BUNDLED_TEST_PHOTOS]
        return [p for p in photos if p.name not in BUNDLED_TEST_PHOTOS], test, False
    if len(photos) < 4:
        return photos, photos, True
    # Every fourth photo in name order: independent of the seed, so all seeds test on the same photos.
    test = photos[3::4]
    return [p for i, p in enumerate(photos) if i % 4 != 3], test, False


# --------------------------------------------------------------------------------------------
# Scene: crop, depth, blur


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _contrast(image: np.ndarray) -> float:
    return float(image.mean(axis=2).std())


def _sample_crop(photo: np.ndarray, params: SynthParams, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Rescale the photo and pick a crop of ``params.size``; -> (scaled photo, crop record).

    The record's ``crop_top_left`` is in the scaled, unflipped photo; ``flip`` mirrors the crop.

    The crop is chosen without regard to margins so that the scene does not depend on the
    misalignment or blur settings; ``_canvas`` extends it past the photo's border by reflection.
    """
    height, width = photo.shape[:2]
    size = params.size
    fit = size / min(height, width)  # the smallest scale at which a crop fits
    low, high = max(params.scale[0], fit), max(params.scale[1], fit)
    best: tuple[float, np.ndarray, dict] | None = None
    for _ in range(CROP_ATTEMPTS):
        scale = float(rng.uniform(low, high))
        scaled_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        scaled = (
            photo if scaled_size == (width, height) else cv2.resize(photo, scaled_size, interpolation=interpolation)
        )
        top = int(rng.integers(0, scaled.shape[0] - size + 1))
        left = int(rng.integers(0, scaled.shape[1] - size + 1))
        flip = bool(rng.random() < 0.5)
        contrast = _contrast(scaled[top : top + size, left : left + size].astype(np.float32) / 255.0)
        record = {"scale": scale, "crop_top_left": [top, left], "flip": flip}
        if best is None or contrast > best[0]:
            best = (contrast, scaled, record)
        if contrast >= MIN_CROP_CONTRAST:
            break
    assert best is not None
    _, scaled, record = best
    return scaled, record


def _canvas(scaled: np.ndarray, top: int, left: int, size: int, margin: int) -> np.ndarray:
    """The crop plus ``margin`` px on every side, reflected past the photo -> float32 [0, 1]."""
    height, width = scaled.shape[:2]
    pad_top, pad_left = max(0, margin - top), max(0, margin - left)
    pad_bottom = max(0, top + size + margin - height)
    pad_right = max(0, left + size + margin - width)
    padded = cv2.copyMakeBorder(scaled, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REFLECT_101)
    y0, x0 = top - margin + pad_top, left - margin + pad_left
    side = size + 2 * margin
    return padded[y0 : y0 + side, x0 : x0 + side].astype(np.float32) / 255.0


def _depth_map(canvas_side: int, margin: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random depth over the canvas, normalized to [0, 1] on the crop.

    A tilted plane, one to three gaussian blobs (objects nearer or farther) and three slow waves
    (uneven ground). It is a continuous function of crop-relative coordinates, so it does not
    depend on the margin.
    """
    coords = (np.arange(canvas_side, dtype=np.float32) - margin) / max(size - 1, 1)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    angle = rng.uniform(0, 2 * np.pi)
    depth = rng.uniform(0.0, 1.0) * (xs * np.cos(angle) + ys * np.sin(angle))
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(-0.1, 1.1, size=2)
        sigma = rng.uniform(0.1, 0.35)
        depth += rng.uniform(-1.0, 1.0) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    for _ in range(3):
        fx, fy = rng.uniform(-1.5, 1.5, size=2)  # cycles per crop: low frequencies only
        depth += rng.uniform(0.0, 0.25) * np.cos(2 * np.pi * (fx * xs + fy * ys) + rng.uniform(0, 2 * np.pi))
    crop = depth[margin : margin + size, margin : margin + size]
    low, high = float(crop.min()), float(crop.max())
    return ((depth - low) / max(high - low, 1e-6)).astype(np.float32)


def _radius_map(
    depth: np.ndarray, margin: int, size: int, max_radius: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Blur radius: 0 within a small depth of field around the focus depth, growing linearly with
    the distance from it, and peaking at 60-100% of ``max_radius`` on the crop."""
    crop = depth[margin : margin + size, margin : margin + size]
    focus = float(np.quantile(crop, rng.uniform(0.0, 1.0)))
    depth_of_field = float(rng.uniform(0.0, 0.05))
    peak = float(max_radius * rng.uniform(0.6, 1.0))
    defocus = np.maximum(np.abs(depth - focus) - depth_of_field, 0.0)
    crop_max = float(defocus[margin : margin + size, margin : margin + size].max())
    radius = np.clip(defocus * (peak / max(crop_max, 1e-6)), 0.0, peak).astype(np.float32)
    return radius, {"focus_depth": focus, "depth_of_field": depth_of_field, "peak_radius": peak}


@dataclass
class SceneLayer:
    """One layer of the scene on the canvas: ``texture`` float32 ``(S, S, 3)`` sRGB in [0, 1],
    ``alpha`` float32 ``(S, S)`` coverage, ``depth`` float32 ``(S, S)`` inverse depth (larger =
    nearer). The background has alpha 1 everywhere; layers are listed far to near."""

    texture: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray


def _crop_coordinates(canvas_side: int, margin: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas pixel -> crop-relative coordinates (0 at the crop's first pixel, 1 at its last)."""
    coords = (np.arange(canvas_side, dtype=np.float32) - margin) / max(size - 1, 1)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    return ys, xs


def composite_layers(layers: list[SceneLayer]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over-composite far to near -> (image ``(S, S, 3)``, depth ``(S, S)``, visible layer index).

    The depth blends like the colours (a smooth step across an anti-aliased edge); the visible
    layer at a pixel is the nearest one covering at least half of it.
    """
    image = layers[0].texture.copy()
    depth = layers[0].depth.copy()
    visible = np.zeros(depth.shape, np.int32)
    for index, layer in enumerate(layers[1:], start=1):
        alpha = layer.alpha
        image = alpha[:, :, None] * layer.texture + (1 - alpha[:, :, None]) * image
        depth = alpha * layer.depth + (1 - alpha) * depth
        visible[alpha >= 0.5] = index
    return image.astype(np.float32), depth.astype(np.float32), visible


def _occluder_layers(
    scaled: np.ndarray,
    flip: bool,
    background: SceneLayer,
    margin: int,
    size: int,
    count: int,
    rng: np.random.Generator,
) -> tuple[list[SceneLayer], list[dict]]:
    """``count`` occluders in front of the background, each nearer than all it covers.

    An occluder is a fronto-parallel blob (a circle with a wobbly outline, anti-aliased over one
    pixel) textured with another crop of the same photo, at a constant inverse depth a step
    (``OCCLUDER_DEPTH_STEP``) in front of the nearest point of the scene beneath it.
    """
    canvas_side = background.depth.shape[0]
    ys, xs = _crop_coordinates(canvas_side, margin, size)
    inner = (slice(margin, margin + size), slice(margin, margin + size))
    layers = [background]
    records = []
    for _ in range(count):
        centre = rng.uniform(0.15, 0.85, size=2)
        radius_px = float(rng.uniform(*OCCLUDER_RADIUS)) * size
        harmonics = [(k, float(rng.uniform(-OCCLUDER_WOBBLE, OCCLUDER_WOBBLE)), float(rng.uniform(0, 2 * np.pi)))
                     for k in (2, 3, 4)]
        top = int(rng.integers(0, scaled.shape[0] - size + 1))
        left = int(rng.integers(0, scaled.shape[1] - size + 1))
        step = float(rng.uniform(*OCCLUDER_DEPTH_STEP))

        dx, dy = (xs - centre[0]) * (size - 1), (ys - centre[1]) * (size - 1)
        angle = np.arctan2(dy, dx)
        outline = radius_px * (1 + sum(a * np.cos(k * angle + phase) for k, a, phase in harmonics))
        alpha = np.clip(outline - np.hypot(dx, dy) + 0.5, 0.0, 1.0).astype(np.float32)
        texture = _canvas(scaled, top, left, size, margin)
        if flip:
            texture = np.ascontiguousarray(texture[:, ::-1])
        _, beneath, _ = composite_layers(layers)
        covered = alpha[inner] >= 0.5
        nearest_beneath = float(beneath[inner][covered].max()) if covered.any() else float(beneath[inner].max())
        depth_value = nearest_beneath + step
        layers.append(SceneLayer(texture, alpha, np.full_like(alpha, depth_value)))
        records.append(
            {
                "centre_xy": [float(centre[0] * (size - 1)), float(centre[1] * (size - 1))],
                "radius_px": radius_px,
                "texture_top_left": [top, left],
                "depth": depth_value,
            }
        )
    return layers, records


@functools.lru_cache(maxsize=64)
def psf_kernel(kind: str, radius: float) -> np.ndarray:
    """Normalized ``(K, K)`` float32 PSF of a blur radius in pixels.

    "disk": the area of each pixel covered by a disk of that radius (8x8 supersampled), so
    fractional radii blur smoothly. "gaussian": sigma = radius / 2, which matches the disk's
    per-axis variance radius^2 / 4.
    """
    if radius <= 0:
        return np.ones((1, 1), np.float32)
    if kind == "disk":
        half = math.ceil(radius + 0.5)
        sub = (np.arange(8) + 0.5) / 8 - 0.5  # sub-pixel sample offsets
        offsets = np.arange(-half, half + 1)
        fine = (offsets[:, None] + sub[None, :]).reshape(-1)
        inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius**2
        kernel = inside.reshape(2 * half + 1, 8, 2 * half + 1, 8).mean(axis=(1, 3))
    elif kind == "gaussian":
        sigma = radius / 2
        half = max(1, math.ceil(3 * sigma))
        offsets = np.arange(-half, half + 1)
        kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    else:
        raise SynthError(f"psf kind must be disk or gaussian, got {kind!r}")
    return (kernel / kernel.sum()).astype(np.float32)


def layered_defocus_blur(image: np.ndarray, radius: np.ndarray, psf: str) -> np.ndarray:
    """Spatially varying blur: blur at radii 0, 0.5, 1, ... and blend per pixel by the radius map.

    image: float32 ``(H, W, 3)`` in linear intensity; radius: float32 ``(H, W)`` in pixels.
    Each pixel blends the two levels around its radius linearly (hat weights summing to 1), so a
    radius of 0 is the image itself. Borders reflect (the caller crops a margin away).
    """
    levels = math.ceil(float(radius.max()) / RADIUS_STEP) + 1 if radius.size else 1
    position = radius / RADIUS_STEP
    out = np.zeros_like(image)
    for level in range(levels):
        weight = np.clip(1.0 - np.abs(position - level), 0.0, 1.0)
        if not weight.any():
            continue
        if level == 0:
            blurred = image
        else:
            kernel = psf_kernel(psf, level * RADIUS_STEP)
            blurred = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        out += weight[:, :, None] * blurred
    return out


def _blur_margin(max_radius: float) -> int:
    """Pixels past the crop that the widest PSF reads (gaussian: 3 sigma = 1.5 radius)."""
    return math.ceil(1.5 * max_radius) + 2


# --------------------------------------------------------------------------------------------
# Misalignment


def _misalignment(params: SynthParams, rng: np.random.Generator) -> dict:
    """Draw shift (px, uniform direction), zoom (signed) and the zoom centre (crop pixels)."""
    magnitude = float(rng.uniform(*params.shift))
    angle = float(rng.uniform(0, 2 * np.pi))
    zoom = float(rng.uniform(*params.zoom)) * (1.0 if rng.random() < 0.5 else -1.0)
    centre = (params.size - 1) / 2 + rng.uniform(-ZOOM_CENTRE_SPREAD, ZOOM_CENTRE_SPREAD, size=2) * params.size
    # Everything below is drawn whatever the settings, so that each setting only scales its own
    # draws and the earlier ones (shift, zoom) stay those of the global-only versions.
    parallax = float(rng.uniform(*params.parallax))
    parallax_angle = float(rng.uniform(0, 2 * np.pi))
    nonrigid = float(rng.uniform(*params.nonrigid))
    bumps = [
        {
            "centre": [float(v) for v in rng.uniform(-0.1, 1.1, size=2)],
            "sigma": float(rng.uniform(*NONRIGID_SIGMA)),
            "vector": [float(v) for v in rng.standard_normal(2)],
        }
        for _ in range(NONRIGID_BUMPS)
    ]
    gain = 1.0 + params.exposure * float(rng.uniform(-1.0, 1.0))
    white_balance = 1.0 + params.white_balance * rng.uniform(-1.0, 1.0, size=3)
    gamma = 1.0 + params.gamma * float(rng.uniform(-1.0, 1.0))
    return {
        "shift_xy": [magnitude * math.cos(angle), magnitude * math.sin(angle)],
        "zoom": zoom,
        "zoom_centre_xy": [float(centre[0]), float(centre[1])],
        "parallax_px": parallax,
        "parallax_direction_xy": [math.cos(parallax_angle), math.sin(parallax_angle)],
        "nonrigid_px": nonrigid,
        "nonrigid_bumps": bumps,
        "exposure_gain": gain,
        "white_balance_rgb": [float(v) for v in white_balance],
        "gamma": gamma,
    }


def _misalignment_margin(params: SynthParams) -> int:
    """Pixels past the crop that the misaligned target samples from, at the largest shift, zoom,
    parallax and non-rigid warp."""
    max_zoom = params.zoom[1]
    # The zoom centre is within ZOOM_CENTRE_SPREAD * size of the middle; corners are farthest.
    reach = (0.5 + ZOOM_CENTRE_SPREAD) * params.size * math.sqrt(2)
    local = PARALLAX_CLIP * params.parallax[1] + PARALLAX_CLIP * params.nonrigid[1]
    return math.ceil((max_zoom * reach + params.shift[1] + local) / (1 - max_zoom)) + 3  # + bicubic taps


def _parallax_flow(depth: np.ndarray, focus: float, span: float, misalignment: dict) -> np.ndarray:
    """Parallax of a layer, float32 ``(2, S, S)``: ``parallax * (d - focus) / span`` along the
    drawn direction, clipped to ``PARALLAX_CLIP`` times the crop's largest value in the margin.

    A camera moved sideways by ``b`` sees a point of inverse depth ``d`` move by ``f b d``; aiming
    at the same focal plane removes ``f b focus``, which leaves the focal plane in place.
    """
    scale = np.clip((depth - focus) / max(span, 1e-6), -PARALLAX_CLIP, PARALLAX_CLIP)
    direction = misalignment["parallax_direction_xy"]
    magnitude = misalignment["parallax_px"]
    return np.stack([magnitude * direction[0] * scale, magnitude * direction[1] * scale]).astype(np.float32)


def _nonrigid_flow(canvas_side: int, margin: int, size: int, misalignment: dict) -> np.ndarray:
    """The smooth non-rigid warp, float32 ``(2, S, S)``: gaussian bumps of displacement scaled so
    that the largest displacement on the crop is ``nonrigid_px`` (clipped at ``PARALLAX_CLIP``
    times that in the margin). A function of crop-relative coordinates, like the depth map."""
    amplitude = misalignment["nonrigid_px"]
    if amplitude == 0:
        return np.zeros((2, canvas_side, canvas_side), np.float32)
    ys, xs = _crop_coordinates(canvas_side, margin, size)
    field = np.zeros((2, canvas_side, canvas_side), np.float64)
    for bump in misalignment["nonrigid_bumps"]:
        (cx, cy), sigma, vector = bump["centre"], bump["sigma"], bump["vector"]
        weight = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
        field += np.asarray(vector)[:, None, None] * weight[None]
    magnitude = np.hypot(field[0], field[1])
    crop_max = float(magnitude[margin : margin + size, margin : margin + size].max())
    field *= amplitude / max(crop_max, 1e-12)
    too_far = np.maximum(np.hypot(field[0], field[1]) / (PARALLAX_CLIP * amplitude), 1.0)
    return (field / too_far[None]).astype(np.float32)


def _inverse_map(local_flow: np.ndarray, margin: int, size: int, misalignment: dict) -> tuple[np.ndarray, np.ndarray]:
    """Where each ``gt`` pixel ``q`` of the crop comes from in the blurry geometry, as canvas
    coordinates ``(map_x, map_y)`` for ``cv2.remap``.

    A layer's point ``p`` appears in ``gt`` at ``A(p) + h(p)``, with ``A(p) = c + (1 + zoom)(p - c)
    + shift`` and ``h`` the layer's smooth local flow (parallax + non-rigid, on the canvas). So
    ``p = A^-1(q - h(p))``, solved by fixed-point iteration from ``p = A^-1(q)``.
    """
    zoom = misalignment["zoom"]
    (tx, ty), (cx, cy) = misalignment["shift_xy"], misalignment["zoom_centre_xy"]
    coords = np.arange(size, dtype=np.float32)
    qy, qx = np.meshgrid(coords, coords, indexing="ij")
    px = cx + (qx - cx - tx) / (1 + zoom)
    py = cy + (qy - cy - ty) / (1 + zoom)
    for iteration in range(INVERSE_ITERATIONS + 1):
        hx = cv2.remap(local_flow[0], px + margin, py + margin, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        hy = cv2.remap(local_flow[1], px + margin, py + margin, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if iteration == INVERSE_ITERATIONS:
            break
        px = cx + (qx - hx - cx - tx) / (1 + zoom)
        py = cy + (qy - hy - cy - ty) / (1 + zoom)
    # p must map back onto q; it does not where the warp folds over (its gradient exceeds 1).
    miss = np.hypot(cx + (1 + zoom) * (px - cx) + tx + hx - qx, cy + (1 + zoom) * (py - cy) + ty + hy - qy)
    if float(miss.max()) > INVERSE_TOLERANCE:
        raise SynthError(
            f"parallax / nonrigid too large for size {size}: the warp folds over (inverse off by "
            f"{float(miss.max()):.2f} px); use smaller --parallax / --nonrigid or a larger --size"
        )
    return (px + margin).astype(np.float32), (py + margin).astype(np.float32)


def _render_second_view(
    layers: list[SceneLayer], local_flows: list[np.ndarray], margin: int, size: int, misalignment: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene seen by the second (sharp) shot -> (image ``(size, size, 3)``, visible layer index,
    disoccluded mask), both in ``gt``'s geometry.

    Each layer is resampled through its own inverse warp and composited far to near. The
    background layer is complete (it continues behind the occluders), so where parallax uncovers
    background the image shows it: a disoccluded pixel shows a layer's point that a nearer layer
    hides in the blurry shot.
    """
    image = np.zeros((size, size, 3), np.float32)
    visible = np.zeros((size, size), np.int32)
    hidden_in_blurry = np.zeros((size, size), bool)
    # coverage_in_blurry[i]: how much the layers nearer than i cover each canvas pixel.
    coverage_in_blurry: list[np.ndarray] = [layers[0].alpha] * len(layers)
    nearer = np.zeros_like(layers[0].alpha)
    for index in range(len(layers) - 1, -1, -1):
        coverage_in_blurry[index] = nearer.copy()
        nearer = 1 - (1 - nearer) * (1 - layers[index].alpha)
    for index, (layer, local_flow) in enumerate(zip(layers, local_flows)):
        map_x, map_y = _inverse_map(local_flow, margin, size, misalignment)
        texture = cv2.remap(layer.texture, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
        texture = np.clip(texture, 0.0, 1.0)
        if index == 0:
            image = texture
            alpha = np.ones((size, size), np.float32)
        else:
            alpha = cv2.remap(layer.alpha, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            image = alpha[:, :, None] * texture + (1 - alpha[:, :, None]) * image
        shown = alpha >= 0.5
        visible[shown] = index
        hidden = cv2.remap(coverage_in_blurry[index], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        hidden_in_blurry[shown] = hidden[shown] >= 0.5
    return image.astype(np.float32), visible, hidden_in_blurry


def _photometric_change(image: np.ndarray, misalignment: dict) -> np.ndarray:
    """The second shot's exposure gain and white balance (in linear light), then its gamma change."""
    gain = misalignment["exposure_gain"] * np.asarray(misalignment["white_balance_rgb"], np.float32)
    if np.all(gain == 1.0) and misalignment["gamma"] == 1.0:
        return image
    linear = np.power(np.clip(image, 0.0, 1.0), DISPLAY_GAMMA) * gain[None, None, :]
    encoded = np.power(np.clip(linear, 0.0, 1.0), 1.0 / DISPLAY_GAMMA)
    return np.power(encoded, misalignment["gamma"]).astype(np.float32)


def misalignment_flow(size: int, shift_xy: list[float], zoom: float, zoom_centre_xy: list[float]) -> np.ndarray:
    """The flow of a zoom-and-shift, float32 ``(2, size, size)``, channel 0 = x, 1 = y.

    The target's pixel that shows what the blurry image shows at ``p`` is
    ``M(p) = c + (1 + zoom) (p - c) + shift``, so ``flow(p) = M(p) - p = zoom (p - c) + shift``
    and ``sharp_aligned(p) = sharp(p + flow(p))``.
    """
    coords = np.arange(size, dtype=np.float64)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    flow_x = zoom * (xs - zoom_centre_xy[0]) + shift_xy[0]
    flow_y = zoom * (ys - zoom_centre_xy[1]) + shift_xy[1]
    return np.stack([flow_x, flow_y]).astype(np.float32)


def _misaligned_target(canvas: np.ndarray, margin: int, size: int, misalignment: dict) -> np.ndarray:
    """``sharp(q) = canvas(M^-1(q) + margin)``: the target resampled (bicubic) from the canvas."""
    zoom = misalignment["zoom"]
    (tx, ty), (cx, cy) = misalignment["shift_xy"], misalignment["zoom_centre_xy"]
    if zoom == 0 and tx == 0 and ty == 0:
        return canvas[margin : margin + size, margin : margin + size].copy()
    inverse_scale = 1.0 / (1.0 + zoom)
    # M^-1(q) = c + (q - c - shift) / (1 + zoom), in canvas pixels (+ margin).
    to_source = np.array(
        [
            [inverse_scale, 0.0, cx + margin - (cx + tx) * inverse_scale],
            [0.0, inverse_scale, cy + margin - (cy + ty) * inverse_scale],
        ]
    )
    sharp = cv2.warpAffine(
        canvas,
        to_source,
        (size, size),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return np.clip(sharp, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# One pair


def make_pair(
    photo: np.ndarray,
    params: SynthParams,
    content_rng: np.random.Generator,
    misalign_rng: np.random.Generator,
    layer_rng: np.random.Generator | None = None,
) -> SyntheticPair:
    """Make one synthetic pair from a uint8 RGB photo ``(H, W, 3)``.

    ``content_rng`` draws the crop, depth, PSF and noise; ``layer_rng`` the occluders (scene
    content too; by default a child stream of ``content_rng``, which leaves its draws unchanged);
    ``misalign_rng`` the shift, zoom, parallax, non-rigid warp and photometric change.
    """
    size = params.size
    if layer_rng is None:
        layer_rng = content_rng.spawn(1)[0]
    scaled, crop_record = _sample_crop(photo, params, content_rng)
    margin = max(_blur_margin(params.max_radius), _misalignment_margin(params))
    top, left = crop_record["crop_top_left"]
    canvas = _canvas(scaled, top, left, size, margin)
    if crop_record["flip"]:
        canvas = np.ascontiguousarray(canvas[:, ::-1])  # the margins are symmetric, so this mirrors the crop
    inner = (slice(margin, margin + size), slice(margin, margin + size))

    background_depth = _depth_map(canvas.shape[0], margin, size, content_rng)
    background = SceneLayer(canvas, np.ones(canvas.shape[:2], np.float32), background_depth)
    layers, occluder_records = _occluder_layers(
        scaled, crop_record["flip"], background, margin, size, params.occluders, layer_rng
    )
    scene, depth, visible = composite_layers(layers)
    radius, focus_record = _radius_map(depth, margin, size, params.max_radius, content_rng)
    psf = params.psf if params.psf != "mixed" else ("disk" if content_rng.random() < 0.5 else "gaussian")
    linear = np.power(scene, DISPLAY_GAMMA)
    blurry_linear = layered_defocus_blur(linear, radius, psf)[inner]
    blurry = np.power(np.clip(blurry_linear, 0.0, 1.0), 1.0 / DISPLAY_GAMMA)
    noise_sigma = float(content_rng.uniform(0.0, params.noise))
    noise = content_rng.standard_normal(blurry.shape).astype(np.float32)
    blurry = np.clip(blurry + noise_sigma * noise, 0.0, 1.0).astype(np.float32)

    misalignment = _misalignment(params, misalign_rng)
    global_flow = misalignment_flow(
        size, misalignment["shift_xy"], misalignment["zoom"], misalignment["zoom_centre_xy"]
    )
    focus = focus_record["focus_depth"]
    span = float(np.abs(depth[inner] - focus).max())
    nonrigid = _nonrigid_flow(canvas.shape[0], margin, size, misalignment)
    local_flows = [_parallax_flow(layer.depth, focus, span, misalignment) + nonrigid for layer in layers]
    if misalignment["parallax_px"] == 0 and misalignment["nonrigid_px"] == 0:
        # Only the global zoom and shift: every layer moves alike, nothing is (dis)occluded.
        sharp = _misaligned_target(scene, margin, size, misalignment)
        flow = global_flow
        occluded = np.zeros((size, size), bool)
        disoccluded = np.zeros((size, size), bool)
    else:
        sharp, visible_in_sharp, disoccluded = _render_second_view(layers, local_flows, margin, size, misalignment)
        visible_crop = visible[inner]
        local = np.zeros((2, size, size), np.float32)
        for index, local_flow in enumerate(local_flows):
            local[:, visible_crop == index] = local_flow[:, inner[0], inner[1]][:, visible_crop == index]
        flow = (global_flow + local).astype(np.float32)
        # A blurry pixel is occluded when a nearer layer shows where its surface lands in gt.
        coords = np.arange(size, dtype=np.float32)
        ys, xs = np.meshgrid(coords, coords, indexing="ij")
        landing = cv2.remap(
            visible_in_sharp.astype(np.float32), xs + flow[0], ys + flow[1], cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_REPLICATE,
        )
        occluded = landing > visible_crop
    sharp = _photometric_change(sharp, misalignment)
    record = {
        **crop_record,
        **focus_record,
        "psf": psf,
        "noise_sigma": noise_sigma,
        "occluders": occluder_records,
        **misalignment,
        "occluded_fraction": float(occluded.mean()),
        "disoccluded_fraction": float(disoccluded.mean()),
    }
    return SyntheticPair(
        blurry=blurry,
        sharp=sharp.astype(np.float32),
        sharp_aligned=scene[inner].copy(),
        flow=flow,
        radius=radius[inner].copy(),
        record=record,
        depth=depth[inner].copy(),
        occluded=occluded,
        disoccluded=disoccluded,
    )


# --------------------------------------------------------------------------------------------
# Writing


def _write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write next to ``path`` and rename, so an interrupted run leaves no half-written file."""
    with atomic_write(path, "wb") as stream:
        stream.write(payload)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """float32 RGB in [0, 1] -> 8-bit PNG."""
    quantized = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(quantized[:, :, ::-1]))
    if not ok:
        raise SynthError(f"cannot encode {path} as PNG")
    _write_bytes_atomic(path, encoded.tobytes())


def _write_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    _write_bytes_atomic(path, buffer.getvalue())


def _prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"output {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise SynthError(
                f"output folder {out_dir} is not empty; pass overwrite=True (--overwrite) to replace its pairs"
            )
        # Remove only what this module writes, so a wrong OUT never loses unrelated files.
        for split in SPLITS:
            for folder in OUTPUT_FOLDERS:
                directory = out_dir / split / folder
                if directory.is_dir():
                    for item in directory.iterdir():
                        if item.is_file() and item.suffix in (".png", ".npy"):
                            item.unlink()
    for split in SPLITS:
        for folder in OUTPUT_FOLDERS:
            (out_dir / split / folder).mkdir(parents=True, exist_ok=True)


def _source_sequence(photos: list[SourcePhoto], count: int, rng: np.random.Generator) -> list[SourcePhoto]:
    """Cycle through the photos in shuffled rounds, so every photo is used before any repeats."""
    sequence: list[SourcePhoto] = []
    while len(sequence) < count:
        sequence.extend(photos[i] for i in rng.permutation(len(photos)))
    return sequence[:count]


def pair_sources(root: str | os.PathLike, split: str) -> dict[str, str]:
    """Pair name -> the name of the photo it was cut from, as ``root/meta.json`` records them for
    ``split`` ({} without a ``meta.json``). Crops of one photo are not independent samples: scores
    are best compared photo by photo too."""
    path = Path(root) / "meta.json"
    if not path.is_file():
        return {}
    meta = json.loads(path.read_text())
    return {pair["name"]: pair["source"] for pair in meta.get("pairs", {}).get(split, [])}


def photo_means(scores: dict[str, float], photos: dict[str, str]) -> dict[str, float]:
    """Pair name -> score, to photo -> the mean score of its pairs (``photos``: what
    :func:`pair_sources` gives; a pair without a recorded photo stands alone under its own name)."""
    groups: dict[str, list[float]] = {}
    for name, value in scores.items():
        groups.setdefault(photos.get(name, name), []).append(value)
    return {photo: sum(values) / len(values) for photo, values in groups.items()}


def synth_defaults_meta() -> dict[str, Any]:
    """The ``meta.json`` entries of the misalignment parts beyond shift and zoom at their defaults.

    For callers that cache a dataset and reuse it when its ``meta.json`` matches what they would
    make: without these keys, a set made before they existed (or with other values) would match.
    """
    defaults = SynthParams()
    return {
        "parallax": list(defaults.parallax),
        "nonrigid": list(defaults.nonrigid),
        "exposure": defaults.exposure,
        "white_balance": defaults.white_balance,
        "gamma": defaults.gamma,
        "occluders": defaults.occluders,
    }


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 16,
    n_test: int = 4,
    size: int = 256,
    shift: float | tuple[float, float] = 2.0,
    zoom: float | tuple[float, float] = 0.01,
    max_radius: float = 5.0,
    seed: int = 0,
    source: str | os.PathLike | None = None,
    *,
    psf: str = "mixed",
    noise: float = 0.01,
    scale: float | tuple[float, float] = (0.5, 1.0),
    parallax: float | tuple[float, float] = SynthParams.parallax,
    nonrigid: float | tuple[float, float] = SynthParams.nonrigid,
    exposure: float = SynthParams.exposure,
    white_balance: float = SynthParams.white_balance,
    gamma: float = SynthParams.gamma,
    occluders: int = SynthParams.occluders,
    overwrite: bool = False,
) -> Path:
    """Write ``n_train`` + ``n_test`` synthetic misaligned pairs under ``out_dir``; -> ``out_dir``.

    Layout: ``out_dir/{train,test}/{blur,gt}/NAME.png`` (SDD), plus for evaluation
    ``gt_aligned/NAME.png``, ``warp/NAME.npy`` (float32 ``(2, H, W)``, x then y, with
    ``gt_aligned(p) = gt(p + flow(p))``) and ``radius/NAME.npy`` (float32 ``(H, W)``), and
    ``out_dir/meta.json``. ``shift``, ``zoom``, ``scale``, ``parallax`` and ``nonrigid`` take a
    number (fixed) or a ``(low, high)`` range. See ``SynthParams`` for the meaning of each parameter.
    ``source``: a folder of sharp photos, or None for scikit-image's bundled photos.
    """
    params = _check_params(
        size, shift, zoom, max_radius, psf, noise, scale, parallax, nonrigid, exposure, white_balance, gamma, occluders
    )
    counts = {"train": _check_count("n_train", n_train), "test": _check_count("n_test", n_test)}
    if counts["train"] + counts["test"] == 0:
        raise SynthError("n_train + n_test must be at least 1, got 0 and 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")
    photos = load_source_photos(source)
    train_photos, test_photos, shared = _split_sources(photos, bundled=source is None)
    out_dir = Path(out_dir)
    _prepare_output(out_dir, overwrite)

    pairs: dict[str, list[dict]] = {}
    for split, split_photos in (("train", train_photos), ("test", test_photos)):
        code = _SPLIT_CODE[split]
        sequence = _source_sequence(split_photos, counts[split], _rng(seed, code, _STREAM_ORDER))
        records = []
        for index, photo in enumerate(sequence):
            pair = make_pair(
                photo.load(),
                params,
                _rng(seed, code, _STREAM_CONTENT, index),
                _rng(seed, code, _STREAM_MISALIGN, index),
                _rng(seed, code, _STREAM_LAYERS, index),
            )
            name = f"{index:04d}_{photo.name}"
            root = out_dir / split
            _write_png(root / "blur" / f"{name}.png", pair.blurry)
            _write_png(root / "gt" / f"{name}.png", pair.sharp)
            _write_png(root / "gt_aligned" / f"{name}.png", pair.sharp_aligned)
            _write_npy(root / "warp" / f"{name}.npy", pair.flow)
            _write_npy(root / "radius" / f"{name}.npy", pair.radius)
            records.append({"name": name, "source": photo.name, **pair.record})
        pairs[split] = records

    meta = {
        "seed": int(seed),
        "size": params.size,
        "shift": list(params.shift),
        "zoom": list(params.zoom),
        "max_radius": params.max_radius,
        "psf": params.psf,
        "noise": params.noise,
        "scale": list(params.scale),
        "parallax": list(params.parallax),
        "nonrigid": list(params.nonrigid),
        "exposure": params.exposure,
        "white_balance": params.white_balance,
        "gamma": params.gamma,
        "occluders": params.occluders,
        "source": "skimage.data" if source is None else str(Path(source).resolve()),
        "sources": {"train": [p.name for p in train_photos], "test": [p.name for p in test_photos]},
        "sources_shared_between_splits": shared,
        "counts": counts,
        "conventions": {
            "warp": "float32 (2, H, W), channel 0 = x (right), 1 = y (down), pixels; "
            "gt_aligned(p) = gt(p + flow(p)), i.e. flow_warp(gt, flow) ~ gt_aligned, up to the photometric "
            "change and except where the surface at p is occluded in gt (occluded_fraction per pair)",
            "misalignment": "gt shows at M(p) = c + (1 + zoom)(p - c) + shift + parallax(p) + nonrigid(p) what "
            "blur shows at p; parallax(p) = parallax_px * (d(p) - focus_depth) / span * parallax_direction_xy, "
            "d the inverse depth of the surface at p (the one behind the blur radius), span = max |d - focus_depth| "
            "on the crop",
            "photometric": "gt = (clip(exposure_gain * white_balance_rgb * gt_geometric ** 2.2) ** (1 / 2.2)) ** gamma",
            "disocclusions": "gt pixels showing a surface the blurry image hides are rendered from the complete "
            "background layer (disoccluded_fraction per pair)",
            "gt_aligned": "the unblurred scene in the blurry image's geometry and photometry",
            "radius": "float32 (H, W), defocus blur radius in pixels in the blur image's geometry",
            "gamma": f"blur applied to sRGB ** {DISPLAY_GAMMA}",
        },
        "pairs": pairs,
    }
    _write_bytes_atomic(out_dir / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out_dir


# --------------------------------------------------------------------------------------------
# Command line


def _parse_range(text: str) -> tuple[float, float]:
    """'2' -> (2, 2); '1:3' -> (1, 3)."""
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or LOW:HIGH, got {text!r}") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"expected a number or LOW:HIGH, got {text!r}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` subcommand."""
    parser = subparsers.add_parser(
        "synth",
        help="make synthetic misaligned blurry/sharp pairs from sharp photos",
        description=(
            "Make synthetic defocus pairs in SDD layout (blur/, gt/) with a known misalignment: "
            "spatially varying defocus blur on the input; on the sharp target zoom and shift, depth-dependent "
            "parallax with disocclusions around occluders, a smooth non-rigid warp and a small exposure/colour "
            "change (--parallax 0 --nonrigid 0 --exposure 0 --white-balance 0 --gamma 0 --occluders 0: "
            "zoom and shift only). "
            "gt_aligned/, warp/ (flow, (2,H,W), x then y, gt_aligned(p) = gt(p + flow(p))) and "
            "radius/ are written for evaluation only."
        ),
    )
    parser.add_argument("out", type=Path, help="output folder (gets train/, test/ and meta.json)")
    parser.add_argument("--train", type=int, default=16, metavar="N", help="number of training pairs (default 16)")
    parser.add_argument("--test", type=int, default=4, metavar="M", help="number of test pairs (default 4)")
    parser.add_argument(
        "--size", type=int, default=256, metavar="PX", help="side of the square crops in pixels (default 256)"
    )
    parser.add_argument(
        "--shift",
        type=_parse_range,
        default=(2.0, 2.0),
        metavar="PX",
        help="shift of gt in pixels, fixed (2) or a range (1:3); random direction (default 2)",
    )
    parser.add_argument(
        "--zoom",
        type=_parse_range,
        default=(0.01, 0.01),
        metavar="Z",
        help="relative zoom of gt, fixed (0.01 = 1%%) or a range (0.005:0.02); in or out at random (default 0.01)",
    )
    parser.add_argument(
        "--max-radius",
        type=float,
        default=5.0,
        metavar="PX",
        help="largest defocus blur radius in pixels; each image peaks at 60-100%% of it (default 5)",
    )
    parser.add_argument(
        "--psf",
        choices=PSF_CHOICES,
        default="mixed",
        help="blur kernel: disk, gaussian (sigma = radius/2) or mixed, chosen per image (default mixed)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.01,
        metavar="SIGMA",
        help="largest std of the gaussian noise on the blurry image, in [0, 1] units (default 0.01)",
    )
    parser.add_argument(
        "--scale",
        type=_parse_range,
        default=(0.5, 1.0),
        metavar="S",
        help="photo down-scaling before cropping, fixed or LOW:HIGH (default 0.5:1)",
    )
    parser.add_argument(
        "--parallax",
        type=_parse_range,
        default=SynthParams.parallax,
        metavar="PX",
        help="largest depth-dependent parallax of gt on the crop in pixels, fixed or LOW:HIGH; points move by "
        "parallax * (inverse depth - focus) / span, so the focal plane stays and near/far points move opposite "
        "ways (default 3)",
    )
    parser.add_argument(
        "--nonrigid",
        type=_parse_range,
        default=SynthParams.nonrigid,
        metavar="PX",
        help="largest displacement of a smooth random non-rigid warp of gt in pixels, fixed or LOW:HIGH (default 1)",
    )
    parser.add_argument(
        "--exposure",
        type=float,
        default=SynthParams.exposure,
        metavar="F",
        help="exposure gain of gt drawn in 1 +- F, in linear light (default 0.03)",
    )
    parser.add_argument(
        "--white-balance",
        type=float,
        default=SynthParams.white_balance,
        metavar="F",
        help="per-channel gain of gt drawn in 1 +- F, in linear light (default 0.02)",
    )
    parser.add_argument(
        "--gamma",
        type=float,
        default=SynthParams.gamma,
        metavar="F",
        help="gt's sRGB values raised to a power drawn in 1 +- F (default 0.02)",
    )
    parser.add_argument(
        "--occluders",
        type=int,
        default=SynthParams.occluders,
        metavar="N",
        help="objects in front of the background (in both images; parallax moves them against it, "
        "uncovering background in gt) (default 2)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="SEED", help="random seed; same seed, same data (default 0)"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of sharp photos to crop from (default: scikit-image's bundled photos)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the pairs in a non-empty output folder")
    # one flag's default each (not the sum's), to tell a rejected default in the error (_in_flag_words)
    flag_dests = [_DEST_OF.get(name, name) for name in _FLAG_OF if name.isidentifier()]
    parser.set_defaults(func=run, synth_defaults={dest: parser.get_default(dest) for dest in flag_dests})


# The checks of make_synthetic_dataset name its parameters; the command's error names the flag
# instead (n_train -> --train, max_radius -> --max-radius, "size / 4" -> "--size / 4"), and says
# when the rejected value is the flag's default, which the user may never have typed (e.g. --size 16
# with the default --max-radius 5).
_FLAG_OF = {"n_train + n_test": "--train + --test", "n_train": "--train", "n_test": "--test",
            **{name: "--" + name.replace("_", "-")
               for name in ("size", "shift", "zoom", "max_radius", "psf", "noise", "scale", "parallax", "nonrigid",
                            "exposure", "white_balance", "gamma", "occluders", "seed")}}
_DEST_OF = {"n_train": "train", "n_test": "test"}  # the parameters whose argparse dest has another name


def _in_flag_words(message: str, args: argparse.Namespace) -> str:
    for name, flag in _FLAG_OF.items():  # the sum first: "n_train + n_test" before "n_train"
        if message.startswith(name + " "):
            message = flag + message[len(name):].replace(" size / ", " --size / ")
            dest = _DEST_OF.get(name, name)
            defaults = getattr(args, "synth_defaults", {})
            if dest in defaults and getattr(args, dest, None) == defaults[dest]:
                message += f" (that is {flag}'s default)"
            break
    return message


def run(args: argparse.Namespace) -> int:
    """Run ``jdrl synth``; -> exit status (2 on a bad argument, with the reason on stderr)."""
    started = time.perf_counter()
    try:
        out = make_synthetic_dataset(
            args.out,
            args.train,
            args.test,
            size=args.size,
            shift=args.shift,
            zoom=args.zoom,
            max_radius=args.max_radius,
            seed=args.seed,
            source=args.source,
            psf=args.psf,
            noise=args.noise,
            scale=args.scale,
            parallax=args.parallax,
            nonrigid=args.nonrigid,
            exposure=args.exposure,
            white_balance=args.white_balance,
            gamma=args.gamma,
            occluders=args.occluders,
            overwrite=args.overwrite,
        )
    except SynthError as error:
        print(f"jdrl synth: error: {_in_flag_words(str(error), args)}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(f"wrote {args.train} train + {args.test} test pairs of {args.size}x{args.size} to {out} in {elapsed:.1f} s")
    return 0
