"""Defocus maps in pixels and how well they match the true blur (SPEC section 7, "Implied blur radius").

- :func:`implied_radius`: the blur radius that the reblurring net R applies at each pixel, from its
  seeds and weights: ``r_impl = sqrt(2 * sum_d k(d) |d|^2)`` with ``k`` the mixed kernel of
  ``jdrl_ext.reblur`` (level 0 a delta weighted by ``weights[:, 0]``). A uniform disk of radius
  ``R`` has ``E|d|^2 = R^2 / 2``, so it gives ``R``.
- :func:`predicted_map_radius`: the same for the deblurring net's defocus map ``B_hat`` (F_B), which
  is trained to match the pseudo map ``B_P = w_r * seeds_r`` (Eq. 13) and so holds products of
  weights and seeds, not the two apart; see that function for how they are split.
- :func:`defocus_correlations`: Spearman and Pearson correlations of predicted radius maps against
  true ones, pooled over images, the ``m - 1`` border excluded, on textured pixels (and on all).
- :func:`radius_picture`: a radius map as a colour image with a colour bar in pixels.
- :func:`load_reblur_net`: R as a training checkpoint saved it.

Everything here is plain torch / numpy / OpenCV: no compiled op is needed to read a map.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

__all__ = [
    "TEXTURE_SIGMA",
    "checkpoint_loss_config",
    "defocus_correlations",
    "defocus_radii",
    "implied_radius",
    "level_second_moments",
    "levels_for_seed_channels",
    "load_reblur_net",
    "pearson",
    "predicted_map_radius",
    "radius_picture",
    "radius_to_colour",
    "reblur_net_input",
    "spearman",
    "texture_mask",
]

# Gaussian smoothing (pixels) of the Sobel magnitude that decides which pixels are textured.
TEXTURE_SIGMA = 3.0
_SUPPORTS = ("window", "disk")


def _level_offsets(radius: int, support: str) -> list[tuple[int, int]]:
    """Distinct squared distances ``q = dx^2 + dy^2`` of level ``radius``'s window and how many taps
    share each (taps with one ``q`` share one logit). ``q > radius^2``: the window's corners."""
    counts: dict[int, int] = {}
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            q = dx * dx + dy * dy
            if support == "disk" and q > radius * radius:
                continue
            counts[q] = counts.get(q, 0) + 1
    return sorted(counts.items())


def level_second_moments(level_seeds: torch.Tensor, support: str = "window") -> torch.Tensor:
    """``sum_d k(d) |d|^2`` of the isotropic kernels of one level (SPEC section 2).

    ``level_seeds (B, r + 1, H, W)`` -> ``(B, H, W)``. Computed per distinct tap distance, so no
    ``K x K`` kernel per pixel is ever held; equals ``jdrl_ext.isotropic_kernels`` followed by the
    sum over taps (the tests check it).
    """
    if support not in _SUPPORTS:
        raise ValueError(f"support must be one of {list(_SUPPORTS)}, got {support!r}")
    radius = level_seeds.shape[1] - 1
    if radius < 1:
        raise ValueError(f"a blur level needs at least 2 seeds, got {level_seeds.shape[1]}")
    logits, weights, distances = [], [], []
    for q, count in _level_offsets(radius, support):
        if q > radius * radius:
            logit = torch.zeros_like(level_seeds[:, 0])
        else:
            low = math.isqrt(q)  # floor(rho) decided with integers (SPEC section 2)
            if q == low * low:
                logit = level_seeds[:, low]
            else:
                fraction = math.sqrt(q) - low
                logit = (1 - fraction) * level_seeds[:, low] + fraction * level_seeds[:, low + 1]
        logits.append(logit)
        weights.append(float(count))
        distances.append(float(q))
    stacked = torch.stack(logits, dim=1)
    counts = stacked.new_tensor(weights).view(1, -1, 1, 1)
    squared = stacked.new_tensor(distances).view(1, -1, 1, 1)
    # softmax over taps = exp(z) * count / sum(exp(z) * count), grouped by distance.
    probabilities = torch.softmax(stacked + counts.log(), dim=1)
    return (probabilities * squared).sum(dim=1)


