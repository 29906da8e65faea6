"""Small forward + backward calls of every op on CUDA, for compute-sanitizer (memcheck, racecheck).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python benchmarks/sanitize_ops.py

Sizes are odd and not multiples of any tile (a halo or border bug reads or writes out of bounds),
and 39 x 40, whose middle tile is reblur's interior case at m = 8 (its halo ends on the last row)
and at m = 3,
with reblur at m = 8 (the specialised case) and m = 3 (the generic one), sv_conv and
isotropic_kernels at radius 7 and 2, both paddings, float32 and float16. Without the caching
allocator (the environment variable above), every tensor is its own allocation, so memcheck sees
an access past a tensor's end instead of landing in a neighbouring block of the cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jdrl_ext  # noqa: E402


def forward_backward(function, *inputs: torch.Tensor, **options) -> None:
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = function(*leaves, **options)
    out.backward(torch.randn_like(out))


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitize_ops: no CUDA device", file=sys.stderr)
        return 2
    generator = torch.Generator(device="cuda").manual_seed(0)
    cases = 0
    for dtype in (torch.float32, torch.float16):
        for batch, channels, height, width in ((1, 3, 21, 37), (2, 5, 9, 4), (1, 3, 39, 40)):
            def rand(c: int, scale: float = 1.0) -> torch.Tensor:
                return (scale * torch.randn(batch, c, height, width, device="cuda", generator=generator)).to(dtype)

            image = rand(channels).abs()
            for levels in (8, 3):
                seeds = rand(jdrl_ext.seed_channels(levels), 2.0)
                weights = torch.softmax(rand(levels).float(), dim=1).to(dtype)
                for padding_mode in ("replicate", "zeros"):
                    forward_backward(jdrl_ext.reblur, image, seeds, weights, padding_mode=padding_mode)
                    cases += 1
            for radius in (7, 2):
                forward_backward(jdrl_ext.isotropic_kernels, rand(radius + 1), support="disk")
                kernels = torch.softmax(rand((2 * radius + 1) ** 2).float(), dim=1).to(dtype)
                forward_backward(jdrl_ext.sv_conv, image, kernels, padding_mode="zeros")
                cases += 2
            for padding_mode in ("border", "zeros"):
                forward_backward(jdrl_ext.flow_warp, image, rand(2, 3.0), padding_mode=padding_mode)
                cases += 1
    torch.cuda.synchronize()
    print(f"sanitize_ops: {cases} forward + backward cases ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
