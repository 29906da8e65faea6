"""The CUDA kernels, run on the CPU by the host emulation, against the CPU kernels.

No GPU runs in CI, so this is what checks the CUDA side there: ``torch.ops.jdrl_emulated.*``
(csrc/emulation/emulated_ops.cpp) compiles the very ``__global__`` functions that the .cu files
launch (the op folders' ``*_kernels.cuh``) with the host compiler, under
csrc/common/cuda_host_emulation.h, and launches them with the grid, block and shared memory the
CUDA launchers compute. The emulation runs a block's threads one at a time in a fixed order and
fills shared memory with NaN before each block, so a missing ``__syncthreads()`` or a wrong halo
load shows up here as a wrong value, every run.

Compared: every op's output and every gradient (its backward op on a random output gradient), on
odd and non-square sizes (1x1, and sizes that are not multiples of the 16x16 tile of reblur and
sv_conv), batch 2, channel counts on both sides of the channel chunk (reblur: 3, 4 in float64; sv_conv: 4), every radius 1..7 (7 is the
compile-time specialization of sv_conv and isotropic_kernels in float32, the others, and float64 at
every radius, their generic kernels; R = 9, 12 and 20 as well, and their 64-bit-offset kernels
through the test-only index64), m in {1, 2, 5, 8} (8 is reblur's compile-time specialization in
float32, the others, and float64 at every m, its generic kernels; m = 10 as well), both supports
and both paddings, float32 and float64, NaN and infinite inputs, channels_last inputs, empty
batches; reblur, sv_conv and isotropic_kernels also in float16 and bfloat16, against the CPU op in
float32.

Tolerances, relative to ``scale = max(1, max |expected|)``: float64 1e-10, float32 5e-5 (summation
order and the exponential differ: the CUDA kernels use exp2 on log2(e)-scaled logits).
"""

from __future__ import annotations

import pytest
import torch

import jdrl_ext

emulated = torch.ops.jdrl_emulated
cpu = torch.ops.jdrl_ext

TOLERANCE = {torch.float64: 1e-10, torch.float32: 5e-5}
DTYPES = [torch.float32, torch.float64]


def assert_scaled_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    actual = actual.to(torch.float64)
    expected = expected.to(torch.float64)
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, rtol=tol, atol=tol * scale, equal_nan=True, msg=lambda message: f"{what}: {message}"
    )


def assert_op_matches(
    name: str,
    inputs: list[torch.Tensor],
    args: tuple,
    grad_names: list[str],
    what: str,
    emulated_options: dict | None = None,
) -> None:
    """Forward op and backward op of ``name``: emulated CUDA kernels against the CPU kernels.

    ``emulated_options``: test-only keyword arguments of both emulated ops (flow_warp's index64).
    """
    options = emulated_options or {}
    dtype = inputs[0].dtype
    tol = TOLERANCE[dtype]
    expected = getattr(cpu, name)(*inputs, **forward_kwargs(name, args))
    got = getattr(emulated, name)(*inputs, **forward_kwargs(name, args), **options)
    assert_scaled_close(got, expected, tol, f"{name} {what} output")
    grad = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(expected.numel()))
    expected_grads = getattr(cpu, f"_{name}_backward")(grad, *inputs, *args)
    got_grads = getattr(emulated, f"_{name}_backward")(grad, *inputs, *args, **options)
    if isinstance(expected_grads, torch.Tensor):
        expected_grads, got_grads = (expected_grads,), (got_grads,)
    assert len(got_grads) == len(grad_names)
    for grad_name, got_grad, expected_grad in zip(grad_names, got_grads, expected_grads):
        assert_scaled_close(got_grad, expected_grad, tol, f"{name} {what} {grad_name}")


def forward_kwargs(name: str, args: tuple) -> dict:
    if name == "reblur":
        return {"support": args[0], "padding_mode": args[1]}
    if name == "isotropic_kernels":
        return {"support": args[0]}
    return {"padding_mode": args[0]}


