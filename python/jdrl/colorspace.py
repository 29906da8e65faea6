"""sRGB <-> linear light, for reblurring in linear intensities (SPEC section 7 "Linear light").

Physical defocus mixes light, so a blur acts on linear intensities; images are stored
gamma-encoded. Two transfer functions:

- ``"srgb"``: the sRGB transfer function of IEC 61966-2-1 (a linear segment below 0.04045 /
  0.0031308, a 2.4 power above it), exactly invertible and with a finite slope at 0;
- ``"gamma2.2"``: a pure ``x^2.2`` power, what ``jdrl synth`` blurs with (``DISPLAY_GAMMA``).

Inputs are clamped to ``[0, 1]`` first (a deblurred estimate may overshoot), so the gradient is 0
where the clamp is active.
"""

from __future__ import annotations

import torch

__all__ = ["TRANSFERS", "GAMMA", "linear_to_srgb", "srgb_to_linear"]

TRANSFERS = ("srgb", "gamma2.2")
GAMMA = 2.2
# IEC 61966-2-1 constants.
_SRGB_THRESHOLD = 0.04045
_LINEAR_THRESHOLD = 0.0031308
_SLOPE = 12.92
_OFFSET = 0.055
_EXPONENT = 2.4
# x^(1/2.2) has an infinite slope at 0: below this linear value the inverse is the straight line
# through 0 that meets the power curve there (slope 1e-6^(1/2.2 - 1) ~ 1.9e3), as the sRGB curve
# has its linear toe. It changes encoded values below 1e-6^(1/2.2) = 0.0019 (half an 8-bit step).
_GAMMA_FLOOR = 1e-6


def _check(transfer: str) -> None:
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {list(TRANSFERS)}, got {transfer!r}")


def srgb_to_linear(image: torch.Tensor, transfer: str = "srgb") -> torch.Tensor:
    """Gamma-encoded values -> linear intensities, elementwise, after clamping to ``[0, 1]``."""
    _check(transfer)
    image = image.clamp(0.0, 1.0)
    if transfer == "gamma2.2":
        return image.pow(GAMMA)
    # torch.where evaluates both branches; the clamp keeps the power's base positive.
    curve = ((image.clamp_min(_SRGB_THRESHOLD) + _OFFSET) / (1.0 + _OFFSET)).pow(_EXPONENT)
    return torch.where(image <= _SRGB_THRESHOLD, image / _SLOPE, curve)


def linear_to_srgb(image: torch.Tensor, transfer: str = "srgb") -> torch.Tensor:
    """Linear intensities -> gamma-encoded values, elementwise, after clamping to ``[0, 1]``."""
    _check(transfer)
    image = image.clamp(0.0, 1.0)
    if transfer == "gamma2.2":
        toe_slope = _GAMMA_FLOOR ** (1.0 / GAMMA - 1.0)
        return torch.where(image <= _GAMMA_FLOOR, image * toe_slope, image.clamp_min(_GAMMA_FLOOR).pow(1.0 / GAMMA))
    curve = (1.0 + _OFFSET) * image.clamp_min(_LINEAR_THRESHOLD).pow(1.0 / _EXPONENT) - _OFFSET
    return torch.where(image <= _LINEAR_THRESHOLD, image * _SLOPE, curve)