def levels_for_seed_channels(count: int) -> int:
    """``m`` with ``S(m) = (m - 1)(m + 2) / 2 = count`` (35 -> 8); a count no ``m`` gives is an error."""
    levels = round((-1 + math.sqrt(9 + 8 * count)) / 2)
    if levels < 2 or (levels - 1) * (levels + 2) // 2 != count:
        raise ValueError(f"{count} channels is not S(m) = (m-1)(m+2)/2 of any number of blur levels m >= 2")
    return levels


def _levels_of(seeds: torch.Tensor, weights: torch.Tensor) -> int:
    if seeds.dim() != 4 or weights.dim() != 4:
        raise ValueError(f"seeds and weights must be (B, C, H, W), got {tuple(seeds.shape)} and {tuple(weights.shape)}")
    levels = weights.shape[1]
    expected = (levels - 1) * (levels + 2) // 2
    if seeds.shape[1] != expected:
        raise ValueError(
            f"seeds has {seeds.shape[1]} channels but weights has m = {levels} levels, which need S(m) = {expected}"
        )
    if seeds.shape[0] != weights.shape[0] or seeds.shape[2:] != weights.shape[2:]:
        raise ValueError(f"seeds {tuple(seeds.shape)} and weights {tuple(weights.shape)} differ in batch or size")
    return levels


@torch.no_grad()
def implied_radius(seeds: torch.Tensor, weights: torch.Tensor, support: str = "window", rows_per_chunk: int = 256) -> torch.Tensor:
    """R's implied blur radius in pixels (SPEC section 7), ``(B, H, W)`` float32.

    ``seeds (B, S(m), H, W)`` and ``weights (B, m, H, W)`` as ``jdrl_ext.reblur`` takes them (the
    weights normalized). The mixed kernel is ``w_0 delta + sum_r w_r k_r``, so its second moment is
    ``sum_r w_r M_r`` with ``M_r`` level ``r``'s (:func:`level_second_moments`). Runs
    ``rows_per_chunk`` image rows at a time to bound memory on large images.
    """
    levels = _levels_of(seeds, weights)
    height = seeds.shape[2]
    out = torch.empty(seeds.shape[0], height, seeds.shape[3], dtype=torch.float32, device=seeds.device)
    for top in range(0, height, rows_per_chunk):
        rows = slice(top, min(height, top + rows_per_chunk))
        seed_rows, weight_rows = seeds[:, :, rows].float(), weights[:, :, rows].float()
        moment = torch.zeros_like(weight_rows[:, 0])
        for radius in range(1, levels):
            start = (radius - 1) * (radius + 2) // 2
            moment += weight_rows[:, radius] * level_second_moments(seed_rows[:, start : start + radius + 1], support)
        out[:, rows] = (2.0 * moment).clamp_min(0).sqrt()
    return out


@torch.no_grad()
def predicted_map_radius(
    defocus_map: torch.Tensor, levels: int, seed_bound: float, support: str = "window"
) -> torch.Tensor:
    """The radius of the deblurring net's defocus map ``B_hat (B, S(m), H, W)`` -> ``(B, H, W)``.

    ``B_hat`` regresses ``B_P``: level ``r``'s slice is ``v_r = w_r * s_r`` (Eq. 13), a product that
    does not split uniquely into a weight and seeds. The split used here: ``w_r = max_i |v_r,i| /
    seed_bound`` (clipped to 1; when the ``w_r`` sum to more than 1 they are scaled to sum 1, and
    ``w_0 = 1 - sum``), ``s_r = v_r / w_r``. It is exact when every used level's largest seed
    magnitude sits at the bound, which is where R's bounded seeds (``bound * tanh``) go, and it
    keeps what makes a map blurry: a level's slice that vanishes means that level is unused (and a
    map that is 0 everywhere means "sharp": all weight on level 0, radius 0). The result then goes
    through :func:`implied_radius` as R's would. ``seed_bound`` 0 (unbounded seeds) uses the map's
    own largest magnitude instead. For a map trained on the raw seeds (``weighted_pseudo_map:
    false``) the weights are not in it and this radius is not defined (callers skip it).
    """
    if defocus_map.dim() != 4:
        raise ValueError(f"defocus_map must be (B, S, H, W), got {tuple(defocus_map.shape)}")
    expected = (levels - 1) * (levels + 2) // 2
    if defocus_map.shape[1] != expected:
        raise ValueError(f"defocus_map has {defocus_map.shape[1]} channels; m = {levels} levels need {expected}")
    values = defocus_map.float()
    bound = float(seed_bound) if seed_bound > 0 else float(values.abs().max().clamp_min(1e-12))
    level_weights, level_seeds = [], []
    for radius in range(1, levels):
        start = (radius - 1) * (radius + 2) // 2
        slice_r = values[:, start : start + radius + 1]
        level_weights.append((slice_r.abs().amax(dim=1) / bound).clamp(max=1.0))
        level_seeds.append(slice_r)
    blur_weights = torch.stack(level_weights, dim=1)
    total = blur_weights.sum(dim=1, keepdim=True)
    blur_weights = blur_weights / total.clamp_min(1.0)
    weights = torch.cat([1.0 - blur_weights.sum(dim=1, keepdim=True), blur_weights], dim=1)
    seeds = []
    for index, slice_r in enumerate(level_seeds):
        weight = blur_weights[:, index : index + 1]
        seeds.append(torch.where(weight > 0, slice_r / weight.clamp_min(1e-12), torch.zeros_like(slice_r)).clamp(-bound, bound))
    return implied_radius(torch.cat(seeds, dim=1), weights, support)


