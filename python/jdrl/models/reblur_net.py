"""R: the reblurring network of paper section 3.3 (Fig. 5).

From the deblurred estimate ``I_hat`` and the blurry input ``I_B`` it predicts, per pixel, the
kernel seeds of ``m - 1`` isotropic blur levels (R_kpn, Eq. 8) and ``m`` mixing weights (R_wpn,
Eq. 10), and reblurs ``I_hat`` with them through the fused ``jdrl_ext.reblur`` (Eq. 11), which
never holds the per-level kernels of the whole image in memory.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from jdrl.models.common import TwoScaleResNet, he_initialize, seed_channels

__all__ = ["ReblurNet", "ReblurOutput"]

SUPPORTS = ("window", "disk")
PADDING_MODES = ("replicate", "zeros")
SPACES = ("srgb", "linear")


class ReblurOutput(NamedTuple):
    """reblurred ``(B, 3, H, W)``; seeds ``(B, S(m), H, W)`` (kernel logits as the op takes them,
    bounded when ``seed_bound`` is set; SPEC section 1 layout);
    weights ``(B, m, H, W)``, softmax-normalized over the ``m`` levels; level_logits ``(B, m, H, W)``,
    what the softmax made the weights of (bounded when ``logit_bound`` is set; None without R_wpn)."""

    reblurred: torch.Tensor
    seeds: torch.Tensor
    weights: torch.Tensor
    level_logits: torch.Tensor | None = None


class ReblurNet(nn.Module):
    """``forward(sharp_est (B, 3, H, W), blurry (B, 3, H, W)) -> ReblurOutput``, any ``H, W``.

    Args:
        levels: the number of blur levels ``m`` (level 0 is the identity, level ``r`` has radius
            ``r``); the paper uses 8.
        width: channels of R_kpn and R_wpn at full resolution.
        predict_seeds: with ``False`` there is no R_kpn and the seeds are fixed zeros, i.e. flat
            kernels (the "w/o R_kpn" ablation).
        predict_weights: with ``False`` there is no R_wpn and the weights are uniform ``1/m``
            (the "w/o R_wpn" ablation).
        support, padding_mode: passed to ``jdrl_ext.reblur`` (SPEC sections 2 and 3).
        residual_blocks: residual blocks at half resolution in each branch.
        seed_bound: the seeds are ``seed_bound * tanh(raw / seed_bound)`` (``None`` or 0: the raw
            output, unbounded). Kernels are softmaxes of the seeds, so a seed range of ``2 * c`` lets
            one tap outweigh another by ``exp(2c)`` (``c = 6``: 1.6e5, enough for a disk with a
            sharp rim or a near-delta kernel). Unbounded seeds drift to 1e3-1e4 under Adam and make
            the pseudo defocus map (weights times seeds) explode; the bound keeps the kernels and
            that map finite. It does not keep R learning: raw seeds that run away saturate the
            tanh, whose gradient then vanishes as the saturated softmax's did.
        logit_bound: the level logits (R_wpn's output, before the softmax over levels) are
            ``logit_bound * tanh(raw / logit_bound)`` (``None`` or 0: unbounded). At Adam rates of
            1e-3 the unbounded logits spread from ~2.5 to ~1e3 within ~50 steps: every pixel puts
            all its weight on one level and the softmax's gradient vanishes, so R_wpn stops
            learning. Bounded, two levels' weights differ by at most ``exp(2 * logit_bound)``.
        space: ``"srgb"`` reblurs the values as they are; ``"linear"`` reblurs
            ``srgb_to_linear(I_hat)`` and maps the result back (SPEC section 7 "Linear light";
            inputs clamped to [0, 1] first), as physical defocus acts on linear intensities. The
            seeds and weights are predicted from the sRGB images in both cases.
        transfer: the transfer function of ``space="linear"``: ``"srgb"`` (IEC 61966-2-1) or
            ``"gamma2.2"`` (see :mod:`jdrl.colorspace`).
    """

    def __init__(
        self,
        levels: int = 8,
        width: int = 32,
        predict_seeds: bool = True,
        predict_weights: bool = True,
        support: str = "window",
        padding_mode: str = "replicate",
        residual_blocks: int = 2,
        seed_bound: float | None = None,
        logit_bound: float | None = None,
        space: str = "srgb",
        transfer: str = "srgb",
    ) -> None:
        super().__init__()
        from jdrl.colorspace import TRANSFERS

        for name, bound in (("seed_bound", seed_bound), ("logit_bound", logit_bound)):
            if bound is not None and not (bound >= 0 and math.isfinite(bound)):
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {bound!r}")
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
        if support not in SUPPORTS:
            raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.levels = levels
        self.seed_count = seed_channels(levels)
        self.support = support
        self.padding_mode = padding_mode
        self.seed_bound = seed_bound or None
        self.logit_bound = logit_bound or None
        self.space = space
        self.transfer = transfer
        # Both branches see cat(I_hat, I_B): 6 channels.
        self.kernel_net = TwoScaleResNet(6, self.seed_count, width, residual_blocks) if predict_seeds else None
        self.weight_net = TwoScaleResNet(6, levels, width, residual_blocks) if predict_weights else None
        he_initialize(self)

    @property
    def predict_seeds(self) -> bool:
        return self.kernel_net is not None

    @property
    def predict_weights(self) -> bool:
        return self.weight_net is not None

    def parameter_groups(self, lr: float, kernel_lr_scale: float = 1.0) -> list[dict]:
        """Adam parameter groups: one at ``lr``, or, when ``kernel_lr_scale != 1``, R_kpn (the
        seeds' branch) at ``lr * kernel_lr_scale`` and the rest at ``lr``.

        Why a slower R_kpn can be asked for: at 3e-4 the seeds of about one run in three run into
        their bound (mean |seed| 4.5-5.3 of 6) and the kernels stop carrying the blur. With R_kpn at
        a tenth of the rate the seeds stay near 1.2-1.6, but R still failed in one run of three
        (``benchmarks/RESULTS.md``, "Why R's result depends on the run"): so the default is 1."""
        if kernel_lr_scale == 1.0 or self.kernel_net is None:
            return [{"params": list(self.parameters()), "lr": lr}]
        kernel = list(self.kernel_net.parameters())
        kernel_ids = {id(parameter) for parameter in kernel}
        rest = [parameter for parameter in self.parameters() if id(parameter) not in kernel_ids]
        return [{"params": rest, "lr": lr}, {"params": kernel, "lr": lr * kernel_lr_scale}]

    def forward(self, sharp_est: torch.Tensor, blurry: torch.Tensor) -> ReblurOutput:
        seeds, weights, level_logits = self.predict(sharp_est, blurry)
        return ReblurOutput(self.blur(sharp_est, seeds, weights), seeds, weights, level_logits)

    def predict(
        self, sharp_est: torch.Tensor, blurry: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """R's blur model for the pair, without applying it: ``(seeds (B, S(m), H, W), weights (B,
        m, H, W), level_logits (B, m, H, W) or None without R_wpn)``; ``forward`` is ``blur`` of
        these."""
        if sharp_est.dim() != 4 or sharp_est.shape[1] != 3 or blurry.shape != sharp_est.shape:
            raise ValueError(
                f"sharp_est and blurry must both be (B, 3, H, W) of one size, got {tuple(sharp_est.shape)} "
                f"and {tuple(blurry.shape)}"
            )
        batch, _, height, width = sharp_est.shape
        both = torch.cat([sharp_est, blurry], dim=1)
        if self.kernel_net is not None:
            seeds = self.kernel_net(both)
            if self.seed_bound is not None:
                seeds = self.seed_bound * torch.tanh(seeds / self.seed_bound)
        else:
            seeds = sharp_est.new_zeros(batch, self.seed_count, height, width)
        level_logits = None
        if self.weight_net is not None:
            level_logits = self.weight_net(both)
            if self.logit_bound is not None:
                level_logits = self.logit_bound * torch.tanh(level_logits / self.logit_bound)
            weights = torch.softmax(level_logits, dim=1)
        else:
            weights = sharp_est.new_full((batch, self.levels, height, width), 1.0 / self.levels)
        return seeds, weights, level_logits

    def blur(self, image: torch.Tensor, seeds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Eq. 11 with given ``seeds (B, S(m), H, W)`` and ``weights (B, m, H, W)``, in this net's
        colour space (``space``/``transfer``), its kernel support and padding."""
        # Imported here, not at the top, so that the deblurring networks (all that inference
        # needs) import without the compiled ops; training cannot run without them.
        import jdrl_ext

        if self.space == "linear":
            from jdrl.colorspace import linear_to_srgb, srgb_to_linear

            linear = jdrl_ext.reblur(
                srgb_to_linear(image, self.transfer), seeds, weights, support=self.support,
                padding_mode=self.padding_mode,
            )
            return linear_to_srgb(linear, self.transfer)
        return jdrl_ext.reblur(image, seeds, weights, support=self.support, padding_mode=self.padding_mode)
