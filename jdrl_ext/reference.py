"""Pure-PyTorch reference of the four operations: the spec in readable code.

This is the slow path that the tests compare the C++ and CUDA kernels against. It materializes
what the fast kernels never do (whole-image kernels, K*K shifted copies of the image), so use it on
small inputs only. Every function here has the signature of its fast counterpart in ``jdrl_ext``
and is differentiable through plain autograd.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from jdrl_ext._layout import (
    PADDING_MODES_CONV,
    PADDING_MODES_WARP,
    SUPPORTS,
    check_option,
    level_slice,
    levels_from_weights,
)

__all__ = ["isotropic_kernels", "sv_conv", "reblur", "flow_warp", "reblur_materialized"]


def _tap_table(radius: int, support: str, device, dtype):
    """Per tap of the (2r+1)^2 window: seed index l, fraction f, and whether the tap is in the disk."""
    k = 2 * radius + 1
    dy, dx = torch.meshgrid(torch.arange(-radius, radius + 1), torch.arange(-radius, radius + 1), indexing="ij")
    squared = (dy * dy + dx * dx).reshape(k * k)
    inside = squared <= radius * radius  # integer test, never a rounded rho
    rho = squared.to(torch.float64).sqrt()
    lower = rho.floor().to(torch.long)
    frac = (rho - lower.to(torch.float64)).to(dtype).to(device)
    lower = lower.clamp(max=radius)
    upper = (lower + 1).clamp(max=radius)  # f == 0 wherever upper would leave the seed vector
    return lower.to(device), upper.to(device), frac, inside.to(device)


def isotropic_kernels(seeds: torch.Tensor, *, support: str = "window") -> torch.Tensor:
    """``seeds (B, r+1, H, W)`` -> ``kernels (B, (2r+1)^2, H, W)``, softmax-normalized per pixel."""
    check_option("support", support, SUPPORTS)
    radius = seeds.shape[1] - 1
    lower, upper, frac, inside = _tap_table(radius, support, seeds.device, seeds.dtype)
    frac = frac.view(1, -1, 1, 1)
    logits = (1 - frac) * seeds[:, lower] + frac * seeds[:, upper]
    outside = ~inside.view(1, -1, 1, 1)
    if support == "window":
        logits = logits.masked_fill(outside, 0.0)
    else:
        logits = logits.masked_fill(outside, -math.inf)
    return torch.softmax(logits, dim=1)


def _extend(image: torch.Tensor, radius: int, padding_mode: str) -> torch.Tensor:
    mode = "constant" if padding_mode == "zeros" else "replicate"
    return F.pad(image, (radius, radius, radius, radius), mode=mode)


def sv_conv(image: torch.Tensor, kernels: torch.Tensor, *, padding_mode: str = "replicate") -> torch.Tensor:
    """Spatially variant convolution: one ``K x K`` kernel per pixel, shared by the channels."""
    check_option("padding_mode", padding_mode, PADDING_MODES_CONV)
    k = math.isqrt(kernels.shape[1])
    radius = (k - 1) // 2
    height, width = image.shape[-2:]
    extended = _extend(image, radius, padding_mode)
    out = torch.zeros_like(image)
    for t in range(k * k):
        dy, dx = t // k - radius, t % k - radius
        shifted = extended[:, :, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        out = out + kernels[:, t : t + 1] * shifted
    return out


def reblur(
    image: torch.Tensor,
    seeds: torch.Tensor,
    weights: torch.Tensor,
    *,
    support: str = "window",
    padding_mode: str = "replicate",
) -> torch.Tensor:
    """Eq. 11: ``weights[0] * image + sum_r weights[r] * sv_conv(image, isotropic_kernels(seeds_r))``."""
    check_option("support", support, SUPPORTS)
    check_option("padding_mode", padding_mode, PADDING_MODES_CONV)
    levels = levels_from_weights(seeds, weights)
    out = weights[:, 0:1] * image
    for radius in range(1, levels):
        kernels = isotropic_kernels(seeds[:, level_slice(radius)], support=support)
        out = out + weights[:, radius : radius + 1] * sv_conv(image, kernels, padding_mode=padding_mode)
    return out


def reblur_materialized(
    image: torch.Tensor,
    seeds: torch.Tensor,
    weights: torch.Tensor,
    *,
    support: str = "window",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """The materializing approach of the authors' code, kept as a benchmark baseline.

    Per level it builds the whole image's kernels and stacks the K*K shifted copies of the image
    (``F.unfold``), multiplies and sums. It computes what :func:`reblur` computes, at the memory
    cost the fused op avoids.
    """
    levels = levels_from_weights(seeds, weights)
    batch, channels, height, width = image.shape
    out = weights[:, 0:1] * image
    for radius in range(1, levels):
        k = 2 * radius + 1
        kernels = isotropic_kernels(seeds[:, level_slice(radius)], support=support)
        patches = F.unfold(_extend(image, radius, padding_mode), kernel_size=k)
        patches = patches.view(batch, channels, k * k, height, width)
        blurred = (patches * kernels.unsqueeze(1)).sum(dim=2)
        out = out + weights[:, radius : radius + 1] * blurred
    return out


def flow_warp(image: torch.Tensor, flow: torch.Tensor, *, padding_mode: str = "border") -> torch.Tensor:
    """Backward warp by a flow in pixels (channel 0 = x, 1 = y), bilinear, ``align_corners=True``."""
    check_option("padding_mode", padding_mode, PADDING_MODES_WARP)
    batch, _, height, width = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=image.device, dtype=image.dtype),
        torch.arange(width, device=image.device, dtype=image.dtype),
        indexing="ij",
    )
    sample_x = xs + flow[:, 0]
    sample_y = ys + flow[:, 1]
    if padding_mode == "border":
        sample_x = sample_x.clamp(0, width - 1)
        sample_y = sample_y.clamp(0, height - 1)
    x0 = sample_x.floor()
    y0 = sample_y.floor()
    wx = sample_x - x0
    wy = sample_y - y0
    out = torch.zeros_like(image)
    flat = image.reshape(batch, image.shape[1], height * width)
    for oy, ox, w in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        ty = (y0 + oy).long()
        tx = (x0 + ox).long()
        valid = (ty >= 0) & (ty < height) & (tx >= 0) & (tx < width)
        index = (ty.clamp(0, height - 1) * width + tx.clamp(0, width - 1)).view(batch, 1, -1)
        taps = flat.gather(2, index.expand(-1, image.shape[1], -1)).view_as(image)
        out = out + (w * valid).unsqueeze(1) * taps
    return out