def reblur_inputs(batch, channels, height, width, levels, dtype, generator):
    image = torch.rand(batch, channels, height, width, dtype=dtype, generator=generator)
    seeds = 2 * torch.randn(batch, jdrl_ext.seed_channels(levels), height, width, dtype=dtype, generator=generator)
    weights = torch.softmax(torch.randn(batch, levels, height, width, dtype=dtype, generator=generator), dim=1)
    return [image, seeds, weights]


# (channels, (height, width)): 1x1, one partial tile, several tiles with partial edges; channel counts
# 1, 4 (one full chunk of 4: sv_conv, reblur in float64; reblur in float32: a chunk of 3 and 1), 5 (a
# chunk and a partial one) and 9 (reblur in float32: three full chunks); reblur's tests add 3
# channels (REBLUR_SHAPES).
SHAPES = [(4, (1, 1)), (5, (5, 3)), (1, (17, 33)), (9, (7, 18))]
REBLUR_SHAPES = SHAPES + [(3, (16, 19))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("support", ["window", "disk"])
@pytest.mark.parametrize("padding_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("levels", [1, 2, 5, 8])
def test_reblur_emulated_matches_cpu(dtype, support, padding_mode, levels):
    generator = torch.Generator().manual_seed(levels)
    for channels, shape in REBLUR_SHAPES:
        inputs = reblur_inputs(2, channels, *shape, levels, dtype, generator)
        assert_op_matches(
            "reblur",
            inputs,
            (support, padding_mode),
            ["grad image", "grad seeds", "grad weights"],
            f"m {levels} C {channels} size {shape} {dtype}",
        )


@pytest.mark.parametrize("max_shared_bytes", [40 * 1024, 48 * 1024])
def test_reblur_emulated_m8_on_a_device_with_less_shared_memory(max_shared_bytes):
    """m = 8 in float32 needs up to 47,664 bytes of shared memory per block for its specialized kernels
    (36,864 of slots, a tile of 30 x 30 for up to 3 channels): with 40 KiB allowed the launcher takes
    the generic kernels for 9 channels (with one channel, 40,464 bytes, the specialized ones), with
    48 KiB the specialized ones; both match the CPU op."""
    generator = torch.Generator().manual_seed(8)
    for channels, shape in SHAPES[2:]:
        inputs = reblur_inputs(2, channels, *shape, 8, torch.float32, generator)
        assert_op_matches(
            "reblur",
            inputs,
            ("window", "replicate"),
            ["grad image", "grad seeds", "grad weights"],
            f"m 8 C {channels} size {shape}, {max_shared_bytes} B of shared memory",
            emulated_options={"max_shared_bytes": max_shared_bytes},
        )


@pytest.mark.parametrize("levels", [5, 8])
def test_reblur_emulated_batch_cut_into_launches(levels):
    """A batch whose tensors do not fit 32-bit indices runs in several launches of the 32-bit kernels,
    each on its own items (on CUDA, from 2^31 elements: 8 x 35 x 2160 x 4096 seeds). A smaller test-only
    index limit makes that happen here: 2 items per launch (launches of 2, 2, 1 items), and a limit under
    one item, which sends m = 8 to the generic 64-bit kernels in one launch. Both match the CPU op."""
    generator = torch.Generator().manual_seed(levels)
    channels, (height, width) = 9, (7, 18)
    inputs = reblur_inputs(5, channels, height, width, levels, torch.float32, generator)
    # the most elements one item of a tensor the kernels index has: the per-pixel planes of the
    # orbit weights or the generic scratch, m(m+1)/2 + m, are the most here
    item = max(channels, jdrl_ext.seed_channels(levels), levels * (levels + 1) // 2 + levels) * height * width
    for index_limit, launches in [(2 * item + 1, "launches of 2, 2, 1 items"), (item, "one generic launch")]:
        assert_op_matches(
            "reblur",
            inputs,
            ("window", "replicate"),
            ["grad image", "grad seeds", "grad weights"],
            f"m {levels}, batch 5, {launches}",
            emulated_options={"index_limit": index_limit},
        )


@pytest.mark.parametrize("levels", [5, 8])
@pytest.mark.parametrize("padding_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reblur_emulated_interior_tile(dtype, padding_mode, levels):
    """40 x 41 has one tile whose pixels' neighbours all lie in the image (rows and columns 16-31 with
    their halo of R <= 7): the image gradient's unchecked gather runs there, and the checked one in
    the eight tiles around it. m = 8 in float32 is the specialized kernel, the others the generic."""
    generator = torch.Generator().manual_seed(levels * 10 + (padding_mode == "zeros"))
    inputs = reblur_inputs(2, 5, 40, 41, levels, dtype, generator)
    assert_op_matches("reblur", inputs, ("window", padding_mode), ["grad image", "grad seeds", "grad weights"],
                      f"m {levels} size 40 x 41 {padding_mode} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(35, 50), (1, 40), (40, 1)], ids=["inner-tiles", "1xN", "Nx1"])
def test_reblur_emulated_border_folding(dtype, shape):
    """m = 8, replicate padding: the image gradient's border blocks share the padded positions folded
    onto their pixels. 35 x 50 has tiles on no border, on one, and on two at a corner; 1 x 40 and
    40 x 1 have blocks on two opposite borders (every pixel on both)."""
    generator = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    inputs = reblur_inputs(1, 3, *shape, 8, dtype, generator)
    assert_op_matches("reblur", inputs, ("disk", "replicate"), ["grad image", "grad seeds", "grad weights"],
                      f"m 8 size {shape} {dtype}")


def test_reblur_emulated_index_limit_is_checked():
    inputs = reblur_inputs(1, 1, 2, 2, 2, torch.float32, torch.Generator().manual_seed(0))
    for bad in (0, 2**31):
        with pytest.raises(ValueError, match="index_limit"):
            emulated.reblur(*inputs, index_limit=bad)


@pytest.mark.parametrize("support", ["window", "disk"])
@pytest.mark.parametrize("levels", [5, 8])
def test_reblur_emulated_large_seeds(support, levels):
    """Seeds of +-100s, float32. m = 8, the specialized kernels: each level's logits are shifted by the
    largest seed (and 0 for the window's corners) instead of the largest orbit logit; a shift that
    missed a seed would overflow exp2 here (logits up to ~600 in log2 units), the level's sum would be
    inf and its kernel 0, and the outputs and gradients would differ from the CPU's. m = 5, the
    generic kernels, which keep the pass over the orbits, for comparison."""
    generator = torch.Generator().manual_seed(100 + levels)
    image, seeds, weights = reblur_inputs(2, 3, 18, 17, levels, torch.float32, generator)
    seeds = 50 * seeds
    # the CPU op, the reference, is finite on these seeds
    assert torch.isfinite(torch.ops.jdrl_ext.reblur(image, seeds, weights, support=support)).all()
    assert_op_matches(
        "reblur", [image, seeds, weights], (support, "replicate"), ["grad image", "grad seeds", "grad weights"],
        f"m {levels} seeds x50",
    )


def test_reblur_emulated_large_radius_and_specials():
    """m = 10 (generic kernels, 34x34 tile), 3 tiles per row; NaN and infinite seeds and weights propagate as
    on the CPU; channels_last inputs; an empty batch."""
    generator = torch.Generator().manual_seed(10)
    inputs = reblur_inputs(1, 3, 9, 40, 10, torch.float64, generator)
    assert_op_matches("reblur", inputs, ("disk", "replicate"), ["grad image", "grad seeds", "grad weights"], "m 10")
    for levels in (8, 5):
        image, seeds, weights = reblur_inputs(2, 3, 18, 17, levels, torch.float32, generator)
        seeds[0, -1, 3, 4] = float("nan")
        seeds[1, 0, 10, 9] = float("inf")
        weights[0, 0, 15, 15] = float("nan")
        image[1, 2, 0, 0] = float("inf")
        assert_op_matches(
            "reblur",
            [image, seeds.contiguous(memory_format=torch.channels_last), weights],
            ("window", "zeros"),
            ["grad image", "grad seeds", "grad weights"],
            f"m {levels} with NaN and inf",
        )
    empty = reblur_inputs(0, 3, 5, 4, 8, torch.float32, generator)
    assert emulated.reblur(*empty).shape == (0, 3, 5, 4)


def sv_conv_inputs(batch, channels, height, width, radius, dtype, generator):
    taps = (2 * radius + 1) ** 2
    image = torch.rand(batch, channels, height, width, dtype=dtype, generator=generator)
    kernels = torch.randn(batch, taps, height, width, dtype=dtype, generator=generator)
    return [image, kernels]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("radius", range(1, 8))
def test_sv_conv_emulated_matches_cpu(dtype, padding_mode, radius):
    """R = 7 takes the compile-time specialization (32-bit offsets), the other radii the generic
    kernels with 32-bit offsets."""
    generator = torch.Generator().manual_seed(radius)
    for channels, shape in SHAPES:
        inputs = sv_conv_inputs(2, channels, *shape, radius, dtype, generator)
        assert_op_matches(
            "sv_conv", inputs, (padding_mode,), ["grad image", "grad kernels"], f"R {radius} C {channels} {shape}"
        )


@pytest.mark.parametrize("padding_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("radius", [2, 7])
def test_sv_conv_emulated_int64_kernels_match_cpu(padding_mode, radius):
    """The generic kernels with 64-bit offsets (what a batch item of over 2^31 - 1 elements takes; forced
    here by the test-only index64), also at R = 7."""
    generator = torch.Generator().manual_seed(64 + radius)
    for channels, shape in SHAPES:
        inputs = sv_conv_inputs(2, channels, *shape, radius, torch.float64, generator)
        assert_op_matches(
            "sv_conv",
            inputs,
            (padding_mode,),
            ["grad image", "grad kernels"],
            f"R {radius} C {channels} {shape} index64",
            {"index64": True},
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", [3, 7])
@pytest.mark.parametrize("shape", [(35, 50), (1, 40), (40, 1)], ids=["inner-tiles", "1xN", "Nx1"])
def test_sv_conv_emulated_border_folding(dtype, radius, shape):
    """Replicate padding: the image gradient's border blocks share the padded positions folded onto
    their pixels (as reblur's); tiles on no border, one, two at a corner, and on opposite borders."""
    generator = torch.Generator().manual_seed(radius * 1000 + shape[0] * 100 + shape[1])
    inputs = sv_conv_inputs(1, 3, *shape, radius, dtype, generator)
    assert_op_matches("sv_conv", inputs, ("replicate",), ["grad image", "grad kernels"], f"R {radius} {shape} {dtype}")


def test_sv_conv_emulated_large_radius_and_specials():
    """R = 20 in float64: a 56x56 tile of 25 KB a channel, so one channel per tile (the kernel gradient
    reads the other channels from global memory); R = 9 over several tiles; NaN and infinite inputs
    propagate as on the CPU; channels_last inputs; an empty batch; a tile over the device's shared
    memory is an error."""
    generator = torch.Generator().manual_seed(20)
    for radius, shape in ((20, (9, 21)), (9, (40, 35))):
        inputs = sv_conv_inputs(2, 3, *shape, radius, torch.float64, generator)
        for padding_mode in ("replicate", "zeros"):
            assert_op_matches("sv_conv", inputs, (padding_mode,), ["grad image", "grad kernels"], f"R {radius} {shape}")
    for radius in (7, 3):
        image, kernels = sv_conv_inputs(2, 5, 18, 17, radius, torch.float32, generator)
        image[0, 1, 0, 0] = float("nan")
        image[1, 4, 9, 16] = float("inf")
        kernels[0, 3, 17, 5] = float("nan")
        kernels[1, 0, 2, 2] = float("-inf")
        for padding_mode in ("replicate", "zeros"):
            assert_op_matches(
                "sv_conv",
                [image.contiguous(memory_format=torch.channels_last), kernels],
                (padding_mode,),
                ["grad image", "grad kernels"],
                f"R {radius} with NaN and inf, {padding_mode}",
            )
    empty = sv_conv_inputs(0, 3, 5, 4, 7, torch.float32, generator)
    assert emulated.sv_conv(*empty).shape == (0, 3, 5, 4)
    grads = emulated._sv_conv_backward(torch.zeros(0, 3, 5, 4), *empty, "zeros")
    assert [tuple(g.shape) for g in grads] == [(0, 3, 5, 4), (0, 225, 5, 4)]
    with pytest.raises(ValueError, match="K = 15 need an image tile of 30 x 30"):
        emulated.sv_conv(*sv_conv_inputs(1, 3, 4, 4, 7, torch.float32, generator), max_shared_bytes=2048)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("support", ["window", "disk"])
@pytest.mark.parametrize("index64", [False, True], ids=["int32", "int64"])
def test_isotropic_kernels_emulated_matches_cpu(dtype, support, index64):
    """int32: R = 7 takes the compile-time specialization, the other radii the generic kernels;
    int64: the generic kernels with 64-bit offsets at every radius (forced by the test-only index64)."""
    generator = torch.Generator().manual_seed(7)
    for radius in range(1, 8):
        for _, shape in SHAPES:
            seeds = 3 * torch.randn(2, radius + 1, *shape, dtype=dtype, generator=generator)
            assert_op_matches(
                "isotropic_kernels",
                [seeds],
                (support,),
                ["grad seeds"],
                f"R {radius} {shape} index64 {index64}",
                {"index64": index64},
            )


def test_isotropic_kernels_emulated_large_radius_and_specials():
    """R = 12 (generic kernels); NaN and infinite seeds propagate as on the CPU (a NaN pixel's disk
    corners are NaN too); channels_last seeds; an empty batch."""
    generator = torch.Generator().manual_seed(12)
    seeds = 3 * torch.randn(2, 13, 6, 5, dtype=torch.float64, generator=generator)
    for support in ("window", "disk"):
        assert_op_matches("isotropic_kernels", [seeds], (support,), ["grad seeds"], f"R 12 {support}")
    for radius in (7, 4):
        seeds = 3 * torch.randn(2, radius + 1, 9, 7, generator=generator)
        seeds[0, 0, 1, 1] = float("nan")
        seeds[0, radius, 2, 3] = float("inf")
        seeds[1, 1, 4, 4] = float("-inf")
        seeds[1, :, 5, 5] = float("-inf")
        for support in ("window", "disk"):
            assert_op_matches(
                "isotropic_kernels",
                [seeds.contiguous(memory_format=torch.channels_last)],
                (support,),
                ["grad seeds"],
                f"R {radius} with NaN and inf, {support}",
            )
    empty = torch.zeros(0, 8, 5, 4)
    assert emulated.isotropic_kernels(empty).shape == (0, 225, 5, 4)
    assert emulated._isotropic_kernels_backward(torch.zeros(0, 225, 5, 4), empty, "window").shape == (0, 8, 5, 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("index64", [False, True], ids=["int32", "int64"])
def test_flow_warp_emulated_matches_cpu(dtype, padding_mode, index64):
    """Both index widths: int32 (what these sizes take) and the int64 kernels of large tensors (forced)."""
    generator = torch.Generator().manual_seed(4)
    for channels, shape in SHAPES:
        image = torch.rand(2, channels, *shape, dtype=dtype, generator=generator)
        flow = 3 * torch.randn(2, 2, *shape, dtype=dtype, generator=generator)
        flow[:, :, ::3] *= 10  # some samples far outside the image
        flow[:, :, 1::5] = flow[:, :, 1::5].round()  # some samples exactly on pixels
        flow[0, 0, 0, 0] = float("nan")
        assert_op_matches(
            "flow_warp",
            [image, flow],
            (padding_mode,),
            ["grad image", "grad flow"],
            f"C {channels} {shape} index64 {index64}",
            {"index64": index64},
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("levels", [5, 8])
def test_reblur_emulated_half_precision_matches_cpu_float32(dtype, levels):
    """float16/bfloat16 reblur (the m = 8 specialization and the generic kernels, accumulating in
    float32 as on CUDA) against the CPU op in float32 on the same rounded inputs: what differs is
    the rounding of each output and gradient to dtype (2^-11 for float16, 2^-8 for bfloat16,
    relative), so the tolerance is a few of those."""
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype]  # measured: up to 4.2e-4 and 3.3e-3
    generator = torch.Generator().manual_seed(100 + levels)
    for (channels, shape), support, padding_mode in [
        ((5, (5, 3)), "window", "replicate"),
        ((9, (17, 18)), "disk", "zeros"),
    ]:
        inputs = [t.to(dtype) for t in reblur_inputs(2, channels, *shape, levels, torch.float32, generator)]
        grad = torch.randn(2, channels, *shape, generator=generator).to(dtype)
        args = (support, padding_mode)
        what = f"m {levels} C {channels} size {shape} {dtype} {support} {padding_mode}"
        expected = cpu.reblur(*[t.float() for t in inputs], support=support, padding_mode=padding_mode)
        got = emulated.reblur(*inputs, support=support, padding_mode=padding_mode)
        assert got.dtype == dtype
        assert_scaled_close(got.float(), expected, tol, f"reblur {what} output")
        expected_grads = cpu._reblur_backward(grad.float(), *[t.float() for t in inputs], *args)
        got_grads = emulated._reblur_backward(grad, *inputs, *args)
        for name, got_grad, expected_grad in zip(["grad image", "grad seeds", "grad weights"], got_grads, expected_grads):
            assert got_grad.dtype == dtype, f"{what} {name}: dtype {got_grad.dtype}"
            assert_scaled_close(got_grad.float(), expected_grad, tol, f"reblur {what} {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("radius", [3, 7])
def test_sv_conv_and_isotropic_kernels_emulated_half_precision_match_cpu_float32(dtype, radius):
    """float16/bfloat16 sv_conv and isotropic_kernels (R = 7: the specializations; R = 3: the generic
    kernels), accumulating in float32 as on CUDA, against the CPU ops in float32 on the same rounded
    inputs; the tolerance is a few roundings to dtype, as for reblur."""
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype]
    generator = torch.Generator().manual_seed(200 + radius)
    what = f"R {radius} {dtype}"
    image, kernels = [t.to(dtype) for t in sv_conv_inputs(2, 5, 17, 18, radius, torch.float32, generator)]
    kernels = kernels / (2 * radius + 1)  # outputs of order 1
    grad = torch.randn(image.shape, generator=generator).to(dtype)
    for padding_mode in ("replicate", "zeros"):
        expected = cpu.sv_conv(image.float(), kernels.float(), padding_mode=padding_mode)
        got = emulated.sv_conv(image, kernels, padding_mode=padding_mode)
        assert got.dtype == dtype
        assert_scaled_close(got.float(), expected, tol, f"sv_conv {what} {padding_mode} output")
        expected_grads = cpu._sv_conv_backward(grad.float(), image.float(), kernels.float(), padding_mode)
        got_grads = emulated._sv_conv_backward(grad, image, kernels, padding_mode)
        for name, got_grad, expected_grad in zip(["grad image", "grad kernels"], got_grads, expected_grads):
            assert got_grad.dtype == dtype, f"sv_conv {what} {name}: dtype {got_grad.dtype}"
            assert_scaled_close(got_grad.float(), expected_grad, tol, f"sv_conv {what} {padding_mode} {name}")
    seeds = (3 * torch.randn(2, radius + 1, 5, 19, generator=generator)).to(dtype)
    taps = (2 * radius + 1) ** 2
    grad = torch.randn(2, taps, 5, 19, generator=generator).to(dtype)
    for support in ("window", "disk"):
        expected = cpu.isotropic_kernels(seeds.float(), support=support)
        got = emulated.isotropic_kernels(seeds, support=support)
        assert got.dtype == dtype
        assert_scaled_close(got.float(), expected, tol, f"isotropic_kernels {what} {support} output")
        expected_grad = cpu._isotropic_kernels_backward(grad.float(), seeds.float(), support)
        got_grad = emulated._isotropic_kernels_backward(grad, seeds, support)
        assert got_grad.dtype == dtype
        assert_scaled_close(got_grad.float(), expected_grad, tol, f"isotropic_kernels {what} {support} grad seeds")
