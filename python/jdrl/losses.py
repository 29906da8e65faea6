"""Training losses of the reblurring-guided framework (SPEC section 7, paper Eqs. 1-2, 6-7, 12-14).

Shapes: images ``(B, 3, H, W)``; flows ``(B, 2, H, W)`` in pixels, channel 0 = x (right),
channel 1 = y (down); seeds ``(B, S(m), H, W)`` with ``S(m) = (m-1)(m+2)/2``; blend weights
``(B, m, H, W)``; masks ``(B, 1, H, W)``.

Flow convention (SPEC section 7): an estimator called as ``estimator(reference, moving)`` returns
``flow`` with ``moving(p + flow(p)) ~ reference(p)``, so ``jdrl_ext.flow_warp(moving, flow)`` lines
``moving`` up with ``reference``.

Every part of the objective can be switched off through :class:`LossConfig`, so each row of the
paper's ablation (Table 5) is a config; :data:`VARIANTS` lists them as config overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn as nn

import jdrl_ext
from jdrl.defocus import TEXTURE_SIGMA
from jdrl.models.reblur_net import ReblurOutput

if TYPE_CHECKING:
    from jdrl.flow import FlowEstimator

__all__ = [
    "MASK_TAU_PIXELS",
    "DEBLUR_LOSSES",
    "VARIANTS",
    "LossConfig",
    "LossOutput",
    "JDRLLoss",
    "build_reblur_net",
    "charbonnier",
    "loss_warp",
    "warp_bicubic",
    "calibration_mask",
    "pseudo_defocus_map",
    "logit_penalty",
    "seed_penalty",
    "variant_overrides",
    "MIN_PREFIT_CROP",
]

# The floor of the calibration mask's tolerance, in pixels. Eq. 6 read literally keeps a pixel when
# its flow magnitude is within lambda * mean of the mean; for a nearly aligned pair the mean is a
# fraction of a pixel, the tolerance shrinks towards zero and the estimator's sub-pixel noise (or an
# exactly zero flow on most pixels next to a few outliers) masks out almost every pixel. One pixel
# is about the accuracy of DIS / RAFT-class estimators on blurry content, so a magnitude within one
# pixel of the mean cannot be told apart from the pair's true misalignment; the gross flow errors the
# mask exists to catch (occlusions, drifting flat regions) are several pixels. The floor only acts
# while lambda * mean < tau, i.e. for mean misalignments under tau / lambda ~ 2.9 px at lambda 0.35,
# so on strongly misaligned pairs the mask is exactly Eq. 6.
MASK_TAU_PIXELS = 1.0

DEBLUR_LOSSES = ("deformation", "l1")
# The smallest window R's prefit may train on: one kernel of the largest radius of m = 8 levels
# (15 x 15) and a pixel.
MIN_PREFIT_CROP = 16
_KERNEL_SUPPORTS = ("window", "disk")
_REBLUR_PADDINGS = ("replicate", "zeros")
_WARP_PADDINGS = ("border", "zeros")
WARP_INTERPOLATIONS = ("bilinear", "bicubic")
FLOW_REFERENCES = ("estimate", "blurry")
REBLUR_SPACES = ("srgb", "linear")
REBLUR_TRANSFERS = ("srgb", "gamma2.2")
PSEUDO_MASKS = ("none", "texture")


def warp_bicubic(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Backward warp as ``jdrl_ext.flow_warp`` (flow in pixels, channel 0 = x), but with bicubic
    interpolation: ``F.grid_sample(mode="bicubic", align_corners=True)``. Zero flow is the identity
    (the cubic kernel is 1 at 0 and 0 at the other integers). With ``border`` padding the taps are
    clamped to the image (grid_sample's rule), not the sample coordinate; inside the image the two
    agree. A side of one pixel samples that pixel whatever the flow along it. The result may
    overshoot the range of ``image`` (the cubic kernel has negative lobes)."""
    if padding_mode not in _WARP_PADDINGS:
        raise ValueError(f"padding_mode must be one of {list(_WARP_PADDINGS)}, got {padding_mode!r}")
    _, _, height, width = image.shape
    if flow.shape != (image.shape[0], 2, height, width):
        raise ValueError(f"flow must have shape {(image.shape[0], 2, height, width)}, got {tuple(flow.shape)}")
    ys = torch.arange(height, device=image.device, dtype=image.dtype).view(1, height, 1)
    xs = torch.arange(width, device=image.device, dtype=image.dtype).view(1, 1, width)
    # align_corners=True maps pixel 0 to -1 and pixel n-1 to +1; a side of one pixel has no span.
    grid_x = (xs + flow[:, 0]) * (2.0 / max(width - 1, 1)) - 1.0
    grid_y = (ys + flow[:, 1]) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack((grid_x, grid_y), dim=-1)
    return torch.nn.functional.grid_sample(image, grid, mode="bicubic", padding_mode=padding_mode, align_corners=True)


