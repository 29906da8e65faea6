"""Process-wide CPU settings that the commands choose and library calls leave to their caller:
flushing subnormal floats to zero, the number of CPU threads (torch and OpenCV), and keeping freed
memory for reuse."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

from jdrl.errors import UsageError

__all__ = ["flush_denormals", "keep_freed_memory", "set_threads"]


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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the system.

    A network's activations for one tile are tens of MB each. glibc serves blocks above 32 MB
    (its largest mmap threshold) with a fresh ``mmap`` and unmaps them on free, so every tile
    faulted in its buffers anew: tiled inference of a 4096x2160 photo spent 81 of its 210
    CPU-seconds in the kernel on 39 million page faults (issue 11). With no mmap'd blocks and no
    trimming, the second tile reuses the first one's pages. The peak memory is unchanged (the
    heap holds what the largest tile needed). Returns False where this is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
