"""Process-wide CPU settings that the commands choose and library calls leave to their caller:
flushing subnormal floats to zero and the number of CPU threads (torch and OpenCV)."""

from __future__ import annotations

import torch

from jdrl.errors import UsageError

__all__ = ["flush_denormals", "set_threads"]


def flush_denormals() -> None:
    """Flush subnormal floats to zero in this process (CPU), as the training commands do.

    Unbounded (``loss.seed_bound=0``), the reblurring net's kernel seeds grow to 1e3-1e4 within a
    few hundred steps at these learning rates and its softmaxes saturate; their ``exp`` then
    underflows into subnormal numbers, which x86 CPUs process many times slower. Bounded seeds
    keep the kernels' exponents above -2 * bound, but the weight softmax can still saturate.
    Measured on a saturated (unbounded) ReblurNet at 128 px, one thread: ``jdrl_ext.reblur``
    forward + backward 0.116 s without flushing, 0.046 s with it (0.042 s with unsaturated seeds);
    ReblurNet forward + backward 0.83 s vs 0.53 s. Values below ~1e-38 become 0, which changes no
    result that matters.
    """
    torch.set_flush_denormal(True)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and OpenCV (DIS flow); None leaves the defaults."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    import cv2

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