def loss_warp(moving: torch.Tensor, flow: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """``moving`` warped by ``flow`` as the loss warps: ``config.warp_interp`` and ``config.warp_padding``."""
    if config.warp_interp == "bilinear":
        return jdrl_ext.flow_warp(moving, flow, padding_mode=config.warp_padding)
    return warp_bicubic(moving, flow, padding_mode=config.warp_padding)


def _symmetric_pad(image: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """``image`` padded by ``pad`` along ``dim`` (-1 or -2) with its edge mirrored, the edge pixel
    included (OpenCV's BORDER_REFLECT: ``cba|abcd``); repeated while ``pad`` exceeds the size."""
    while pad > 0:
        step = min(pad, image.shape[dim])
        first, last = image.narrow(dim, 0, step).flip(dim), image.narrow(dim, image.shape[dim] - step, step).flip(dim)
        image = torch.cat([first, image, last], dim=dim)
        pad -= step
    return image


def _shifted_sum(image: torch.Tensor, taps: list[float], dim: int) -> torch.Tensor:
    """``sum_k taps[k] * image`` shifted by ``k`` along ``dim``, over the valid span: a 1-D
    correlation in plain float arithmetic (no convolution routine, so no TF32 on a GPU)."""
    size = image.shape[dim] - len(taps) + 1
    total = None
    for offset, tap in enumerate(taps):
        if tap == 0.0:
            continue
        term = image.narrow(dim, offset, size) * tap
        total = term if total is None else total + term
    return total


@torch.no_grad()
def texture_gate(image: torch.Tensor, sigma: float = TEXTURE_SIGMA) -> torch.Tensor:
    """``(B, 1, H, W)`` bool: the pixels of each ``(B, 3, H, W)`` image in [0, 1] whose local
    gradient energy is at least the image's median (half of them, ties counted in).

    Energy: the 3x3 Sobel magnitude of the luma (``0.299 R + 0.587 G + 0.114 B``), smoothed by a
    Gaussian of ``sigma`` pixels (OpenCV's kernel for float images: ``round(8 sigma + 1) | 1``
    taps), with mirrored borders, in float32: :func:`jdrl.defocus.texture_mask` in torch, on the
    image's device.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"texture_gate: image must be (B, 3, H, W), got {tuple(image.shape)}")
    if not sigma > 0:
        raise ValueError(f"texture_gate: sigma must be positive, got {sigma}")
    work = image.float()
    luma = 0.299 * work[:, 0:1] + 0.587 * work[:, 1:2] + 0.114 * work[:, 2:3]
    padded = _symmetric_pad(_symmetric_pad(luma, 1, -1), 1, -2)
    # Sobel: derivative [-1, 0, 1] along one axis, smoothing [1, 2, 1] along the other.
    gx = _shifted_sum(_shifted_sum(padded, [-1.0, 0.0, 1.0], -1), [1.0, 2.0, 1.0], -2)
    gy = _shifted_sum(_shifted_sum(padded, [-1.0, 0.0, 1.0], -2), [1.0, 2.0, 1.0], -1)
    magnitude = torch.sqrt(gx * gx + gy * gy)
    radius = (int(math.floor(8.0 * sigma + 1.5)) | 1) // 2  # OpenCV: cvRound(8 sigma + 1) | 1 taps
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    gaussian = torch.exp(-(offsets * offsets) / (2.0 * sigma * sigma))
    taps = (gaussian / gaussian.sum()).tolist()
    energy = _shifted_sum(_symmetric_pad(magnitude, radius, -1), taps, -1)
    energy = _shifted_sum(_symmetric_pad(energy, radius, -2), taps, -2)
    flat = energy.flatten(1)
    count = flat.shape[1]
    # The median as numpy takes it: the mean of the two middle values for an even count.
    lower = flat.kthvalue((count + 1) // 2, dim=1).values
    upper = flat.kthvalue(count // 2 + 1, dim=1).values
    median = 0.5 * (lower + upper)
    return energy >= median.view(-1, 1, 1, 1)


def charbonnier(diff: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-3) -> torch.Tensor:
    """Charbonnier penalty ``sqrt(d^2 + eps^2)`` per element, averaged.

    Args:
        diff: ``(B, C, H, W)`` (any shape) difference.
        mask: optional ``(B, 1, H, W)`` or ``diff``-shaped mask (bool or float in [0, 1]); a
            one-channel mask applies to every channel. With a mask the average runs over the
            masked-in elements only (a weighted mean for a fractional mask); an all-zero mask gives 0.
        eps: the Charbonnier epsilon (1e-3 in the paper).

    Returns:
        A scalar tensor.
    """
    if eps <= 0:
        raise ValueError(f"charbonnier: eps must be positive, got {eps}")
    values = torch.sqrt(diff * diff + eps * eps)
    if mask is None:
        return values.mean()
    if mask.dim() != diff.dim():
        raise ValueError(
            f"charbonnier: mask must have the rank of diff {tuple(diff.shape)}, got mask {tuple(mask.shape)}"
        )
    try:
        weights = mask.to(values.dtype).expand_as(values)
    except RuntimeError as error:
        raise ValueError(
            f"charbonnier: mask {tuple(mask.shape)} does not broadcast to diff {tuple(diff.shape)}"
        ) from error
    count = weights.sum()
    # With an empty mask the sum is 0 as well, so dividing by a tiny positive count returns an exact 0
    # (and zero gradients) instead of 0/0.
    return (values * weights).sum() / count.clamp_min(torch.finfo(values.dtype).tiny)


def calibration_mask(flow: torch.Tensor, lam: float = 0.35, tau: float = MASK_TAU_PIXELS) -> torch.Tensor:
    """Calibration mask of Eq. 6 with a floor on the tolerance (SPEC section 7).

    Per sample: ``n = |flow|`` per pixel, ``nbar = mean(n)``, and a pixel is kept when
    ``|n - nbar| <= max(lam * nbar, tau)``. See :data:`MASK_TAU_PIXELS` for why there is a floor.

    Args:
        flow: ``(B, 2, H, W)`` flow in pixels.
        lam: relative tolerance lambda (0.35 in the paper).
        tau: absolute floor of the tolerance in pixels; 0 gives Eq. 6 as printed.

    Returns:
        ``(B, 1, H, W)`` bool mask, True where the flow is trusted.
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"calibration_mask: flow must be (B, 2, H, W), got {tuple(flow.shape)}")
    if lam < 0 or tau < 0:
        raise ValueError(f"calibration_mask: lam and tau must be >= 0, got lam={lam}, tau={tau}")
    magnitude = torch.linalg.vector_norm(flow, dim=1, keepdim=True)
    mean = magnitude.mean(dim=(2, 3), keepdim=True)
    tolerance = torch.clamp(lam * mean, min=tau)
    return (magnitude - mean).abs() <= tolerance


def _seed_repeats(levels: int, device: torch.device) -> torch.Tensor:
    """How often each weight map ``r = 1 .. m-1`` is repeated: ``r + 1`` (level r has r+1 seeds)."""
    return torch.arange(2, levels + 1, device=device)


def pseudo_defocus_map(seeds: torch.Tensor, weights: torch.Tensor, weighted: bool = True) -> torch.Tensor:
    """Pseudo defocus map ``B_P`` of Eq. 13.

    ``B_P = concat over r = 1..m-1 of (weights[:, r] repeated r+1 times) * seeds_r``: each level's
    seeds scaled by the weight the reblurring net gave that level at that pixel.

    Args:
        seeds: ``(B, S(m), H, W)`` raw kernel seeds, packed as in SPEC section 1.
        weights: ``(B, m, H, W)`` softmax-normalized blend weights; ``weights[:, 0]`` (the identity
            level) has no seeds and does not appear in ``B_P``.
        weighted: False returns the raw seeds, as the authors' code supervises with.

    Returns:
        ``(B, S(m), H, W)`` pseudo defocus map.
    """
    if seeds.dim() != 4 or weights.dim() != 4:
        raise ValueError(
            f"pseudo_defocus_map: seeds and weights must be (B, C, H, W), got seeds {tuple(seeds.shape)} "
            f"and weights {tuple(weights.shape)}"
        )
    levels = weights.shape[1]
    expected = (levels - 1) * (levels + 2) // 2
    if seeds.shape[1] != expected:
        raise ValueError(
            f"pseudo_defocus_map: seeds has {seeds.shape[1]} channels but weights has m = {levels} levels, "
            f"which need S(m) = (m-1)(m+2)/2 = {expected}"
        )
    if seeds.shape[0] != weights.shape[0] or seeds.shape[2:] != weights.shape[2:]:
        raise ValueError(
            f"pseudo_defocus_map: seeds {tuple(seeds.shape)} and weights {tuple(weights.shape)} differ in batch or size"
        )
    if not weighted:
        return seeds
    repeated = weights[:, 1:].repeat_interleave(_seed_repeats(levels, weights.device), dim=1)
    return repeated * seeds


def _hinge_penalty(values: torch.Tensor, weight: float, margin: float) -> torch.Tensor:
    """``weight * mean(relu(|values| - margin)^2)``: free below the margin, quadratic past it."""
    return weight * torch.relu(values.abs() - margin).square().mean()


def seed_penalty(seeds: torch.Tensor, weight: float, margin: float) -> torch.Tensor:
    """The hinge that keeps R's kernel seeds off their bound (``LossConfig.seed_penalty``)."""
    return _hinge_penalty(seeds, weight, margin)


def logit_penalty(level_logits: torch.Tensor, weight: float, margin: float) -> torch.Tensor:
    """The same hinge on R's level logits (``LossConfig.logit_penalty``)."""
    return _hinge_penalty(level_logits, weight, margin)


@dataclass
class LossConfig:
    """What the training objective contains. Defaults are the paper's full method (Eq. 2) with our
    departures, each said below and switched off by one key: the seed penalty (``seed_penalty: 0``),
    the logit penalty (``logit_penalty: 0``), linear light (``reblur_space: srgb``), R's fit on the
    flow-aligned target (``reblur_pretrain: false``, ``reblur_anchor: false``) and the bounds.

    Attributes:
        deblur_loss: "deformation" (Eq. 7: flow-deformed Charbonnier) or "l1" (plain L1 between the
            deblurred image and the misaligned ground truth; Table 5 #1).
        cycle_deformation: warp both ways (Eq. 7); False keeps only ``warp(I_S -> I_hat)`` (Table 5 #2).
        calibration_mask: apply Eq. 6's mask; False trusts every flow vector (Table 5 #3).
        mask_lambda, mask_tau: lambda of Eq. 6 and the tolerance floor in pixels.
        reblurring: use the reblurring network and ``L_R`` (Table 5 #4 turns it off; without it
            there is no pseudo supervision either).
        predict_seeds: reblurring net predicts kernel seeds (R_kpn); False fixes them (Table 5 #5).
        predict_weights: reblurring net predicts blend weights (R_wpn); False: uniform (Table 5 #6).
        reblur_width, kernel_support, reblur_padding: reblurring net width and ``jdrl_ext.reblur`` options.
        seed_bound: bound of the reblurring net's kernel seeds (``ReblurNet``'s ``seed_bound``;
            0 leaves them unbounded). The paper leaves the seeds' range open; unbounded, they drift
            to 1e3-1e4 (the softmax kernels saturate, R stops learning, and Eq. 2's pseudo map,
            weights times seeds, grows with them and diverged at lr 1e-3).
        weight_logit_bound: bound of the reblurring net's level logits (``ReblurNet``'s
            ``logit_bound``; 0: unbounded). Unbounded, they spread to ~1e3 within ~50 Adam steps at
            lr 1e-3 (one level takes all the weight everywhere); bounded, no level's weight falls
            below ``exp(-2 * bound)`` of another's. Bounded, they still reach the bound within ~90
            steps (``logit_penalty`` below).
        seed_penalty, seed_penalty_margin: ``L_R`` gains ``seed_penalty * mean(relu(|seed| -
            margin)^2)`` over R's seeds (0: no term, the paper). Our addition: trained alone at
            3e-4 on the demo's data, R ended with its seeds at the bound (mean |seed| 4.6-5.9 of 6)
            and a radius map unrelated to the blur in 2 of 4 runs (Spearman with the true radius
            -0.22 and -0.06 on the test pairs); with 0.01 beyond 3 it followed the blur in 5 of 5
            (0.76-0.84), seeds 0.5-0.9 (``benchmarks/RESULTS.md``, "Why R's result depends on the
            run"). Seeds below the margin cost nothing, so the kernels keep their full range.
        logit_penalty, logit_penalty_margin: ``L_R`` gains ``logit_penalty * mean(relu(|logit| -
            margin)^2)`` over R's level logits (after their bound; 0: no term, the paper; default
            0.01, ours). The seeds' hinge for R_wpn: without it the logits reach their bound within
            ~90 Adam steps in every run and stay there, the same levels take all the weight at
            every pixel (two to four levels sharing it equally, trained alone; 1/2 on levels 0-1,
            or all on level 1, in the demo's joint runs) and R's map comes only from the shape of its
            smallest kernels. With 0.01 beyond 3, trained alone at 1e-3 (3 of 3 runs), all eight
            levels take part, the weights vary over the image, R explains the blur better
            (reblurred vs blurry +0.7-1.0 dB) and its pseudo map follows the blur (Spearman
            0.62-0.72 against 0.10-0.52; ``benchmarks/RESULTS.md``, "R's level weights"). But in
            joint training it cost "ours" 0.06-0.23 dB in the demo (2 seeds) and 0.21 dB in the
            ablation, and R's map 0.02-0.14 Spearman, with R trained on ``(I_hat, I_B)``. On by
            default with the anchor (2026-12-01): in the one anchored run without it (demo, seed 2)
            R gave all its weight to level 1, its smallest kernel.
        reblur_space, reblur_transfer: ``"srgb"`` reblurs the sRGB values (the paper);
            ``"linear"`` (the default, a departure from the paper) reblurs in linear light (SPEC
            section 7), with the IEC 61966-2-1 sRGB curve (``reblur_transfer: "srgb"``) or
            ``x^2.2`` (``"gamma2.2"``). Physical defocus mixes light: with the exact true kernels
            ``L_R`` of the sharp image beats that of the blurry input only in linear light (issue
            9), and R trained alone for 150 steps at lr 1e-4 on 32 synthetic pairs explains the
            blur better in linear light (reblurred vs blurry 32.7 dB against 30.9 dB in sRGB;
            Spearman of its radius with the true one 0.60 against 0.35; RESULTS.md).
        reblur_pretrain: our departure from the paper. During the flow warm-up (epochs ``< T``,
            with ``reblur_after_warmup``) R trains on the flow-aligned sharp target:
            ``C(R(warp(I_S -> I_B), I_B) - I_B)`` weighted by ``alpha``, with the warp of Eq. 7's
            first term and, with ``reblur_fit_mask``, its mask ``M`` (no ground truth; F gets no
            gradient from it). So when
            ``L_R`` and ``L_P`` join, R already explains the blur instead of starting from random
            kernels next to an ``I_hat`` that is still nearly ``I_B`` (where the best R is the
            identity, which pulls ``I_hat`` back to the input). Trained alone on that target
            (DIS flow, 2 px + 1% misalignment) R's radius follows the true one as well as when
            trained on the aligned ground truth (Spearman 0.36 vs 0.35 after 150 steps;
            ``benchmarks/RESULTS.md``, "The reblurring net alone"). In short joint runs (160
            steps) it is not yet shown to help: R's map does not survive the joint phase there.
        reblur_anchor: our departure from the paper, on by default (2026-12-01; False is Eq. 2's
            R, trained by ``L_R`` on ``(I_hat, I_B)``). After the warm-up too, R
            learns only from the flow-aligned target (the ``reblur_pretrain`` term, kept for every
            epoch), and the blur it predicts from that pair, ``R(warp(I_S -> I_B), I_B)``, with its
            seeds and weights held constant, is what ``L_R`` applies to ``I_hat`` and what ``L_P``
            supervises F_B with: both then train F alone. As in Eq. 2, R reads the blur from the
            difference between its two inputs; while ``I_hat`` is still nearly ``I_B``, ``R(I_hat,
            I_B)`` finds little blur anywhere, the identity is its best answer and ``L_R`` pulls
            ``I_hat`` back to the input (issue 9). Anchored, the blur model comes from the pair that
            shows the blur, and ``L_R`` asks F for an image that this blur turns into ``I_B``.
            Measured with ``logit_penalty`` 0.01 and ``reblur_fit_mask`` off, against Eq. 2's R (the
            defaults before; ``benchmarks/RESULTS.md``, "Anchored R without the mask"): in the
            Table 5 ablation (256 pairs, 1280 steps, 3 training seeds) R's radius map reaches
            Spearman 0.87-0.89 with the true one (Eq. 2's R: 0.39-0.64, collapsing to the identity on
            one seed) and "Ours" is above "#4" on every seed (+0.08 to +0.31 dB) and 0.25 dB above
            Eq. 2's R on average; in ``jdrl demo`` (3 seeds) R's map is the best of the settings run
            on each seed (0.43-0.80; Eq. 2's R: 0.24-0.57), ours has the highest SSIM of all rows on
            every seed, and PSNR vs ``gt_aligned`` 0.11 dB below Eq. 2's R on average (flow-aligned:
            0.05 dB above); F_B's map does not follow the blur in either (Spearman -0.26 to -0.12;
            Eq. 2's R: -0.59 to -0.15). Synthetic data and short CPU runs only. Eq. 2's R as
            before: ``reblur_anchor: false``, ``logit_penalty: 0``, ``reblur_fit_mask: true``.
        reblur_fit_mask: whether R's fit on the flow-aligned target (``reblur_pretrain`` and
            ``reblur_anchor``) counts only the pixels that Eq. 6's calibration mask keeps, as Eq. 7's
            first term does (False, the default since 2026-12-01: R fits every pixel). On ``jdrl
            synth`` data the parallax grows with the distance from the focal plane, as the blur
            does, so the mask drops the most defocused pixels (it keeps 85-87%, true radius 1.9-2.1
            px kept, 2.6-3.0 px dropped) and R learns the large radii from too few pixels: trained alone (448 steps at 1e-3, both penalties),
            the Spearman of R's radius with the true one on the demo's test pairs fell from 0.83 to
            0.67 and from 0.70 to 0.58 with the mask; in the demo, anchored, R's map went from 0.76
            / 0.19 / 0.73 (with) to 0.79 / 0.43 / 0.80 (without) over three seeds; in the ablation
            (256 pairs) it made no difference (0.86-0.88 with, 0.87-0.89 without;
            ``benchmarks/RESULTS.md``). On real pairs, where the misalignment comes mostly from the
            lens, the mask would rather drop pixels where the flow failed (occlusions): measured on
            synthetic data only.
        reblur_prefit_steps: our departure from the paper, off by default (0; ``jdrl demo`` uses
            1344). Before the first epoch, R alone takes this many Adam steps on its fit term (the
            ``reblur_pretrain`` target, flow-aligned ``I_S`` and ``I_B``, no ground truth, F
            untouched), each on a random ``reblur_prefit_crop`` x ``reblur_prefit_crop`` window of a
            random training pair. Why: R's map improves with its steps, and in joint training it
            gets one per step of F. Trained alone on the demo's data it reaches Spearman 0.73 with
            the true radius after 448 whole-pair steps (the demo's) and 0.86 after 1792; on 64 px
            windows a step costs about a quarter and 1792 of them reach 0.84. An anchored R's fit
            does not depend on F, so these steps can come first: in the demo's training at 28
            epochs, 1344 of them (about 4.5 min on one core) lifted R's map on 64 test pairs from
            0.61-0.75 to 0.83-0.87 over four seeds, and ours stayed where it was, above #4 on all
            four (benchmarks/RESULTS.md, "R's steps"). It runs whatever trains R afterwards (for
            Eq. 2's R, ``reblur_anchor: false``, it is a longer ``reblur_pretrain``), and is ignored
            without a reblurring net (``reblurring: false``), as R's other settings are.
        reblur_prefit_crop: the window side of ``reblur_prefit_steps`` (64; at least 16 px).
        pseudo_supervision: add ``beta * L_P`` (Eq. 2); False gives Eq. 1.
        weighted_pseudo_map: Eq. 13 (weights times seeds); False supervises with the raw seeds as
            the authors' code does.
        pseudo_mask: where ``L_P`` counts: ``none`` (every pixel, the paper's) or ``texture`` (ours,
            an option: only where ``I_S`` warped onto ``I_B`` is textured, by
            :func:`texture_gate`, the rule of the defocus correlations' texture mask). Why: blur
            is observable only where the scene has detail; on a flat area every kernel reblurs
            alike, so R's map there is a guess that ``L_P`` would still make ``F_B`` copy. ``L_P``
            stays a mean over the pixels it counts, so each of them weighs about twice as much.
        alpha, beta: weights of ``L_R`` and ``L_P`` (0.5 each in the paper).
        eps: Charbonnier epsilon.
        flow_warmup_epochs: T; for epochs ``< T`` the flow is estimated against the blurry input.
        flow_reference: what the flow of ``L_D`` is estimated against after the warm-up:
            ``estimate`` (``I_hat``, the paper's) or ``blurry`` (``I_B``, ours, an option: the
            warm-up's flow for the whole training). Why: against ``I_hat`` the flow follows the
            output wherever it moves, so ``L_D`` does not hold its position (measured: "#4 w/o
            reblurring" trained on aligned pairs moved its output by about 1 px and fell below the
            input); against ``I_B`` it lines ``I_S`` up with the input, as ``L_R`` does. Measured on
            misaligned synthetic pairs it lifted ours and #4 alike, and cost on the most detailed
            photo (benchmarks/RESULTS.md, "The flow against the input for ours").
        flow_refine: with ``flow_reference: blurry`` and an anchored R, after the warm-up
            estimate the flows of ``L_D`` again in each step against ``I_S`` blurred as R says
            ``I_B`` is (R's fitted seeds and weights, carried into ``I_S``'s frame by the flow
            from ``I_S`` to ``I_B``): a flow between two images of one blur instead of a blurry
            and a sharp one. Ours, an option. R still fits the first target; ``I_S`` is resampled
            once. Cost: two more flow estimates per step (one with ``cycle_deformation: false``)
            and one blur of ``I_S``. Why: between ``I_B`` and ``I_S`` the flow misses where fine
            detail is; on 256 of our synthetic training pairs the target it gives is 2.8 dB below
            the one a perfect estimate would give, and with the R of a finished run (ours at 8000
            steps, two seeds) the refined flows lift it by 0.4-0.6 dB, the cycle's warp by
            0.7-0.8 (on 32 test pairs +0.2-0.4 / +0.65-0.8; benchmarks/flow_target.py). In
            training (ours, seed 0, 8000 steps) it lifted the weight average by 0.07 dB on average
            over the rows from 3250 steps on (above at every one of them), most on coffee, at 2%
            more time (benchmarks/RESULTS.md, "How far the flow against I_B is from the truth").
        reblur_after_warmup: ``L_R`` and ``L_P`` join at epoch T, as in the authors' released
            training loop; before that ``I_hat`` is close to ``I_B`` and the best R is the identity,
            which then pulls ``I_hat`` back towards ``I_B``. False: from the first step.
        warp_padding: ``jdrl_ext.flow_warp`` padding mode.
        warp_interp: ``bilinear`` (the paper's warp, ``jdrl_ext.flow_warp``) or ``bicubic``
            (``F.grid_sample`` with cubic convolution, a = -0.75; no custom kernel yet), for every
            warp of the loss. Why: at a fractional flow a bilinear warp low-passes what it moves,
            so Eq. 7 compares ``I_hat`` with a blurred ``I_S`` and the blurred ``I_hat`` with
            ``I_S``; a blurry estimate then scores lower a fraction of a pixel off
            (benchmarks/deformation_shift.py). Bicubic interpolation blurs less. Measured with
            the flow against the estimate, it neither raised ours or #4 consistently nor stopped
            #4's drift on aligned pairs; with ``flow_reference: blurry`` it raised #4 by 0.28 dB
            late in 8000-step trainings (two seeds; benchmarks/RESULTS.md, "#4 with the bicubic
            warp").
    """

    deblur_loss: str = "deformation"
    cycle_deformation: bool = True
    calibration_mask: bool = True
    mask_lambda: float = 0.35
    mask_tau: float = MASK_TAU_PIXELS
    reblurring: bool = True
    predict_seeds: bool = True
    predict_weights: bool = True
    reblur_width: int = 32
    kernel_support: str = "window"
    reblur_padding: str = "replicate"
    seed_bound: float = 6.0
    weight_logit_bound: float = 6.0
    seed_penalty: float = 0.01
    seed_penalty_margin: float = 3.0
    logit_penalty: float = 0.01
    logit_penalty_margin: float = 3.0
    reblur_space: str = "linear"
    reblur_transfer: str = "srgb"
    reblur_pretrain: bool = True
    reblur_anchor: bool = True
    reblur_fit_mask: bool = False
    reblur_prefit_steps: int = 0
    reblur_prefit_crop: int = 64
    pseudo_supervision: bool = True
    weighted_pseudo_map: bool = True
    pseudo_mask: str = "none"
    alpha: float = 0.5
    beta: float = 0.5
    eps: float = 1e-3
    flow_warmup_epochs: int = 15
    flow_reference: str = "estimate"
    flow_refine: bool = False
    reblur_after_warmup: bool = True
    warp_padding: str = "border"
    warp_interp: str = "bilinear"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending ``loss.*`` key."""
        choices = {
            "deblur_loss": DEBLUR_LOSSES,
            "kernel_support": _KERNEL_SUPPORTS,
            "reblur_padding": _REBLUR_PADDINGS,
            "warp_padding": _WARP_PADDINGS,
            "warp_interp": WARP_INTERPOLATIONS,
            "flow_reference": FLOW_REFERENCES,
            "reblur_space": REBLUR_SPACES,
            "reblur_transfer": REBLUR_TRANSFERS,
            "pseudo_mask": PSEUDO_MASKS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"loss.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("mask_lambda", "mask_tau", "alpha", "beta", "seed_bound", "weight_logit_bound"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.eps <= 0:
            raise ValueError(f"loss.eps must be > 0, got {self.eps}")
        for name in ("seed_penalty", "seed_penalty_margin", "logit_penalty", "logit_penalty_margin"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {getattr(self, name)}")
        for what, bound_name in (("seed", "seed_bound"), ("logit", "weight_logit_bound")):
            weight, margin, bound = getattr(self, f"{what}_penalty"), getattr(self, f"{what}_penalty_margin"), getattr(self, bound_name)
            if weight > 0 and bound and margin >= bound:
                raise ValueError(
                    f"loss.{what}_penalty_margin ({margin}) must be below loss.{bound_name} ({bound}), or the "
                    f"penalty never applies: lower the margin or set loss.{what}_penalty=0"
                )
        for name in ("seed_bound", "weight_logit_bound"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"loss.{name} must be a finite number (0: unbounded), got {getattr(self, name)}")
        if self.reblur_width < 1:
            raise ValueError(f"loss.reblur_width must be >= 1, got {self.reblur_width}")
        if self.reblur_prefit_steps < 0:
            raise ValueError(f"loss.reblur_prefit_steps must be >= 0, got {self.reblur_prefit_steps}")
        if self.reblur_prefit_crop < MIN_PREFIT_CROP:
            raise ValueError(f"loss.reblur_prefit_crop must be at least {MIN_PREFIT_CROP} px, got {self.reblur_prefit_crop}")
        if self.flow_warmup_epochs < 0:
            raise ValueError(f"loss.flow_warmup_epochs must be >= 0, got {self.flow_warmup_epochs}")
        if self.flow_refine and not (self.reblurring and self.reblur_anchor and self.flow_reference == "blurry"
                                     and self.deblur_loss == "deformation"):
            raise ValueError(
                "loss.flow_refine refines the flows against I_B with the anchored reblurring net's blur: it needs "
                "loss.deblur_loss=deformation, loss.reblurring=true, loss.reblur_anchor=true and "
                "loss.flow_reference=blurry; set loss.flow_refine=false otherwise"
            )
        if self.pseudo_supervision and not self.reblurring:
            raise ValueError(
                "loss.pseudo_supervision needs the reblurring module (its seeds and weights make B_P); "
                "set loss.pseudo_supervision=false when loss.reblurring=false"
            )


def build_reblur_net(config: LossConfig, levels: int = 8) -> nn.Module:
    """The reblurring net ``jdrl.models.ReblurNet`` that ``config`` describes (``m = levels``)."""
    from jdrl.models import ReblurNet

    return ReblurNet(
        levels=levels,
        width=config.reblur_width,
        predict_seeds=config.predict_seeds,
        predict_weights=config.predict_weights,
        support=config.kernel_support,
        padding_mode=config.reblur_padding,
        seed_bound=config.seed_bound,
        logit_bound=config.weight_logit_bound,
        space=config.reblur_space,
        transfer=config.reblur_transfer,
    )


class LossOutput(NamedTuple):
    """``total``: scalar to backpropagate; ``terms``: the unweighted parts (``deblur``, and
    ``reblur`` / ``pseudo`` when enabled); ``stats``: detached diagnostics (``mask_kept``: fraction
    of pixels the calibration masks kept); ``reblurred``: ``(B, 3, H, W)`` or None."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]
    reblurred: torch.Tensor | None


class JDRLLoss(nn.Module):
    """``L = L_D + alpha * L_R (+ beta * L_P)`` (Eqs. 1-2), holding the trainable reblurring net.

    The reblurring net is a submodule, so ``JDRLLoss.parameters()`` are the parameters the optimizer
    must update next to the deblurring net's. The flow estimator is frozen and kept out of the
    module tree (it never trains, and a TorchScript flow net must not land in the state dict).

    Args:
        config: what the objective contains.
        flow_estimator: ``estimator(reference, moving) -> flow``; needed unless
            ``config.deblur_loss == "l1"``.
        levels: m, the number of blur levels of the reblurring net.
        reblur_net: a reblurring net to use instead of building ``jdrl.models.ReblurNet`` from the
            config; it must return an object with ``reblurred``, ``seeds`` and ``weights``.
    """

    def __init__(
        self,
        config: LossConfig,
        flow_estimator: FlowEstimator | None,
        levels: int = 8,
        reblur_net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        if config.deblur_loss == "deformation" and flow_estimator is None:
            raise ValueError("JDRLLoss: loss.deblur_loss='deformation' needs a flow_estimator")
        self.config = config
        self.levels = levels
        # object.__setattr__ bypasses nn.Module registration on purpose (see the class docstring).
        object.__setattr__(self, "flow_estimator", flow_estimator)
        if config.reblurring and reblur_net is None:
            reblur_net = build_reblur_net(config, levels)
        self.reblur_net = reblur_net if config.reblurring else None
        if self.reblur_net is not None and config.reblur_pretrain and flow_estimator is None and (
            config.reblur_after_warmup and config.flow_warmup_epochs > 0
        ):
            raise ValueError(
                "JDRLLoss: loss.reblur_pretrain aligns the sharp target with a flow_estimator; give one or set "
                "loss.reblur_pretrain=false"
            )
        if self.reblur_net is not None and config.reblur_anchor and flow_estimator is None:
            raise ValueError(
                "JDRLLoss: loss.reblur_anchor aligns the sharp target with a flow_estimator; give one or set "
                "loss.reblur_anchor=false"
            )
        if self.reblur_net is not None and config.pseudo_supervision and config.pseudo_mask == "texture" and flow_estimator is None:
            raise ValueError(
                "JDRLLoss: loss.pseudo_mask=texture reads the texture of the sharp target aligned by a flow_estimator; "
                "give one or set loss.pseudo_mask=none"
            )
        if self.reblur_net is not None and config.reblur_anchor and not hasattr(self.reblur_net, "blur"):
            raise ValueError(
                "JDRLLoss: loss.reblur_anchor needs a reblurring net with a blur(image, seeds, weights) method "
                "(as jdrl.models.ReblurNet has); set loss.reblur_anchor=false"
            )

    def reblur_active(self, epoch: int) -> bool:
        """Whether ``L_R`` (and ``L_P``) are part of the loss at 0-based ``epoch``."""
        if self.reblur_net is None:
            return False
        return not (self.config.reblur_after_warmup and epoch < self.config.flow_warmup_epochs)

    def _flow(self, reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            # Estimators see the images as photos: detached and clipped to the valid range.
            flow = self.flow_estimator(reference.detach().clamp(0, 1), moving.detach().clamp(0, 1))
        if flow.shape != (reference.shape[0], 2, *reference.shape[2:]):
            raise ValueError(
                f"flow estimator returned {tuple(flow.shape)} for images {tuple(reference.shape)}; "
                "expected (B, 2, H, W)"
            )
        return flow.to(device=reference.device, dtype=reference.dtype)

    def _mask(self, flow: torch.Tensor) -> torch.Tensor | None:
        if not self.config.calibration_mask:
            return None
        return calibration_mask(flow, self.config.mask_lambda, self.config.mask_tau)

    def pretrain_active(self, epoch: int) -> bool:
        """Whether R trains on the flow-aligned sharp target at 0-based ``epoch`` (the warm-up,
        with ``loss.reblur_pretrain``)."""
        return (
            self.reblur_net is not None
            and self.config.reblur_pretrain
            and not self.reblur_active(epoch)
            and epoch < self.config.flow_warmup_epochs
        )

    def _aligned_to_blurry(self, sharp: torch.Tensor, blurry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``I_S`` warped onto ``I_B`` (no gradient) and the calibration mask of that flow."""
        flow = self._flow(blurry, sharp)
        with torch.no_grad():
            warped = loss_warp(sharp, flow, self.config)
        return warped, self._mask(flow)

    def deblur_loss(
        self, sharp_est: torch.Tensor, sharp: torch.Tensor, blurry: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_D`` (Eq. 7 as in SPEC section 7) and diagnostics.

        ``C(M1 * (warp(I_S -> I_hat) - I_hat)) + C(M2 * (warp(I_hat -> I_S) - I_S))``. The flows
        carry no gradient; the second warp is differentiable in ``I_hat``. For ``epoch <
        flow_warmup_epochs`` (and with ``flow_reference: blurry`` always) the flows are estimated
        against ``blurry`` instead of ``sharp_est``.
        """
        loss, stats, _ = self._deblur_terms(sharp_est, sharp, blurry, epoch)
        return loss, stats

    def _refined_flows(
        self, sharp: torch.Tensor, blurry: torch.Tensor, seeds: torch.Tensor, weights: torch.Tensor, reverse: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``loss.flow_refine``: the flow from ``I_B`` to ``I_S`` and (with ``reverse``) back,
        estimated between ``I_B`` and ``I_S`` blurred by R's ``seeds`` and ``weights`` (read in
        ``I_B``'s frame, carried into ``I_S``'s by the flow from ``I_S`` to ``I_B``); no gradient."""
        with torch.no_grad():
            flow_sharp_to_blurry = self._flow(sharp, blurry)
            # Bilinear with border padding: interpolated level weights stay a convex combination.
            seeds_in_sharp = jdrl_ext.flow_warp(seeds, flow_sharp_to_blurry, padding_mode="border")
            weights_in_sharp = jdrl_ext.flow_warp(weights, flow_sharp_to_blurry, padding_mode="border")
            blurred_sharp = self.reblur_net.blur(sharp, seeds_in_sharp, weights_in_sharp)
        return self._flow(blurry, blurred_sharp), self._flow(blurred_sharp, blurry) if reverse else None

    def _deblur_terms(
        self,
        sharp_est: torch.Tensor,
        sharp: torch.Tensor,
        blurry: torch.Tensor,
        epoch: int,
        flows: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None] | None]:
        """``deblur_loss``, and while the flow is taken against ``I_B`` (the warm-up, or
        ``flow_reference: blurry``) ``I_S`` warped onto ``I_B`` with its mask (the first warp of
        Eq. 7 then is exactly that; None otherwise). ``flows``: the two flows of Eq. 7 (to the
        reference, back to ``I_S``) given instead of estimated (``loss.flow_refine``)."""
        cfg = self.config
        if cfg.deblur_loss == "l1":
            return (sharp_est - sharp).abs().mean(), {}, None
        against_blurry = epoch < cfg.flow_warmup_epochs or cfg.flow_reference == "blurry"
        anchor = blurry if against_blurry else sharp_est
        flow_to_est = self._flow(anchor, sharp) if flows is None else flows[0]
        mask_to_est = self._mask(flow_to_est)
        sharp_warped = loss_warp(sharp, flow_to_est, cfg)
        aligned = (sharp_warped.detach(), mask_to_est) if against_blurry else None
        loss = charbonnier(sharp_warped - sharp_est, mask_to_est, cfg.eps)
        masks = [mask_to_est]
        if cfg.cycle_deformation:
            flow_to_sharp = self._flow(sharp, anchor) if flows is None else flows[1]
            mask_to_sharp = self._mask(flow_to_sharp)
            est_warped = loss_warp(sharp_est, flow_to_sharp, cfg)
            loss = loss + charbonnier(est_warped - sharp, mask_to_sharp, cfg.eps)
            masks.append(mask_to_sharp)
        stats = {}
        if cfg.calibration_mask:
            stats["mask_kept"] = torch.stack([m.float().mean() for m in masks]).mean().detach()
        return loss, stats, aligned

    def _bound_penalties(self, out: ReblurOutput, terms: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """The hinges that keep R's seeds and level logits off their bounds (``seed_penalty`` and
        ``logit_penalty`` of LossConfig), also stored as ``terms["seed_penalty"]`` and
        ``terms["logit_penalty"]``; each left out when it is off or its tensor is a constant (no
        R_kpn / R_wpn, or an anchored R's outputs in L_R). R is fitted or trained by L_R, never
        both, in one step."""
        cfg = self.config
        total: torch.Tensor | float = 0.0
        if cfg.seed_penalty > 0 and out.seeds.requires_grad:
            terms["seed_penalty"] = seed_penalty(out.seeds, cfg.seed_penalty, cfg.seed_penalty_margin)
            total = total + terms["seed_penalty"]
        logits = getattr(out, "level_logits", None)
        if cfg.logit_penalty > 0 and logits is not None and logits.requires_grad:
            terms["logit_penalty"] = logit_penalty(logits, cfg.logit_penalty, cfg.logit_penalty_margin)
            total = total + terms["logit_penalty"]
        return total

    def _fit_term(
        self, target: torch.Tensor, blurry: torch.Tensor, mask: torch.Tensor | None, terms: dict[str, torch.Tensor], name: str
    ) -> tuple[torch.Tensor, ReblurOutput]:
        """R's fit on the flow-aligned ``target``: ``alpha * (C(R(target, I_B) - I_B) + the bound
        penalties)``, the unweighted fit stored as ``terms[name]``; -> (that, R's output)."""
        cfg = self.config
        out = self.reblur_net(target, blurry)
        terms[name] = charbonnier(out.reblurred - blurry, mask if cfg.reblur_fit_mask else None, cfg.eps)
        return cfg.alpha * (terms[name] + self._bound_penalties(out, terms)), out

    def reblur_prefit(
        self, blurry: torch.Tensor, sharp: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one of R's prefit steps (``loss.reblur_prefit_steps``) on the pair ``(I_B,
        I_S)`` ``(B, 3, H, W)``: R's fit term on a random ``reblur_prefit_crop`` window (drawn from
        ``generator``; the whole pair when it is smaller) of ``I_S`` warped onto ``I_B``; -> (the
        loss, its terms). Only R gets a gradient."""
        if self.reblur_net is None:
            raise ValueError("JDRLLoss.reblur_prefit: there is no reblurring net (loss.reblurring=false)")
        if self.flow_estimator is None:
            raise ValueError("JDRLLoss.reblur_prefit aligns the sharp target with a flow_estimator; give one")
        target, mask = self._aligned_to_blurry(sharp, blurry)
        height, width = blurry.shape[-2:]
        crop_height, crop_width = min(self.config.reblur_prefit_crop, height), min(self.config.reblur_prefit_crop, width)
        top = int(torch.randint(height - crop_height + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop_width + 1, (1,), generator=generator))
        window = (..., slice(top, top + crop_height), slice(left, left + crop_width))
        terms: dict[str, torch.Tensor] = {}
        loss, _ = self._fit_term(
            target[window], blurry[window], None if mask is None else mask[window], terms, "reblur_prefit"
        )
        return loss, terms

    def forward(
        self,
        blurry: torch.Tensor,
        sharp: torch.Tensor,
        sharp_est: torch.Tensor,
        defocus_map: torch.Tensor | None,
        epoch: int,
    ) -> LossOutput:
        """Total loss for one batch.

        Args:
            blurry: ``(B, 3, H, W)`` input ``I_B``.
            sharp: ``(B, 3, H, W)`` misaligned ground truth ``I_S``.
            sharp_est: ``(B, 3, H, W)`` deblurred ``I_hat``.
            defocus_map: ``(B, S(m), H, W)`` predicted ``B_hat`` (None for nets without one).
            epoch: 0-based training epoch: during the warm-up it decides the flow anchor (unless
                ``flow_reference: blurry`` keeps ``I_B`` throughout) and, with
                ``reblur_after_warmup``, leaves out ``L_R`` and ``L_P``.
        """
        cfg = self.config
        for name, tensor in (("sharp", sharp), ("sharp_est", sharp_est)):
            if tensor.shape != blurry.shape:
                raise ValueError(f"JDRLLoss: {name} {tuple(tensor.shape)} differs from blurry {tuple(blurry.shape)}")
        anchored = self.reblur_net is not None and cfg.reblur_anchor and self.reblur_active(epoch)
        fitted = None  # with the anchor: R's output on the aligned pair (set below, used by L_R and L_P)
        terms: dict[str, torch.Tensor] = {}
        if cfg.flow_refine and anchored and epoch >= cfg.flow_warmup_epochs:
            # R fits the pair aligned by the first flow, then its blur makes the flows of L_D.
            first_flow = self._flow(blurry, sharp)
            with torch.no_grad():
                target = loss_warp(sharp, first_flow, cfg)
            fit, fitted = self._fit_term(target, blurry, self._mask(first_flow), terms, "reblur_fit")
            flows = self._refined_flows(sharp, blurry, fitted.seeds.detach(), fitted.weights.detach(), cfg.cycle_deformation)
            deblur, stats, aligned = self._deblur_terms(sharp_est, sharp, blurry, epoch, flows)
            stats["flow_refine_change"] = torch.linalg.vector_norm(flows[0] - first_flow, dim=1).mean().detach()
            total = deblur + fit
        else:
            deblur, stats, aligned = self._deblur_terms(sharp_est, sharp, blurry, epoch)
            total = deblur
        terms = {"deblur": deblur, **terms}
        reblurred = None
        if (self.pretrain_active(epoch) or anchored) and fitted is None:
            # R learns the blur from the flow-aligned sharp target while F warms up: no ground truth,
            # and no gradient reaches F (neither input comes from it).
            if aligned is None:
                aligned = self._aligned_to_blurry(sharp, blurry)
            target, mask = aligned
            fit, fitted = self._fit_term(target, blurry, mask, terms, "reblur_fit" if anchored else "reblur_pretrain")
            total = total + fit
        if self.reblur_net is not None and self.reblur_active(epoch):
            if anchored:
                # The blur R read from the aligned pair above, as constants: L_R and L_P train F alone.
                seeds, weights = fitted.seeds.detach(), fitted.weights.detach()
                out = ReblurOutput(self.reblur_net.blur(sharp_est, seeds, weights), seeds, weights, None)
            else:
                out = self.reblur_net(sharp_est, blurry)
            reblurred = out.reblurred
            terms["reblur"] = charbonnier(reblurred - blurry, eps=cfg.eps)
            total = total + cfg.alpha * (terms["reblur"] + self._bound_penalties(out, terms))
            if cfg.pseudo_supervision:
                if defocus_map is None:
                    raise ValueError(
                        "loss.pseudo_supervision needs a deblurring net that predicts a defocus map "
                        "(model.arch='jdrl'); this one returned None; set loss.pseudo_supervision=false"
                    )
                # B_P is a target: no gradient may reach the reblurring net through L_P.
                target = pseudo_defocus_map(out.seeds, out.weights, cfg.weighted_pseudo_map).detach()
                if target.shape != defocus_map.shape:
                    raise ValueError(
                        f"JDRLLoss: defocus map {tuple(defocus_map.shape)} and pseudo map {tuple(target.shape)} "
                        "differ; do model.levels and the reblurring net's levels agree?"
                    )
                gate = None
                if cfg.pseudo_mask == "texture":
                    aligned_sharp = aligned[0] if aligned is not None else self._aligned_to_blurry(sharp, blurry)[0]
                    gate = texture_gate(aligned_sharp)
                terms["pseudo"] = charbonnier(target - defocus_map, gate, eps=cfg.eps)
                total = total + cfg.beta * terms["pseudo"]
        return LossOutput(total=total, terms=terms, stats=stats, reblurred=reblurred)


# Table 5 of the paper runs on a UNet deblurring model with Eq. 1 (no L_P); Table 1 compares the
# full model with Eq. 1 and Eq. 2. Each entry is a set of dotted config overrides (as `--set` takes).
_TABLE5_BASE: dict[str, Any] = {"model.arch": "unet", "loss.pseudo_supervision": False}

VARIANTS: dict[str, dict[str, Any]] = {
    "eq2": {},
    "eq1": {"loss.pseudo_supervision": False},
    "unet_eq1": dict(_TABLE5_BASE),
    "l1": {**_TABLE5_BASE, "loss.deblur_loss": "l1", "loss.reblurring": False},
    "no_cycle": {**_TABLE5_BASE, "loss.cycle_deformation": False},
    "no_mask": {**_TABLE5_BASE, "loss.calibration_mask": False},
    "no_reblur": {**_TABLE5_BASE, "loss.reblurring": False},
    "no_kpn": {**_TABLE5_BASE, "loss.predict_seeds": False},
    "no_wpn": {**_TABLE5_BASE, "loss.predict_weights": False},
}
"""Named config overrides: ``eq2`` (the full objective of Eq. 2, Table 1; with today's defaults
R is anchored, ``LossConfig.reblur_anchor``), ``eq1`` (Table 1 without
``L_P``), ``unet_eq1`` (Table 5 "Ours (Eq. (1))"), and Table 5 rows #1-#6: ``l1``, ``no_cycle``,
``no_mask``, ``no_reblur``, ``no_kpn``, ``no_wpn``."""


def variant_overrides(name: str) -> dict[str, Any]:
    """A copy of ``VARIANTS[name]``; an unknown name raises KeyError listing the known ones."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return dict(VARIANTS[name])

