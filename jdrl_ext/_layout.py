"""Seed layout of SPEC section 1 and the checks shared by the fast ops and the reference."""

from __future__ import annotations

import torch

SUPPORTS = ("window", "disk")
PADDING_MODES_CONV = ("replicate", "zeros")
PADDING_MODES_WARP = ("border", "zeros")


def check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")


def seed_channels(levels: int) -> int:
    """``S(m) = (m - 1)(m + 2) / 2``: seed channels of levels ``r = 1 .. m-1`` (35 for ``m = 8``)."""
    if levels < 1:
        raise ValueError(f"the number of levels m must be at least 1, got {levels}")
    return (levels - 1) * (levels + 2) // 2


def level_slice(radius: int) -> slice:
    """Channels of the seeds of level ``radius`` (``radius + 1`` of them) in the packed layout."""
    start = (radius - 1) * (radius + 2) // 2
    return slice(start, start + radius + 1)


def levels_from_weights(seeds: torch.Tensor, weights: torch.Tensor) -> int:
    """``m`` read from ``weights (B, m, H, W)``; the seeds must have ``S(m)`` channels."""
    if weights.dim() != 4 or seeds.dim() != 4:
        raise ValueError(
            f"seeds and weights must be 4-D (B, C, H, W), got seeds {tuple(seeds.shape)} and weights {tuple(weights.shape)}"
        )
    levels = weights.shape[1]
    if levels < 1 or seeds.shape[1] != seed_channels(levels):
        expected = seed_channels(levels) if levels >= 1 else "none"
        raise ValueError(
            f"seeds has {seeds.shape[1]} channels but weights has m = {levels} levels, which need "
            f"S(m) = (m-1)(m+2)/2 = {expected} seed channels"
        )
    return levels
