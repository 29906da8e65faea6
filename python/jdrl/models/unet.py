"""A plain UNet deblurring network: the baseline of the paper's Fig. 3 and of the ablation.

Four levels of two 3x3 convolutions each, max-pool down, transposed-convolution up, skip
concatenation, a global residual. No defocus branch: it returns ``DeblurOutput(sharp, None)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jdrl.models.common import DeblurOutput, he_initialize, pad_to_multiple

__all__ = ["UNET_PRESETS", "UNetDeblurNet", "UNetPreset"]

SIZE_MULTIPLE = 8  # three halvings


@dataclass(frozen=True)
class UNetPreset:
    """widths: channels of levels 1 to 4. global_residual: predict ``I_hat - I_B``."""

    widths: tuple[int, int, int, int]
    global_residual: bool = True


UNET_PRESETS: dict[str, UNetPreset] = {
    # The paper does not give the UNet's sizes; 32..256 is a common choice (about 1.9M parameters).
    "paper": UNetPreset(widths=(32, 64, 128, 256)),
    "small": UNetPreset(widths=(16, 32, 64, 128)),
    "tiny": UNetPreset(widths=(8, 16, 32, 64)),
}


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by a LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )


class UNetDeblurNet(nn.Module):
    """``forward(blurry (B, 3, H, W)) -> DeblurOutput(sharp (B, 3, H, W), None)`` for any ``H, W``."""

    def __init__(self, preset: UNetPreset) -> None:
        super().__init__()
        self.preset = preset
        w1, w2, w3, w4 = preset.widths
        self.encoder1 = DoubleConv(3, w1)
        self.encoder2 = DoubleConv(w1, w2)
        self.encoder3 = DoubleConv(w2, w3)
        self.bottom = DoubleConv(w3, w4)
        self.up3 = nn.ConvTranspose2d(w4, w3, 2, stride=2)
        self.decoder3 = DoubleConv(2 * w3, w3)
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.decoder2 = DoubleConv(2 * w2, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.decoder1 = DoubleConv(2 * w1, w1)
        self.to_image = nn.Conv2d(w1, 3, 1)
        he_initialize(self, nonlinearity="leaky_relu")
        if preset.global_residual:
            # Start near the identity (see JDRLDeblurNet): small, not zero, so all gradients flow.
            with torch.no_grad():
                self.to_image.weight.mul_(0.1)

    def forward(self, blurry: torch.Tensor) -> DeblurOutput:
        if blurry.dim() != 4 or blurry.shape[1] != 3:
            raise ValueError(f"blurry must be (B, 3, H, W), got {tuple(blurry.shape)}")
        height, width = blurry.shape[-2:]
        padded = pad_to_multiple(blurry, SIZE_MULTIPLE)
        level1 = self.encoder1(padded)
        level2 = self.encoder2(F.max_pool2d(level1, 2))
        level3 = self.encoder3(F.max_pool2d(level2, 2))
        x = self.bottom(F.max_pool2d(level3, 2))
        x = self.decoder3(torch.cat([self.up3(x), level3], dim=1))
        x = self.decoder2(torch.cat([self.up2(x), level2], dim=1))
        x = self.decoder1(torch.cat([self.up1(x), level1], dim=1))
        x = self.to_image(x)[..., :height, :width]
        sharp = blurry + x if self.preset.global_residual else x
        return DeblurOutput(sharp, None)
