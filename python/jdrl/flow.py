"""Optical-flow estimators for the deformation-tolerant losses (paper Eq. 4, SPEC section 7).

Convention, shared by every estimator: ``estimator(reference, moving) -> flow (B, 2, H, W)`` in
pixels, channel 0 = x (right), channel 1 = y (down), such that ``moving(p + flow(p)) ~
reference(p)``; so ``jdrl_ext.flow_warp(moving, flow)`` aligns ``moving`` onto ``reference``.
Estimators are fixed tools, never trained: they run without gradients and their flow carries none.

Two backends:

- :class:`DISFlow` (the default): OpenCV's Dense Inverse Search, on the CPU, no weights needed.
- :class:`TorchScriptFlow`: any learned flow network the user exported to TorchScript as a module
  ``(reference, moving) -> flow`` in the convention above, loaded from a local file. Nothing is
  ever downloaded.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["FLOW_BACKENDS", "DISFlow", "FlowEstimator", "TorchScriptFlow", "build_flow_estimator"]

FLOW_BACKENDS = ("dis", "torchscript")

# ITU-R BT.601 luma: what cv2.cvtColor(RGB2GRAY) uses.
_LUMA = (0.299, 0.587, 0.114)


@runtime_checkable
class FlowEstimator(Protocol):
    """``__call__(reference (B, C, H, W), moving (B, C, H, W)) -> flow (B, 2, H, W)``, no gradients.

    ``flow`` is in pixels (channel 0 = x, 1 = y), on the inputs' device and dtype, with
    ``moving(p + flow(p)) ~ reference(p)``.
    """

    def __call__(self, reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor: ...


def _check_pair(reference: torch.Tensor, moving: torch.Tensor) -> None:
    if reference.dim() != 4 or moving.dim() != 4 or reference.shape != moving.shape:
        raise ValueError(
            f"reference and moving must be (B, C, H, W) of one shape, got {tuple(reference.shape)} and {tuple(moving.shape)}"
        )
    if reference.shape[1] not in (1, 3):
        raise ValueError(f"reference and moving must have 1 or 3 channels, got {reference.shape[1]}")


def _to_gray_uint8(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1], C = 1 or 3 -> ``(H, W)`` uint8 luma (values outside [0, 1] clipped)."""
    image = image.detach().to(device="cpu", dtype=torch.float32)
    if image.shape[0] == 3:
        luma = torch.tensor(_LUMA).view(3, 1, 1)
        image = (image * luma).sum(dim=0)
    else:
        image = image[0]
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


class DISFlow:
    """OpenCV's Dense Inverse Search optical flow (Kroeger et al., ECCV 2016).

    Each batch item is converted to 8-bit luma (inputs are expected in [0, 1]; values outside are
    clipped) and its flow computed on the CPU; the result comes back on the inputs' device and
    dtype.

    Args:
        preset: "ultrafast", "fast" or "medium" (OpenCV's DISOPTICAL_FLOW_PRESET_*); "medium" is
            the most accurate.
    """

    PRESETS = ("ultrafast", "fast", "medium")

    def __init__(self, preset: str = "medium") -> None:
        import cv2

        if preset not in self.PRESETS:
            raise ValueError(f"preset must be one of {', '.join(repr(p) for p in self.PRESETS)}, got {preset!r}")
        self.preset = preset
        code = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }[preset]
        self._dis = cv2.DISOpticalFlow_create(code)

    def __repr__(self) -> str:
        return f"DISFlow(preset={self.preset!r})"

    @torch.no_grad()
    def __call__(self, reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        _check_pair(reference, moving)
        batch, _, height, width = reference.shape
        flows = []
        for index in range(batch):
            # cv2's calc(prev, next) gives prev(p) ~ next(p + flow(p)): prev is our reference.
            flow = self._dis.calc(_to_gray_uint8(reference[index]), _to_gray_uint8(moving[index]), None)
            flows.append(torch.from_numpy(flow).permute(2, 0, 1))  # (H, W, 2) -> (2, H, W), x first
        if not flows:
            return reference.new_zeros(0, 2, height, width)
        return torch.stack(flows).to(device=reference.device, dtype=reference.dtype)


class TorchScriptFlow:
    """A learned flow network from a local TorchScript file, frozen.

    The file must hold a scripted or traced module with ``forward(reference (B, C, H, W), moving
    (B, C, H, W)) -> flow (B, 2, H, W)`` in this module's convention, for images in [0, 1] (wrap a
    network with other conventions, e.g. RAFT's [0, 255] inputs and 8-divisible sizes, in a small
    module before exporting it). The module is put in eval mode, its parameters stop requiring
    gradients and it runs under ``torch.no_grad``; it is moved to the inputs' device on first use
    there.

    Args:
        path: the ``.pt`` file. A missing or unloadable file is an error naming it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"flow weights: no TorchScript file at {self.path!r}")
        try:
            module = torch.jit.load(self.path, map_location="cpu")
        except Exception as error:  # torch raises RuntimeError or ValueError depending on the damage
            raise RuntimeError(
                f"flow weights: could not load {self.path!r} as a TorchScript module: {error}"
            ) from error
        module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        self._module = module
        self._device = torch.device("cpu")

    def __repr__(self) -> str:
        return f"TorchScriptFlow(path={self.path!r})"

    @torch.no_grad()
    def __call__(self, reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        _check_pair(reference, moving)
        if reference.device != self._device:
            self._module = self._module.to(reference.device)
            self._device = reference.device
        flow = self._module(reference, moving)
        expected = (reference.shape[0], 2, *reference.shape[-2:])
        if not isinstance(flow, torch.Tensor) or tuple(flow.shape) != expected:
            seen = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
            raise ValueError(f"the flow model {self.path!r} returned {seen}, expected a tensor of shape {expected}")
        return flow.to(dtype=reference.dtype)


def build_flow_estimator(backend: str = "dis", weights: str | os.PathLike | None = None) -> FlowEstimator:
    """The flow estimator named by ``backend``: "dis" (:class:`DISFlow`, no ``weights``) or
    "torchscript" (:class:`TorchScriptFlow` loaded from the local file ``weights``)."""
    if backend == "dis":
        if weights is not None:
            raise ValueError(f"backend 'dis' takes no weights, got weights={os.fspath(weights)!r}")
        return DISFlow()
    if backend == "torchscript":
        if weights is None:
            raise ValueError("backend 'torchscript' needs weights: the path of a local TorchScript flow model")
        return TorchScriptFlow(weights)
    raise ValueError(f"backend must be one of {', '.join(repr(b) for b in FLOW_BACKENDS)}, got {backend!r}")
