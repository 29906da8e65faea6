"""Python face of the custom ops: fake kernels, autograd, and the documented functions.

The C++ library (``jdrl_ext._C``) defines the schemas and the CPU/CUDA kernels. Here we register,
with ``torch.library``, what the dispatcher needs from Python: a fake (meta) kernel per op, so that
``torch.compile`` can trace the ops without running them, and the autograd formula, which calls the
op's own backward op (``_<op>_backward``).
"""

from __future__ import annotations

import torch

from jdrl_ext import _C  # noqa: F401  (loads the library: registers the schemas and kernels)
from jdrl_ext._layout import (
    PADDING_MODES_CONV,
    PADDING_MODES_WARP,
    SUPPORTS,
    check_option,
    levels_from_weights,
)

__all__ = ["isotropic_kernels", "sv_conv", "reblur", "flow_warp"]

_ops = torch.ops.jdrl_ext


# --- checks shared by the fake kernels (the C++ kernels repeat them with TORCH_CHECK) -------------


# The dtypes the kernels are compiled for (CPU: float32 and float64 only, which the C++ check says).
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_dtype(tensor: torch.Tensor, name: str) -> None:
    """A tensor of a floating dtype the kernels have: float8 is floating too, but no kernel is built
    for it, and the CUDA dispatch's own error would not say which argument is wrong; a list or an
    array gets a TypeError naming the argument, not an AttributeError."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {tensor.dtype}")
    if tensor.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")


def _check_dtypes(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        _check_dtype(tensor, name)


def _check_4d(tensor: torch.Tensor, name: str, layout: str = "(B, C, H, W)") -> None:
    if tensor.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor {layout}, got shape {tuple(tensor.shape)}")
    _check_dtype(tensor, name)


def _new_contiguous(like: torch.Tensor) -> torch.Tensor:
    """What the real kernels return for an output shaped like ``like``: a fresh contiguous tensor
    (``empty_like`` would keep a channels_last input's strides, which the kernels do not)."""
    return like.new_empty(like.shape)


def _check_pair(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(
            f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same batch, height and width"
        )


def _kernel_size(kernels: torch.Tensor) -> int:
    taps = kernels.shape[1]
    size = int(taps**0.5 + 0.5)
    if size * size != taps:
        raise ValueError(f"kernels must have K*K channels for a square K x K kernel, got {taps} channels")
    if size % 2 == 0:
        raise ValueError(f"kernels must have an odd kernel size K, got K = {size} ({taps} channels)")
    return size


# --- isotropic_kernels -------------------------------------------------------------------------------


@torch.library.register_fake("jdrl_ext::isotropic_kernels")
def _isotropic_kernels_fake(seeds, *, support="window"):
    _check_4d(seeds, "seeds", "(B, r+1, H, W)")
    if seeds.shape[1] < 2:
        raise ValueError(f"seeds must have at least 2 channels (r + 1 seeds), got {seeds.shape[1]}")
    check_option("support", support, SUPPORTS)
    size = 2 * seeds.shape[1] - 1
    return seeds.new_empty(seeds.shape[0], size * size, seeds.shape[2], seeds.shape[3])


@torch.library.register_fake("jdrl_ext::_isotropic_kernels_backward")
def _isotropic_kernels_backward_fake(grad, seeds, support):
    return _new_contiguous(seeds)


def _isotropic_kernels_setup(ctx, inputs, keyword_only_inputs, output):
    (seeds,) = inputs
    ctx.save_for_backward(seeds)
    ctx.support = keyword_only_inputs.get("support", "window")


def _isotropic_kernels_backward(ctx, grad):
    (seeds,) = ctx.saved_tensors
    return _ops._isotropic_kernels_backward(grad, seeds, ctx.support)


torch.library.register_autograd(
    "jdrl_ext::isotropic_kernels", _isotropic_kernels_backward, setup_context=_isotropic_kernels_setup
)


def isotropic_kernels(seeds: torch.Tensor, *, support: str = "window") -> torch.Tensor:
    """Isotropic blur kernels from polar seeds, one kernel per pixel (SPEC section 2).

    Args:
        seeds: ``(B, r+1, H, W)``: seed ``a_0`` (centre) .. ``a_r`` (rim) of a kernel of radius ``r``.
        support: ``"window"`` (default): the corner taps of the square window (``rho > r``) take
            logit 0 and join the softmax, as in the paper's Eq. 9 and the authors' code.
            ``"disk"``: the corner taps weigh exactly 0.

    Returns:
        ``(B, K*K, H, W)`` with ``K = 2r + 1``; tap ``t = (dy + r) * K + (dx + r)``. The logit of a tap
        at distance ``rho`` interpolates the seeds linearly in ``rho``; a softmax over the taps makes
        each pixel's kernel positive (on its support) and sum to 1.

    Example:
        >>> import torch, jdrl_ext
        >>> kernels = jdrl_ext.isotropic_kernels(torch.zeros(1, 3, 4, 4))  # radius 2: 5 x 5 taps
        >>> kernels.shape
        torch.Size([1, 25, 4, 4])
        >>> round(kernels[0, :, 0, 0].sum().item(), 6)
        1.0
    """
    _check_dtypes(seeds=seeds)
    return _ops.isotropic_kernels(seeds, support=support)


# --- sv_conv -------------------------------------------------------------------------------------------


@torch.library.register_fake("jdrl_ext::sv_conv")
def _sv_conv_fake(image, kernels, *, padding_mode="replicate"):
    _check_4d(image, "image")
    _check_4d(kernels, "kernels", "(B, K*K, H, W)")
    _check_pair(image, "image", kernels, "kernels")
    _kernel_size(kernels)
    check_option("padding_mode", padding_mode, PADDING_MODES_CONV)
    return _new_contiguous(image)


@torch.library.register_fake("jdrl_ext::_sv_conv_backward")
def _sv_conv_backward_fake(grad, image, kernels, padding_mode):
    return _new_contiguous(image), _new_contiguous(kernels)


def _sv_conv_setup(ctx, inputs, keyword_only_inputs, output):
    image, kernels = inputs
    ctx.save_for_backward(image, kernels)
    ctx.padding_mode = keyword_only_inputs.get("padding_mode", "replicate")


def _sv_conv_backward(ctx, grad):
    image, kernels = ctx.saved_tensors
    return _ops._sv_conv_backward(grad, image, kernels, ctx.padding_mode)


torch.library.register_autograd("jdrl_ext::sv_conv", _sv_conv_backward, setup_context=_sv_conv_setup)


def sv_conv(image: torch.Tensor, kernels: torch.Tensor, *, padding_mode: str = "replicate") -> torch.Tensor:
    """Spatially variant convolution: one ``K x K`` kernel per pixel, shared by all channels (SPEC 3).

    ``out[b, c, y, x] = sum_{dy, dx} kernels[b, t(dy, dx), y, x] * image[b, c, y + dy, x + dx]``
    with ``t = (dy + R) * K + (dx + R)``, ``R = (K - 1) / 2``. Kernels are applied as given.

    Args:
        image: ``(B, C, H, W)``.
        kernels: ``(B, K*K, H, W)``, ``K`` odd.
        padding_mode: how the image extends past its border: ``"replicate"`` (default, clamped
            coordinates: a blurry border does not darken) or ``"zeros"`` (the authors' code).

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> import torch, jdrl_ext
        >>> image = torch.rand(1, 3, 8, 8)
        >>> box = torch.full((1, 9, 8, 8), 1 / 9)  # a 3 x 3 box filter at every pixel
        >>> jdrl_ext.sv_conv(image, box).shape
        torch.Size([1, 3, 8, 8])
    """
    _check_dtypes(image=image, kernels=kernels)
    return _ops.sv_conv(image, kernels, padding_mode=padding_mode)


# --- reblur --------------------------------------------------------------------------------------------


@torch.library.register_fake("jdrl_ext::reblur")
def _reblur_fake(image, seeds, weights, *, support="window", padding_mode="replicate"):
    _check_4d(image, "image")
    _check_4d(seeds, "seeds", "(B, S(m), H, W)")
    _check_4d(weights, "weights", "(B, m, H, W)")
    _check_pair(image, "image", seeds, "seeds")
    _check_pair(image, "image", weights, "weights")
    levels_from_weights(seeds, weights)
    check_option("support", support, SUPPORTS)
    check_option("padding_mode", padding_mode, PADDING_MODES_CONV)
    return _new_contiguous(image)


@torch.library.register_fake("jdrl_ext::_reblur_backward")
def _reblur_backward_fake(grad, image, seeds, weights, support, padding_mode):
    return _new_contiguous(image), _new_contiguous(seeds), _new_contiguous(weights)


def _reblur_setup(ctx, inputs, keyword_only_inputs, output):
    image, seeds, weights = inputs
    ctx.save_for_backward(image, seeds, weights)
    ctx.support = keyword_only_inputs.get("support", "window")
    ctx.padding_mode = keyword_only_inputs.get("padding_mode", "replicate")


def _reblur_backward(ctx, grad):
    image, seeds, weights = ctx.saved_tensors
    return _ops._reblur_backward(grad, image, seeds, weights, ctx.support, ctx.padding_mode)


torch.library.register_autograd("jdrl_ext::reblur", _reblur_backward, setup_context=_reblur_setup)


def reblur(
    image: torch.Tensor,
    seeds: torch.Tensor,
    weights: torch.Tensor,
    *,
    support: str = "window",
    padding_mode: str = "replicate",
) -> torch.Tensor:
    """The reblurred image of Eq. 11, fused (SPEC section 4).

    ``out = weights[:, 0] * image + sum_{r=1}^{m-1} weights[:, r] * sv_conv(image, isotropic_kernels(seeds_r))``

    computed without ever holding a level's kernels for the whole image: the ``m`` levels fold into
    one radial kernel per pixel over the ``m(m+1)/2`` symmetry orbits of the window (36 for m = 8).

    Args:
        image: ``(B, C, H, W)``, e.g. the deblurred estimate.
        seeds: ``(B, S(m), H, W)``, ``S(m) = (m-1)(m+2)/2`` (35 for m = 8): level ``r``'s ``r + 1``
            seeds at channels ``jdrl_ext.level_slice(r)``.
        weights: ``(B, m, H, W)``: per-pixel mixing weights, level 0 being the identity; used as
            given (normalize them, e.g. with a softmax over the channels, before).
        support: ``"window"`` (default) or ``"disk"``, as in :func:`isotropic_kernels`.
        padding_mode: ``"replicate"`` (default) or ``"zeros"``, as in :func:`sv_conv`.

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> import torch, jdrl_ext
        >>> image = torch.rand(1, 3, 16, 16)
        >>> seeds = torch.zeros(1, jdrl_ext.seed_channels(8), 16, 16)
        >>> weights = torch.softmax(torch.zeros(1, 8, 16, 16), dim=1)
        >>> jdrl_ext.reblur(image, seeds, weights).shape
        torch.Size([1, 3, 16, 16])
    """
    _check_dtypes(image=image, seeds=seeds, weights=weights)
    return _ops.reblur(image, seeds, weights, support=support, padding_mode=padding_mode)


# --- flow_warp -----------------------------------------------------------------------------------------


@torch.library.register_fake("jdrl_ext::flow_warp")
def _flow_warp_fake(image, flow, *, padding_mode="border"):
    _check_4d(image, "image")
    _check_4d(flow, "flow", "(B, 2, H, W)")
    if flow.shape[1] != 2:
        raise ValueError(f"flow must have 2 channels (x, y), got shape {tuple(flow.shape)}")
    _check_pair(image, "image", flow, "flow")
    check_option("padding_mode", padding_mode, PADDING_MODES_WARP)
    return _new_contiguous(image)


@torch.library.register_fake("jdrl_ext::_flow_warp_backward")
def _flow_warp_backward_fake(grad, image, flow, padding_mode):
    return _new_contiguous(image), _new_contiguous(flow)


def _flow_warp_setup(ctx, inputs, keyword_only_inputs, output):
    image, flow = inputs
    ctx.save_for_backward(image, flow)
    ctx.padding_mode = keyword_only_inputs.get("padding_mode", "border")


def _flow_warp_backward(ctx, grad):
    image, flow = ctx.saved_tensors
    return _ops._flow_warp_backward(grad, image, flow, ctx.padding_mode)


torch.library.register_autograd("jdrl_ext::flow_warp", _flow_warp_backward, setup_context=_flow_warp_setup)


def flow_warp(image: torch.Tensor, flow: torch.Tensor, *, padding_mode: str = "border") -> torch.Tensor:
    """Backward warping by a dense flow in pixels, bilinear (SPEC section 5).

    ``out[b, c, y, x] = image[b, c]`` sampled bilinearly at ``(x + flow[b, 0, y, x], y + flow[b, 1, y, x])``.
    Zero flow is exactly the identity. Equal to
    ``F.grid_sample(image, grid, mode="bilinear", padding_mode=..., align_corners=True)`` on the
    normalized grid of ``base + flow``.

    Args:
        image: ``(B, C, H, W)``: the moving image.
        flow: ``(B, 2, H, W)`` in pixels; channel 0 = x (to the right), channel 1 = y (down).
        padding_mode: ``"border"`` (default): the sample coordinate is clamped to the image, and its
            gradient is 0 where it is clamped (as in grid_sample); ``"zeros"``: taps outside count 0.

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> import torch, jdrl_ext
        >>> image = torch.rand(1, 3, 8, 8)
        >>> flow = torch.zeros(1, 2, 8, 8)
        >>> torch.equal(jdrl_ext.flow_warp(image, flow), image)
        True
    """
    _check_dtypes(image=image, flow=flow)
    return _ops.flow_warp(image, flow, padding_mode=padding_mode)
