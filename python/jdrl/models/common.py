"""Small pieces shared by the networks: the output type, padding, residual blocks, initialization.

Everything here is a building block; each network lives in its own file.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DeblurOutput",
    "PointwiseConv2d",
    "ResidualBlock",
    "TwoScaleResNet",
    "he_initialize",
    "pad_to_multiple",
    "pointwise_conv",
    "seed_channels",
]


class DeblurOutput(NamedTuple):
    """What a deblurring network returns.

    sharp: ``(B, 3, H, W)``, the deblurred image (not clamped: losses see the raw estimate).
    defocus_map: ``(B, S(m), H, W)``, the estimated defocus map ``B_hat``, or ``None`` for a network
    without a defocus branch (the UNet).
    """

    sharp: torch.Tensor
    defocus_map: torch.Tensor | None


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a ``(C_out, C_in, 1, 1)`` weight.

    Without gradients on the CPU it calls oneDNN's convolution directly: ``F.conv2d`` sends 1x1
    convolutions to its generic GEMM path, which took 1.3-2x as long for the Restormer's 1x1
    layers at 512x512 (e.g. 32 -> 96 channels, channels_last: 87 vs 54 ms, one thread), with
    outputs equal to the bit in those cases. With gradients, the standard path (and its backward).
    """
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and x.dim() == 4
        and torch.backends.mkldnn.is_available()
    ):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, [0, 0], [1, 1], [1, 1], 1)
    return F.conv2d(x, weight, bias)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)`` computed by :func:`pointwise_conv` (same weights,
    same state-dict keys)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.weight, self.bias)


def seed_channels(levels: int) -> int:
    """``S(m) = (m - 1)(m + 2) / 2`` seed channels for ``m`` blur levels (SPEC section 1; 35 for m = 8).

    The same number as ``jdrl_ext.seed_channels``; computed here so that building a deblurring
    network for inference does not need the compiled ops (the tests check the two agree).
    """
    if levels < 2:
        raise ValueError(f"levels (the number of blur levels m) must be at least 2, got {levels}")
    return (levels - 1) * (levels + 2) // 2


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` at the bottom and right, by edge replication, to multiples of ``multiple``.

    Replication works for any size (reflection needs the pad to be smaller than the image); the
    caller crops the result back to ``H, W``.
    """
    height, width = image.shape[-2:]
    pad_bottom = (-height) % multiple
    pad_right = (-width) % multiple
    if pad_bottom == 0 and pad_right == 0:
        return image
    return F.pad(image, (0, pad_right, 0, pad_bottom), mode="replicate")


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))`` with 3x3 convolutions; ``(B, C, H, W) -> (B, C, H, W)``."""

    residual_output_layer = "conv2"  # read by he_initialize

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class TwoScaleResNet(nn.Module):
    """A light convolutional predictor: convolutions and residual blocks at full and half resolution.

    ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` for any ``H, W``. The half-resolution
    stage doubles the receptive field at little cost: estimating a blur of radius up to ``m - 1``
    pixels needs context wider than a few 3x3 convolutions see at full resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, residual_blocks: int) -> None:
        super().__init__()
        if width < 1 or residual_blocks < 1:
            raise ValueError(f"width and residual_blocks must be positive, got {width} and {residual_blocks}")
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.full_resolution_in = ResidualBlock(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.half_resolution = nn.Sequential(*[ResidualBlock(2 * width) for _ in range(residual_blocks)])
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.full_resolution_out = ResidualBlock(width)
        self.tail = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.full_resolution_in(F.relu(self.head(x)))
        half = self.half_resolution(F.relu(self.down(full)))
        # Upsampling to the exact skip size (not by a fixed factor) is what makes odd sizes work.
        upsampled = F.interpolate(half, size=full.shape[-2:], mode="bilinear", align_corners=False)
        full = self.full_resolution_out(full + F.relu(self.up(upsampled)))
        return self.tail(full)


# Factor on the last layer of each residual branch at initialization (see he_initialize).
RESIDUAL_BRANCH_INIT_SCALE = 0.1


def he_initialize(module: nn.Module, nonlinearity: str = "relu") -> None:
    """He (kaiming) normal initialization of every convolution and linear layer, zero biases.

    Section 4.1 of the paper initializes with He et al.'s rule: ``std = gain / sqrt(fan_in)``, with
    ``gain = sqrt(2)`` where layers feed ReLUs (``nonlinearity="relu"``) and ``gain = 1`` where
    they do not (``"linear"``, e.g. the transformer, whose non-linearities are softmax and a GELU
    gate behind LayerNorms); the wrong gain would double the variance at every layer of a deep
    chain. Norm layers keep their ones/zeros.

    The rule keeps the variance of a plain chain constant, but every residual branch adds its own
    unit-scale variance to the stream, so a stack of tens of blocks would start with activations in
    the tens. So the last layer of each residual branch (a block gives its attribute name as the
    class attribute ``residual_output_layer``) is then scaled by ``RESIDUAL_BRANCH_INIT_SCALE``:
    the blocks start close to the identity, with every weight non-zero and receiving gradients.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=nonlinearity)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    with torch.no_grad():
        for block in module.modules():
            output_layer_name = getattr(block, "residual_output_layer", None)
            if output_layer_name is not None:
                getattr(block, output_layer_name).weight.mul_(RESIDUAL_BRANCH_INIT_SCALE)
