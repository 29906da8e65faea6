"""The networks of the framework: the deblurring network F (or a plain UNet) and the reblurring network R.

``build_deblur_net(arch, preset, levels)`` is the one way the rest of the framework builds a
deblurring network, so that a checkpoint's ``config["model"] = {"arch", "preset", "levels"}`` is
enough to rebuild it.
"""

from __future__ import annotations

from torch import nn

from jdrl.models.common import DeblurOutput, seed_channels
from jdrl.models.defocus_map import DefocusMapNet
from jdrl.models.reblur_net import ReblurNet, ReblurOutput
from jdrl.models.restormer import RESTORMER_PRESETS, JDRLDeblurNet, RestormerPreset
from jdrl.models.unet import UNET_PRESETS, UNetDeblurNet, UNetPreset

__all__ = [
    "PRESETS",
    "DeblurOutput",
    "DefocusMapNet",
    "JDRLDeblurNet",
    "ReblurNet",
    "ReblurOutput",
    "RestormerPreset",
    "UNetDeblurNet",
    "UNetPreset",
    "build_deblur_net",
    "seed_channels",
]

# PRESETS[arch][preset]: "jdrl" is F_B + channel-attention fusion + Restormer-style F_D (the
# paper's network), "unet" the plain UNet of the ablation; each has "paper", "small" and "tiny".
PRESETS: dict[str, dict[str, RestormerPreset | UNetPreset]] = {
    "jdrl": RESTORMER_PRESETS,
    "unet": UNET_PRESETS,
}


def build_deblur_net(arch: str = "jdrl", preset: str = "small", levels: int = 8) -> nn.Module:
    """A freshly initialized deblurring network.

    Its ``forward(blurry (B, 3, H, W) in [0, 1])`` returns ``DeblurOutput(sharp (B, 3, H, W),
    defocus_map)``, with ``defocus_map (B, S(levels), H, W)`` for ``arch="jdrl"`` and ``None`` for
    ``arch="unet"`` (which ignores ``levels``). Any ``H, W``.

    Example:
        >>> import torch
        >>> net = build_deblur_net("jdrl", "tiny")
        >>> out = net(torch.rand(1, 3, 37, 45))
        >>> tuple(out.sharp.shape), tuple(out.defocus_map.shape)
        ((1, 3, 37, 45), (1, 35, 37, 45))
    """
    if arch not in PRESETS:
        raise ValueError(f"arch must be one of {', '.join(repr(a) for a in PRESETS)}, got {arch!r}")
    presets = PRESETS[arch]
    if preset not in presets:
        raise ValueError(
            f"preset for arch {arch!r} must be one of {', '.join(repr(p) for p in presets)}, got {preset!r}"
        )
    if arch == "jdrl":
        return JDRLDeblurNet(presets[preset], levels=levels)
    return UNetDeblurNet(presets[preset])
