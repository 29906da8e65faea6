"""Image quality metrics as the defocus-deblurring literature reports them.

- ``psnr``: ``10 log10(data_range^2 / MSE)`` over all pixels and channels of each image.
- ``ssim``: scikit-image's ``structural_similarity`` as DPDD, RealDOF and the JDRL paper use it
  (``win_size=7``, uniform window, sample covariance, ``K1=0.01``, ``K2=0.03``, ``data_range=1``,
  per channel, averaged over channels, border of 3 pixels excluded). Computed in float64 torch on the
  input's device; equal to scikit-image to about 1e-7 (the tests check it).
- LPIPS: only when the ``lpips`` package and its AlexNet backbone weights are already on this
  machine; nothing is ever downloaded. ``load_lpips`` says why it is unavailable otherwise.
- ``aligned_metrics``: the paper's protocol for misaligned test pairs (section 4.2): the sharp image
  is warped onto the prediction with an optical flow before measuring, and the plain metrics are
  reported beside.
- ``paired_difference``: two methods on the same pairs: the mean per-pair difference, its standard
  error (over the pairs, and over the photos they were cut from), and the pairs the first wins.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["aligned_metrics", "load_lpips", "paired_difference", "psnr", "ssim", "warp_onto"]

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(name: str, image: torch.Tensor) -> torch.Tensor:
    if image.dim() == 3:
        return image.unsqueeze(0)
    if image.dim() == 4:
        return image
    raise ValueError(f"{name} must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return _as_batch("pred", pred), _as_batch("target", target)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image.

    ``pred``, ``target``: ``(B, C, H, W)`` or ``(C, H, W)``. Returns ``(B,)`` float64 (a 0-d tensor
    for 3-D inputs); identical images give ``inf``.
    """
    single = pred.dim() == 3
    pred, target = _check_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(dim=1)
    values = 10.0 * torch.log10(data_range**2 / mse)
    return values[0] if single else values


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, scikit-image's definition (see the module docstring).

    ``pred``, ``target``: ``(B, C, H, W)`` or ``(C, H, W)`` with ``H, W >= 7``. Returns ``(B,)``
    float64 (a 0-d tensor for 3-D inputs). A "valid" 7x7 box filter gives exactly the window means
    that scikit-image keeps after cropping its 3-pixel border; channels are processed one at a time
    to bound memory on large images.
    """
    single = pred.dim() == 3
    pred, target = _check_pair(pred, target)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(pred.shape[-2:])}")
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    taps = SSIM_WINDOW * SSIM_WINDOW
    sample_covariance = taps / (taps - 1)
    per_channel = []
    for channel in range(pred.shape[1]):
        x = pred[:, channel : channel + 1].double()
        y = target[:, channel : channel + 1].double()
        stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
        means = F.avg_pool2d(stacked, SSIM_WINDOW, stride=1)
        mean_x, mean_y, mean_xx, mean_yy, mean_xy = means.unbind(dim=1)
        var_x = sample_covariance * (mean_xx - mean_x * mean_x)
        var_y = sample_covariance * (mean_yy - mean_y * mean_y)
        cov_xy = sample_covariance * (mean_xy - mean_x * mean_y)
        numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
        denominator = (mean_x * mean_x + mean_y * mean_y + c1) * (var_x + var_y + c2)
        per_channel.append((numerator / denominator).flatten(1).mean(dim=1))
    values = torch.stack(per_channel, dim=1).mean(dim=1)
    return values[0] if single else values


def paired_difference(
    first: list[float], second: list[float], groups: list[str] | None = None
) -> dict[str, Any]:
    """Compare two methods scored on the same pairs: ``mean`` of ``first[i] - second[i]``, its
    ``standard_error`` (the differences' sample standard deviation over sqrt(pairs); None for one
    pair), ``wins`` (pairs where ``first`` is above) and ``pairs``.

    Pairs cut from the same photo are not independent, so with ``groups`` (one label per pair, the
    photo it came from) also ``by_group`` (label -> mean difference) and ``group_standard_error``:
    the standard deviation of the group means over sqrt(groups), None for one group. With few
    photos it is the more honest of the two errors."""
    if len(first) != len(second) or not first:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists, got {len(first)} and {len(second)}")
    differences = [a - b for a, b in zip(first, second)]
    result: dict[str, Any] = {
        "mean": sum(differences) / len(differences),
        "standard_error": _standard_error(differences),
        "wins": sum(d > 0 for d in differences),
        "pairs": len(differences),
    }
    if groups is not None:
        if len(groups) != len(differences):
            raise ValueError(f"groups needs one label per pair: {len(groups)} labels for {len(differences)} pairs")
        members: dict[str, list[float]] = {}
        for label, difference in zip(groups, differences):
            members.setdefault(label, []).append(difference)
        result["by_group"] = {label: sum(values) / len(values) for label, values in sorted(members.items())}
        result["group_standard_error"] = _standard_error(list(result["by_group"].values()))
    return result


def _standard_error(values: list[float]) -> float | None:
    """Sample standard deviation of ``values`` over sqrt(len); None for fewer than two."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def load_lpips(device: str | torch.device = "cpu", net: str = "alex") -> tuple[Callable | None, str]:
    """``(metric, "")`` with ``metric(pred, target) -> (B,)`` LPIPS (run on ``device``), or ``(None, reason)``.

    Uses the ``lpips`` package only when its backbone weights are already in the torch hub cache
    (``torch.hub.get_dir()/checkpoints``); it never downloads. Inputs in ``[0, 1]``.
    """
    try:
        import lpips
        import torchvision  # noqa: F401
    except ImportError as error:
        return None, f"the optional package is not installed ({error.name})"
    backbone_files = {
        "alex": "alexnet-owt-7be5be79.pth",
        "vgg": "vgg16-397923af.pth",
        "squeeze": "squeezenet1_1-b8a52dc0.pth",
    }
    if net not in backbone_files:
        return None, f"unknown LPIPS backbone {net!r}"
    checkpoint = os.path.join(torch.hub.get_dir(), "checkpoints", backbone_files[net])
    if not os.path.isfile(checkpoint):
        return None, f"backbone weights {checkpoint} are not on this machine (never downloaded by jdrl)"
    import lpips

    model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    def metric(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = _check_pair(pred, target)
        pred, target = pred.to(device, torch.float32), target.to(device, torch.float32)
        with torch.no_grad():
            return model(pred * 2 - 1, target * 2 - 1, normalize=False).flatten().double().cpu()

    return metric, ""


def warp_onto(reference: torch.Tensor, moving: torch.Tensor, flow_estimator: Callable) -> torch.Tensor:
    """``moving`` warped onto ``reference`` with the flow that ``flow_estimator(reference, moving)`` returns.

    Both ``(B, 3, H, W)``; the warp is ``jdrl_ext.flow_warp`` with border padding.
    """
    import jdrl_ext

    with torch.no_grad():
        flow = flow_estimator(reference, moving)
        return jdrl_ext.flow_warp(moving, flow.to(moving.dtype), padding_mode="border")


def aligned_metrics(
    pred: torch.Tensor,
    sharp: torch.Tensor,
    flow_estimator: Callable,
    lpips_metric: Callable | None = None,
) -> dict[str, float]:
    """Metrics of ``pred`` against ``sharp`` warped onto it, and against ``sharp`` as it is.

    ``pred``, ``sharp``: ``(B, 3, H, W)`` or ``(3, H, W)`` in ``[0, 1]`` (``pred`` is clamped to it).
    ``flow_estimator(reference, moving) -> (B, 2, H, W)`` as ``jdrl.flow`` defines it. Returns the
    batch means ``{"psnr", "ssim", "psnr_unaligned", "ssim_unaligned"}``, plus ``"lpips"`` and
    ``"lpips_unaligned"`` when ``lpips_metric`` is given (see ``load_lpips``).
    """
    pred, sharp = _check_pair(pred, sharp)
    pred = pred.clamp(0, 1)
    aligned_sharp = warp_onto(pred, sharp, flow_estimator)
    results = {
        "psnr": psnr(pred, aligned_sharp).mean().item(),
        "ssim": ssim(pred, aligned_sharp).mean().item(),
        "psnr_unaligned": psnr(pred, sharp).mean().item(),
        "ssim_unaligned": ssim(pred, sharp).mean().item(),
    }
    if lpips_metric is not None:
        results["lpips"] = lpips_metric(pred, aligned_sharp).mean().item()
        results["lpips_unaligned"] = lpips_metric(pred, sharp).mean().item()
    return results