# ------------------------------------------------------------------------------------------------
# Correlations against a true radius map


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long 1-D arrays; NaN when either is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"pearson: arrays of {a.size} and {b.size} values")
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of the tie-averaged ranks); NaN when either is constant."""
    return pearson(_ranks(np.asarray(a, dtype=np.float64).ravel()), _ranks(np.asarray(b, dtype=np.float64).ravel()))


def _grey(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` tensor or ``(H, W, 3)`` / ``(H, W)`` array in [0, 1] -> ``(H, W)`` float32 luma."""
    if isinstance(image, torch.Tensor):
        array = image.detach().float().cpu().numpy()
        array = np.moveaxis(array, 0, -1) if array.ndim == 3 else array
    else:
        array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return array.astype(np.float32)


def texture_mask(sharp: np.ndarray | torch.Tensor, sigma: float = TEXTURE_SIGMA) -> np.ndarray:
    """``(H, W)`` bool: pixels whose local gradient energy is in the upper half of the image's.

    Energy: the Sobel magnitude of the grey image, Gaussian-smoothed with ``sigma``. The median is
    taken per image, so each image gives half its pixels (ties at the median count as textured).
    """
    grey = _grey(sharp)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    energy = cv2.GaussianBlur(np.sqrt(gx * gx + gy * gy), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return energy >= np.median(energy)


def defocus_correlations(
    predicted: Sequence[np.ndarray | torch.Tensor],
    true: Sequence[np.ndarray | torch.Tensor],
    sharp: Sequence[np.ndarray | torch.Tensor],
    border: int = 7,
) -> dict[str, float]:
    """Spearman and Pearson of predicted vs true radius maps, pooled over the images.

    ``predicted``, ``true``: ``(H, W)`` maps per image; ``sharp``: the aligned sharp image of each
    (``(3, H, W)`` tensor or ``(H, W, 3)`` array), which decides the textured pixels
    (:func:`texture_mask`). ``border`` pixels on each side are left out (``m - 1``: R's kernels
    read past the edge there). Returns ``spearman``, ``pearson`` (textured pixels) and
    ``spearman_all``, ``pearson_all`` (every pixel inside the border), and ``pixels`` (textured).
    """
    if not (len(predicted) == len(true) == len(sharp)) or not predicted:
        raise ValueError(
            f"defocus_correlations: need as many predicted ({len(predicted)}), true ({len(true)}) and sharp "
            f"({len(sharp)}) images, at least one"
        )
    pooled: dict[str, list[np.ndarray]] = {"pred": [], "true": [], "pred_all": [], "true_all": []}
    for index, (pred_map, true_map, image) in enumerate(zip(predicted, true, sharp, strict=True)):
        pred_map = pred_map.detach().float().cpu().numpy() if isinstance(pred_map, torch.Tensor) else np.asarray(pred_map)
        true_map = true_map.detach().float().cpu().numpy() if isinstance(true_map, torch.Tensor) else np.asarray(true_map)
        pred_map, true_map = np.squeeze(pred_map), np.squeeze(true_map)
        if pred_map.shape != true_map.shape or pred_map.ndim != 2:
            raise ValueError(f"image {index}: predicted map {pred_map.shape} and true map {true_map.shape} must be one (H, W)")
        mask = texture_mask(image)
        if mask.shape != true_map.shape:
            raise ValueError(f"image {index}: sharp image {mask.shape} and radius map {true_map.shape} differ in size")
        inner = np.zeros_like(mask)
        inner[border : mask.shape[0] - border, border : mask.shape[1] - border] = True
        pooled["pred"].append(pred_map[inner & mask])
        pooled["true"].append(true_map[inner & mask])
        pooled["pred_all"].append(pred_map[inner])
        pooled["true_all"].append(true_map[inner])
    arrays = {key: np.concatenate(values) for key, values in pooled.items()}
    if arrays["pred_all"].size < 2:
        raise ValueError(f"defocus_correlations: the border of {border} px leaves fewer than 2 pixels")
    return {
        "spearman": spearman(arrays["pred"], arrays["true"]),
        "pearson": pearson(arrays["pred"], arrays["true"]),
        "spearman_all": spearman(arrays["pred_all"], arrays["true_all"]),
        "pearson_all": pearson(arrays["pred_all"], arrays["true_all"]),
        "pixels": int(arrays["pred"].size),
    }


# ------------------------------------------------------------------------------------------------
# Pictures and checkpoints


def _inferno(scaled: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats -> RGB uint8 with OpenCV's inferno colour map."""
    bgr = cv2.applyColorMap(np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(bgr[..., ::-1])


def radius_to_colour(radius: np.ndarray | torch.Tensor, top: float) -> np.ndarray:
    """``(H, W)`` radius map -> ``(H, W, 3)`` uint8 RGB, ``0 .. top`` pixels over the inferno map."""
    values = radius.detach().float().cpu().numpy() if isinstance(radius, torch.Tensor) else np.asarray(radius, np.float32)
    return _inferno(values / max(top, 1e-12))


def radius_picture(radius: np.ndarray | torch.Tensor, top: float | None = None, bar_width: int = 70) -> np.ndarray:
    """A radius map in pixels as an RGB uint8 picture with a labelled colour bar on its right.

    ``top``: the radius at the bar's top (default: the map's 99.5th percentile rounded up to a whole
    pixel, at least 1). Black = 0 px (sharp). Drawn with OpenCV, so no plotting package is needed.
    """
    values = radius.detach().float().cpu().numpy() if isinstance(radius, torch.Tensor) else np.asarray(radius, np.float32)
    if values.ndim != 2:
        raise ValueError(f"radius must be (H, W), got shape {values.shape}")
    if top is None:
        top = max(1.0, math.ceil(float(np.percentile(values, 99.5))))
    height = max(values.shape[0], 120)
    picture = radius_to_colour(values, top)
    if picture.shape[0] < height:  # tiny maps: enlarge so the bar's labels fit
        factor = math.ceil(height / picture.shape[0])
        picture = cv2.resize(picture, (picture.shape[1] * factor, picture.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
        height = picture.shape[0]
    bar = np.full((height, bar_width, 3), 255, dtype=np.uint8)
    margin = 10
    span = height - 2 * margin
    ramp = _inferno(np.linspace(1.0, 0.0, span)[:, None])  # (span, 1, 3)
    bar[margin : margin + span, 6:22] = np.repeat(ramp, 16, axis=1)
    ticks = 4
    for index in range(ticks + 1):
        value = top * index / ticks
        y = margin + int(round((1 - index / ticks) * (span - 1)))
        cv2.line(bar, (22, y), (27, y), (0, 0, 0), 1)
        cv2.putText(bar, f"{value:.3g}", (29, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(bar, "px", (29, height - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([picture, bar], axis=1)


def checkpoint_loss_config(state: dict[str, Any]):
    """The ``LossConfig`` a training checkpoint (``load_checkpoint``'s dict) was trained with; keys it
    predates take the values of that time (no ``seed_bound`` / ``weight_logit_bound``: unbounded;
    no ``reblur_space``: sRGB; no pretraining, no anchor, no seed or logit penalty, R's fit masked)."""
    from jdrl.losses import LossConfig

    if state.get("config", {}).get("loss") is None:  # not written by jdrl train: the defaults
        return LossConfig()
    saved = dict(state["config"]["loss"])
    saved.setdefault("seed_bound", 0.0)
    saved.setdefault("weight_logit_bound", 0.0)
    saved.setdefault("reblur_space", "srgb")  # before linear light existed
    saved.setdefault("reblur_pretrain", False)
    saved.setdefault("reblur_anchor", False)
    saved.setdefault("reblur_fit_mask", True)  # before 2026-12-01 R's fit always had Eq. 6's mask
    saved.setdefault("seed_penalty", 0.0)
    saved.setdefault("logit_penalty", 0.0)
    # Added off, so today's defaults are what they meant before: flow_reference (estimate),
    # warp_interp (bilinear), flow_refine (false).
    known = set(LossConfig.__dataclass_fields__)
    return LossConfig(**{key: value for key, value in saved.items() if key in known})


def load_reblur_net(checkpoint: str | os.PathLike | dict[str, Any], map_location: str | torch.device = "cpu") -> tuple[nn.Module, Any] | None:
    """``(R, its LossConfig)`` from a training checkpoint, or None when it has no reblurring net.

    Settings a checkpoint predates take the values it was trained with (``seed_bound`` absent:
    unbounded; ``weight_logit_bound`` absent: unbounded).
    """
    from jdrl.checkpoint import load_checkpoint
    from jdrl.losses import build_reblur_net

    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, map_location=map_location)
    if state.get("reblur") is None:
        return None
    config = checkpoint_loss_config(state)
    net = build_reblur_net(config, state["config"]["model"]["levels"])
    net.load_state_dict(state["reblur"])
    return net.to(map_location).eval(), config


def reblur_net_input(
    blurry: torch.Tensor, sharp_est: torch.Tensor, config: Any, sharp: torch.Tensor | None = None, flow_estimator: Any = None
) -> torch.Tensor:
    """What a trained reblurring net reads beside ``blurry`` ``(1, 3, H, W)``, as in training:
    ``sharp_est`` (Eq. 2), or for an anchored R (``config.reblur_anchor``) the misaligned ``sharp``
    warped onto ``blurry`` by ``flow_estimator``, as the loss warps (``config.warp_interp``,
    ``config.warp_padding``)."""
    if not getattr(config, "reblur_anchor", False):
        return sharp_est
    if sharp is None or flow_estimator is None:
        raise ValueError("an anchored reblurring net (loss.reblur_anchor) needs sharp and flow_estimator")
    from jdrl.losses import loss_warp

    flow = flow_estimator(blurry.clamp(0, 1), sharp.clamp(0, 1)).to(device=sharp.device, dtype=sharp.dtype)
    return loss_warp(sharp, flow, config)


@torch.no_grad()
def defocus_radii(
    blurry: torch.Tensor,
    sharp_est: torch.Tensor,
    defocus_map: torch.Tensor | None,
    reblur: tuple[nn.Module, Any] | None,
    sharp: torch.Tensor | None = None,
    flow_estimator: Any = None,
) -> dict[str, torch.Tensor]:
    """The radius maps ``(H, W)`` of one image that a trained pair of nets gives.

    ``blurry``, ``sharp_est``: ``(1, 3, H, W)``; ``defocus_map``: F_B's ``(1, S, H, W)`` or None;
    ``reblur``: :func:`load_reblur_net`'s ``(R, LossConfig)`` or None. Keys: ``"reblur"`` (R's
    implied radius, R run on its inputs of training: ``(sharp_est, blurry)``, or for an anchored R
    (``loss.reblur_anchor``) the misaligned ``sharp (1, 3, H, W)`` warped onto ``blurry`` by
    ``flow_estimator``) and ``"predicted_map"``
    (:func:`predicted_map_radius` of F_B's map, with R's seed bound and support; only for maps
    supervised by Eq. 13's weighted pseudo map: Eq. 2 with ``weighted_pseudo_map``).
    """
    from jdrl.losses import LossConfig

    radii: dict[str, torch.Tensor] = {}
    config = reblur[1] if reblur is not None else LossConfig()
    if reblur is not None:
        net = reblur[0]
        device = next(net.parameters()).device
        r_input = reblur_net_input(blurry, sharp_est, config, sharp, flow_estimator)
        # R's blur model only: the radius needs no reblurred image.
        seeds, weights, _ = net.predict(r_input.to(device).float(), blurry.to(device).float())
        radii["reblur"] = implied_radius(seeds, weights, net.support)[0].cpu()
    if defocus_map is not None and config.pseudo_supervision and config.weighted_pseudo_map:
        levels = levels_for_seed_channels(defocus_map.shape[1])
        radii["predicted_map"] = predicted_map_radius(defocus_map, levels, config.seed_bound, config.kernel_support)[0].cpu()
    return radii
