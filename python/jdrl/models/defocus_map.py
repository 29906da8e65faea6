"""F_B: the light defocus-map predictor of the deblurring network (paper section 3.2.1)."""

from __future__ import annotations

import torch
from torch import nn

from jdrl.models.common import TwoScaleResNet, he_initialize, seed_channels

__all__ = ["DefocusMapNet"]


class DefocusMapNet(nn.Module):
    """Predicts the defocus map ``B_hat`` from the blurry image.

    ``forward(blurry (B, 3, H, W)) -> defocus_map (B, S(m), H, W)``, any ``H, W``. The map has the
    layout of the reblurring seeds (SPEC section 1: level ``r`` in channels
    ``[(r-1)(r+2)/2, (r-1)(r+2)/2 + r + 1)``), because it is supervised by the pseudo defocus map
    ``B_P`` of Eq. 13, which weights the reblurring network's seeds. The values are unbounded
    logits, like the seeds.

    Args:
        levels: the number of blur levels ``m`` (the paper: 8, giving 35 channels).
        width: channels of the full-resolution stage (the half-resolution stage has twice as many).
        residual_blocks: residual blocks at half resolution.
    """

    def __init__(self, levels: int = 8, width: int = 32, residual_blocks: int = 2) -> None:
        super().__init__()
        self.levels = levels
        self.out_channels = seed_channels(levels)
        self.body = TwoScaleResNet(3, self.out_channels, width, residual_blocks)
        he_initialize(self)

    def forward(self, blurry: torch.Tensor) -> torch.Tensor:
        if blurry.dim() != 4 or blurry.shape[1] != 3:
            raise ValueError(f"blurry must be (B, 3, H, W), got {tuple(blurry.shape)}")
        return self.body(blurry)
