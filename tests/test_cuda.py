"""The CUDA kernels of the four ops against the CPU kernels: values, every gradient, dtypes, registration.

Skipped where CUDA is not available. test_ops.py holds the CPU kernels to the pure-PyTorch
reference; here the CUDA kernels are held to the CPU kernels, which call the same per-pixel
functions (csrc/common/pixel_math.h), on random inputs of odd sizes, every radius 1..7, m in
{1, 2, 5, 8, 10}, both supports and both paddings, and channel counts on both sides of the CUDA
kernels' chunk of channels (reblur: 3, 4 in float64; sv_conv: 4).

Tolerances, relative to ``scale = max(1, max |expected|)`` (absolute ``tol * scale``, relative ``tol``):
- float64 CUDA vs CPU: 1e-10; float32 CUDA vs CPU: 5e-5 (summation order, FMA contraction, and
  the last bit of expf/sqrtf differ between the two).
- float16 / bfloat16 CUDA vs float32 CUDA on the same (rounded) inputs: 2e-3 / 1.6e-2, about four
  times the unit roundoff of the output dtype: the kernels accumulate in float32, so the only
  error left is the final rounding of each output (observed: 4e-4 / 2.3e-3).
"""

from __future__ import annotations

import pytest
import torch

import jdrl_ext

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

OPS = ["isotropic_kernels", "sv_conv", "reblur", "flow_warp"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
ODD_SIZES = [(1, 1), (5, 7), (9, 4), (3, 2), (13, 11)]


@pytest.fixture(autouse=True, scope="module")
def cuda_kernels_built():
    """A CPU-only build on a CUDA machine would fail every test with a dispatcher error; say why once."""
    missing = [
        name
        for op in OPS
        for name in (op, f"_{op}_backward")
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"jdrl_ext::{name}", "CUDA")
    ]
    if missing:
        pytest.fail(f"jdrl_ext was built without CUDA kernels ({', '.join(missing)}): rebuild with nvcc available")


# --- helpers ---------------------------------------------------------------------------------------------------


def assert_scaled_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.detach().to(device="cpu", dtype=torch.float64)
    expected = expected.detach().to(device="cpu", dtype=torch.float64)
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, rtol=tol, atol=tol * scale, equal_nan=True, msg=lambda message: f"{what}: {message}"
    )


def forward_backward(op, inputs, kwargs, grad_out):
    """The output and the gradient of every input for ``out.backward(grad_out)``."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = op(*leaves, **kwargs)
    out.backward(grad_out)
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]
    return [out.detach()] + grads


def assert_cuda_matches_cpu(op, inputs, kwargs, names, generator, what=""):
    """Forward and every gradient of ``op`` on CUDA against the CPU kernels, same inputs and grad."""
    dtype = inputs[0].dtype
    out_shape = op(*inputs, **kwargs).shape
    grad_out = torch.randn(out_shape, dtype=dtype, generator=generator)
    cpu = forward_backward(op, inputs, kwargs, grad_out)
    cuda = forward_backward(op, [t.cuda() for t in inputs], kwargs, grad_out.cuda())
    for name, got, expected in zip(["output"] + names, cuda, cpu):
        assert got.device.type == "cuda" and got.dtype == expected.dtype, f"{what} {name}: {got.device} {got.dtype}"
        assert_scaled_close(got, expected, TOLERANCE[dtype], f"{what} {name}")


def reblur_inputs(batch, channels, height, width, levels, dtype, generator, device="cpu"):
    image = torch.rand(batch, channels, height, width, dtype=dtype, generator=generator)
    seeds = 2 * torch.randn(batch, jdrl_ext.seed_channels(levels), height, width, dtype=dtype, generator=generator)
    weights = torch.softmax(torch.randn(batch, levels, height, width, dtype=dtype, generator=generator), dim=1)
    return [t.to(device) for t in (image, seeds, weights)]


def flow_inputs(batch, channels, height, width, dtype, generator, device="cpu"):
    image = torch.rand(batch, channels, height, width, dtype=dtype, generator=generator)
    flow = 3 * torch.randn(batch, 2, height, width, dtype=dtype, generator=generator)
    flow[:, :, ::3] *= 10  # some samples far outside the image
    flow[:, :, 1::5] = flow[:, :, 1::5].round()  # some samples exactly on pixels
    return [t.to(device) for t in (image, flow)]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- CPU vs CUDA parity: forward and every gradient --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("support", ["window", "disk"])
def test_isotropic_kernels_cuda_matches_cpu(dtype, support):
    generator = seeded(1)
    for radius in range(1, 8):
        for size in ODD_SIZES:
            seeds = 3 * torch.randn(2, radius + 1, *size, dtype=dtype, generator=generator)
            assert_cuda_matches_cpu(
                jdrl_ext.isotropic_kernels,
                [seeds],
                {"support": support},
                ["grad seeds"],
                generator,
                f"radius {radius} size {size}",
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("radius", range(1, 8))
def test_sv_conv_cuda_matches_cpu(dtype, padding_mode, radius):
    generator = seeded(2)
    size = 2 * radius + 1
    for channels, shape in ((3, (13, 11)), (1, (3, 2)), (5, (9, 4)), (9, (1, 1)), (4, (7, 16))):
        image = torch.rand(2, channels, *shape, dtype=dtype, generator=generator)
        kernels = torch.randn(2, size * size, *shape, dtype=dtype, generator=generator)  # applied as given
        assert_cuda_matches_cpu(
            jdrl_ext.sv_conv,
            [image, kernels],
            {"padding_mode": padding_mode},
            ["grad image", "grad kernels"],
            generator,
            f"C {channels} size {shape}",
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("support", ["window", "disk"])
@pytest.mark.parametrize("padding_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("levels", [1, 2, 5, 8, 10])
def test_reblur_cuda_matches_cpu(dtype, support, padding_mode, levels):
    generator = seeded(3)
    # 40 x 41: for m <= 9, a tile whose neighbours all lie in the image (the image gradient's unchecked gather)
    for channels, shape in ((3, (13, 11)), (1, (3, 2)), (6, (9, 4)), (3, (1, 1)), (5, (17, 20)), (3, (40, 41))):
        inputs = reblur_inputs(2, channels, *shape, levels, dtype, generator)
        assert_cuda_matches_cpu(
            jdrl_ext.reblur,
            inputs,
            {"support": support, "padding_mode": padding_mode},
            ["grad image", "grad seeds", "grad weights"],
            generator,
            f"C {channels} size {shape}",
        )


@pytest.mark.parametrize("support", ["window", "disk"])
def test_reblur_cuda_large_seeds_match_cpu(support):
    """Seeds of up to ~+-200 in float32, m = 8: the specialized kernels shift each level's logits by its
    largest seed and use ex2/lg2.approx.ftz, which the host emulation does not run. (x20, not the
    emulated test's x50: an ulp of a logit of ~800 is 6e-5, and FMA contraction moves the logits by
    that much against the CPU, near the float32 tolerance.)"""
    generator = seeded(31)
    image, seeds, weights = reblur_inputs(2, 3, 18, 17, 8, torch.float32, generator)
    assert_cuda_matches_cpu(
        jdrl_ext.reblur,
        [image, 20 * seeds, weights],
        {"support": support, "padding_mode": "replicate"},
        ["grad image", "grad seeds", "grad weights"],
        generator,
        "seeds x20",
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_flow_warp_cuda_matches_cpu(dtype, padding_mode):
    generator = seeded(4)
    for channels, shape in ((3, (13, 11)), (1, (3, 2)), (5, (9, 4)), (2, (1, 1)), (3, (16, 17))):
        inputs = flow_inputs(2, channels, *shape, dtype, generator)
        assert_cuda_matches_cpu(
            jdrl_ext.flow_warp,
            inputs,
            {"padding_mode": padding_mode},
            ["grad image", "grad flow"],
            generator,
            f"C {channels} size {shape}",
        )


def test_gradient_parity_at_512():
    """1x3x512x512, float32: every gradient of every op, CPU against CUDA."""
    generator = seeded(5)
    inputs = reblur_inputs(1, 3, 512, 512, 8, torch.float32, generator)
    assert_cuda_matches_cpu(
        jdrl_ext.reblur, inputs, {}, ["grad image", "grad seeds", "grad weights"], generator, "reblur 512"
    )
    seeds = inputs[1][:, jdrl_ext.level_slice(3)]
    assert_cuda_matches_cpu(jdrl_ext.isotropic_kernels, [seeds], {}, ["grad seeds"], generator, "isotropic 512")
    kernels = jdrl_ext.isotropic_kernels(seeds)
    assert_cuda_matches_cpu(
        jdrl_ext.sv_conv, [inputs[0], kernels], {}, ["grad image", "grad kernels"], generator, "sv_conv 512"
    )
    image, flow = flow_inputs(1, 3, 512, 512, torch.float32, generator)
    assert_cuda_matches_cpu(
        jdrl_ext.flow_warp, [image, flow], {}, ["grad image", "grad flow"], generator, "flow_warp 512"
    )


# --- float16 and bfloat16 against float32 ------------------------------------------------------------------------


def half_precision_cases(generator):
    """(name, op, inputs in float64 on CUDA, kwargs) for each op."""
    image, seeds, weights = reblur_inputs(2, 3, 21, 19, 8, torch.float64, generator, device="cuda")
    level_seeds = seeds[:, jdrl_ext.level_slice(4)]
    kernels = torch.rand(2, 49, 21, 19, dtype=torch.float64, generator=generator).cuda() / 49
    warp_image, flow = flow_inputs(2, 5, 21, 19, torch.float64, generator, device="cuda")
    return [
        ("isotropic_kernels", jdrl_ext.isotropic_kernels, [level_seeds], {"support": "disk"}),
        ("sv_conv", jdrl_ext.sv_conv, [image, kernels], {"padding_mode": "replicate"}),
        ("reblur", jdrl_ext.reblur, [image, seeds, weights], {"support": "window", "padding_mode": "zeros"}),
        ("reblur m5", jdrl_ext.reblur, reblur_inputs(1, 6, 9, 12, 5, torch.float64, generator, "cuda"), {}),
        ("flow_warp", jdrl_ext.flow_warp, [warp_image, flow], {"padding_mode": "border"}),
        ("flow_warp zeros", jdrl_ext.flow_warp, [warp_image, flow], {"padding_mode": "zeros"}),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(6))
def test_half_precision_matches_float32(dtype, case):
    generator = seeded(6)
    name, op, inputs, kwargs = half_precision_cases(generator)[case]
    rounded = [t.to(dtype) for t in inputs]  # both runs see exactly these values
    out_shape = op(*inputs, **kwargs).shape
    grad_out = torch.randn(out_shape, dtype=torch.float64, generator=generator).cuda().to(dtype)
    low = forward_backward(op, rounded, kwargs, grad_out)
    high = forward_backward(op, [t.float() for t in rounded], kwargs, grad_out.float())
    for index, (got, expected) in enumerate(zip(low, high)):
        what = f"{name} {dtype} " + ("output" if index == 0 else f"grad of input {index - 1}")
        assert got.dtype == dtype, what
        assert torch.isfinite(got).all(), what
        assert_scaled_close(got, expected, TOLERANCE[dtype], what)


# --- gradcheck in float64 on CUDA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("support", ["window", "disk"])
def test_isotropic_kernels_gradcheck_cuda(support):
    for radius in (1, 2, 3):
        seeds = torch.randn(1, radius + 1, 3, 4, dtype=torch.float64, device="cuda", requires_grad=True)
        assert torch.autograd.gradcheck(lambda s: jdrl_ext.isotropic_kernels(s, support=support), (seeds,))


@pytest.mark.parametrize("padding_mode", ["replicate", "zeros"])
def test_sv_conv_gradcheck_cuda(padding_mode):
    for kernel_size, size, channels in ((3, (4, 5), 2), (5, (3, 6), 5), (1, (2, 2), 1)):
        image = torch.rand(2, channels, *size, dtype=torch.float64, device="cuda", requires_grad=True)
        kernels = torch.randn(2, kernel_size**2, *size, dtype=torch.float64, device="cuda", requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda i, k: jdrl_ext.sv_conv(i, k, padding_mode=padding_mode), (image, kernels)
        )


@pytest.mark.parametrize("support", ["window", "disk"])
@pytest.mark.parametrize("padding_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("levels", [2, 3, 5])
def test_reblur_gradcheck_cuda(support, padding_mode, levels):
    inputs = [t.requires_grad_() for t in reblur_inputs(1, 2, 5, 6, levels, torch.float64, seeded(7), device="cuda")]
    assert torch.autograd.gradcheck(
        lambda i, s, w: jdrl_ext.reblur(i, s, w, support=support, padding_mode=padding_mode), inputs
    )


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_flow_warp_gradcheck_cuda(padding_mode):
    generator = seeded(8)
    image = torch.rand(2, 2, 5, 6, dtype=torch.float64, generator=generator).cuda().requires_grad_()
    # Random flows keep the sample points off integer coordinates, where bilinear has kinks.
    flow = (2.5 * torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=generator)).cuda().requires_grad_()
    # The image gradient is an atomicAdd scatter: its float64 rounding varies from run to run,
    # far below gradcheck's tolerance, but the reentrant check needs a tolerance above zero.
    assert torch.autograd.gradcheck(
        lambda i, f: jdrl_ext.flow_warp(i, f, padding_mode=padding_mode), (image, flow), nondet_tol=1e-12
    )


# --- registration: opcheck and torch.compile on CUDA inputs ------------------------------------------------------


def opcheck_samples():
    generator = seeded(9)
    image, seeds, weights = reblur_inputs(2, 3, 6, 5, 4, torch.float32, generator, device="cuda")
    level_seeds = torch.randn(2, 3, 6, 5, generator=generator).cuda()
    kernels = torch.rand(2, 9, 6, 5, generator=generator).cuda()
    flow = (2 * torch.randn(2, 2, 6, 5, generator=generator)).cuda()
    grad = torch.randn(2, 3, 6, 5, generator=generator).cuda()
    grad_kernels = torch.randn(2, 25, 6, 5, generator=generator).cuda()  # radius 2: 5 x 5 taps

    def grad_leaf(t):
        return t.clone().requires_grad_()

    ops = torch.ops.jdrl_ext
    return [
        (ops.isotropic_kernels.default, (grad_leaf(level_seeds),), {"support": "disk"}),
        (ops.isotropic_kernels.default, (level_seeds,), {}),
        (ops.sv_conv.default, (grad_leaf(image), grad_leaf(kernels)), {"padding_mode": "zeros"}),
        (
            ops.reblur.default,
            (grad_leaf(image), grad_leaf(seeds), grad_leaf(weights)),
            {"support": "disk", "padding_mode": "zeros"},
        ),
        (ops.reblur.default, (image.half(), seeds.half(), weights.half()), {}),
        (ops.flow_warp.default, (grad_leaf(image), grad_leaf(flow)), {"padding_mode": "zeros"}),
        (ops.flow_warp.default, (image.bfloat16(), flow.bfloat16()), {}),
        (ops._isotropic_kernels_backward.default, (grad_kernels, level_seeds, "window"), {}),
        (ops._sv_conv_backward.default, (grad, image, kernels, "replicate"), {}),
        (ops._reblur_backward.default, (grad, image, seeds, weights, "window", "zeros"), {}),
        (
            ops._reblur_backward.default,
            (grad.half(), image.half(), seeds.half(), weights.half(), "disk", "replicate"),
            {},
        ),
        (ops._flow_warp_backward.default, (grad, image, flow, "border"), {}),
    ]


@pytest.mark.parametrize("index", range(12))
def test_opcheck_cuda(index):
    op, args, kwargs = opcheck_samples()[index]
    torch.library.opcheck(op, args, kwargs)


def pipeline(image, seeds, weights, flow):
    warped = jdrl_ext.flow_warp(image, flow)
    kernels = jdrl_ext.isotropic_kernels(seeds[:, jdrl_ext.level_slice(2)])
    blurred = jdrl_ext.sv_conv(warped, kernels, padding_mode="zeros")
    return (jdrl_ext.reblur(blurred, seeds, weights) ** 2).mean()


def test_torch_compile_fullgraph_cuda():
    torch._dynamo.reset()
    generator = seeded(10)
    image, seeds, weights = reblur_inputs(1, 3, 12, 10, 4, torch.float32, generator, device="cuda")
    flow = torch.randn(1, 2, 12, 10, generator=generator).cuda()
    compiled_inputs = [t.clone().requires_grad_() for t in (image, seeds, weights, flow)]
    eager_inputs = [t.clone().requires_grad_() for t in (image, seeds, weights, flow)]
    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    loss = compiled(*compiled_inputs)
    loss.backward()
    expected = pipeline(*eager_inputs)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for got, want in zip(compiled_inputs, eager_inputs):
        assert got.grad is not None and got.grad.is_cuda
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)


def test_torch_compile_inductor_cuda():
    pytest.importorskip("triton")
    torch._dynamo.reset()
    image, seeds, weights = reblur_inputs(1, 3, 8, 8, 3, torch.float32, seeded(11), device="cuda")
    compiled = torch.compile(lambda i, s, w: jdrl_ext.reblur(i, s, w) * 2 + 1, fullgraph=True)
    torch.testing.assert_close(compiled(image, seeds, weights), jdrl_ext.reblur(image, seeds, weights) * 2 + 1)


# --- the CUDA entry points: determinism, streams, devices, special inputs ----------------------------------------


@pytest.fixture
def deterministic():
    """Deterministic mode; it also fills fresh memory with NaN, which shows any output element a
    kernel forgot to write."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def test_gather_backwards_are_deterministic_and_write_every_element(deterministic):
    generator = seeded(12)
    image, seeds, weights = reblur_inputs(2, 5, 11, 9, 8, torch.float32, generator)
    kernels = torch.randn(2, 25, 11, 9, generator=generator)
    cases = [
        (jdrl_ext.reblur, [image, seeds, weights]),
        (jdrl_ext.sv_conv, [image, kernels]),
        (jdrl_ext.isotropic_kernels, [seeds[:, jdrl_ext.level_slice(5)]]),
    ]
    for op, inputs in cases:
        inputs = [t.cuda() for t in inputs]
        grad_out = torch.randn(op(*inputs).shape, generator=generator).cuda()
        first = forward_backward(op, inputs, {}, grad_out)
        second = forward_backward(op, inputs, {}, grad_out)
        for a, b in zip(first, second):
            assert not torch.isnan(a).any(), op
            assert torch.equal(a, b), op
    image, flow = flow_inputs(1, 3, 8, 8, torch.float32, generator, device="cuda")
    assert not torch.isnan(jdrl_ext.flow_warp(image, flow)).any()


def test_flow_warp_backward_reports_nondeterminism(deterministic):
    image, flow = flow_inputs(1, 3, 8, 8, torch.float32, seeded(13), device="cuda")
    flow.requires_grad_()
    with pytest.raises(RuntimeError, match="_flow_warp_backward"):
        jdrl_ext.flow_warp(image, flow).sum().backward()


def test_runs_on_the_current_stream():
    image, seeds, weights = reblur_inputs(2, 3, 64, 48, 8, torch.float32, seeded(14), device="cuda")
    expected = jdrl_ext.reblur(image, seeds, weights)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = jdrl_ext.reblur(image, seeds, weights)
        got = got * 1  # a stream-ordered use of the result
    side.synchronize()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    generator = seeded(15)
    inputs = reblur_inputs(1, 3, 10, 12, 5, torch.float32, generator)
    on_0 = [t.to("cuda:0") for t in inputs]
    on_1 = [t.to("cuda:1") for t in inputs]
    grad_out = torch.randn(1, 3, 10, 12, generator=generator)
    first = forward_backward(jdrl_ext.reblur, on_0, {}, grad_out.to("cuda:0"))
    second = forward_backward(jdrl_ext.reblur, on_1, {}, grad_out.to("cuda:1"))
    for a, b in zip(first, second):
        assert b.device == torch.device("cuda:1")
        torch.testing.assert_close(a.cpu(), b.cpu())


def test_empty_batch_cuda():
    image, seeds, weights = [
        t.requires_grad_() for t in reblur_inputs(0, 3, 5, 5, 8, torch.float32, seeded(16), "cuda")
    ]
    out = jdrl_ext.reblur(image, seeds, weights)
    assert out.shape == (0, 3, 5, 5) and out.is_cuda
    out.sum().backward()
    assert seeds.grad.shape == seeds.shape
    empty = torch.zeros(0, 3, 4, 4, device="cuda")
    assert jdrl_ext.isotropic_kernels(empty).shape == (0, 25, 4, 4)
    assert jdrl_ext.sv_conv(empty, torch.zeros(0, 9, 4, 4, device="cuda")).shape == (0, 3, 4, 4)
    assert jdrl_ext.flow_warp(empty, torch.zeros(0, 2, 4, 4, device="cuda")).shape == (0, 3, 4, 4)


def test_non_contiguous_inputs_cuda():
    image, seeds, weights = reblur_inputs(2, 3, 8, 9, 5, torch.float64, seeded(17), device="cuda")
    image_cl = image.to(memory_format=torch.channels_last)
    seeds_t = seeds.transpose(2, 3).contiguous().transpose(2, 3)
    assert not seeds_t.is_contiguous()
    torch.testing.assert_close(jdrl_ext.reblur(image_cl, seeds_t, weights), jdrl_ext.reblur(image, seeds, weights))
    flow = torch.randn(2, 9, 8, 2, dtype=torch.float64, device="cuda").permute(0, 3, 2, 1)
    torch.testing.assert_close(jdrl_ext.flow_warp(image, flow), jdrl_ext.flow_warp(image, flow.contiguous()))


def test_nan_propagates_cuda():
    image, seeds, weights = reblur_inputs(1, 3, 7, 7, 4, torch.float32, seeded(18), device="cuda")
    seeds[0, 0, 3, 3] = float("nan")
    assert torch.isnan(jdrl_ext.reblur(image, seeds, weights)[0, :, 3, 3]).all()
    assert torch.isnan(jdrl_ext.isotropic_kernels(seeds[:, :2])[0, :, 3, 3]).all()
    flow = torch.zeros(1, 2, 7, 7, device="cuda")
    flow[0, 0, 5, 5] = float("nan")
    assert torch.isnan(jdrl_ext.flow_warp(image, flow)[0, :, 5, 5]).all()


def test_mixed_devices_name_the_arguments():
    image, seeds, weights = reblur_inputs(1, 3, 6, 6, 3, torch.float32, seeded(19))
    with pytest.raises((ValueError, RuntimeError), match="image and seeds must be on the same device"):
        torch.ops.jdrl_ext.reblur(image.cuda(), seeds, weights.cuda())
    with pytest.raises((ValueError, RuntimeError), match="image and flow must be on the same device"):
        torch.ops.jdrl_ext.flow_warp(image.cuda(), torch.zeros(1, 2, 6, 6))


def test_fused_reblur_memory_bound_at_512_cuda():
    """Forward+backward of 1x3x512x512, m = 8, stays under 200 MB of GPU memory beyond the inputs
    (SPEC 4): the per-level kernels alone would take 679 planes, 680 MB in float32."""
    inputs = [t.requires_grad_() for t in reblur_inputs(1, 3, 512, 512, 8, torch.float32, seeded(20), device="cuda")]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    jdrl_ext.reblur(*inputs).sum().backward()
    torch.cuda.synchronize()
    extra_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    print(f"fused reblur forward+backward at 1x3x512x512 on CUDA: {extra_mb:.0f} MB beyond the inputs")
    assert extra_mb < 200


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
    reason="needs a CUDA device with 40 GB of memory",
)
def test_reblur_batch_over_32_bit_indices_matches_item_by_item():
    """6 x 3 x 2160 x 4096, m = 8, bfloat16: one item's largest per-pixel tensor (the backward's 36
    orbit-weight planes, or the generic kernels' 44 scratch planes) has 3.9e8 elements, the batch's
    over 2^31, so the batch runs as launches of 5 and 1 items of the 32-bit kernels. Forward and
    backward equal the op on each item alone, to the bit: the same kernels sum the same values (in one
    launch, the batch would take the generic 64-bit kernels, ~55x slower on an H200)."""
    generator = torch.Generator(device="cuda").manual_seed(6)
    batch, channels, height, width, levels = 6, 3, 2160, 4096, 8
    options = {"dtype": torch.bfloat16, "device": "cuda"}
    image = torch.rand(batch, channels, height, width, generator=generator, **options)
    seeds = 2 * torch.randn(batch, jdrl_ext.seed_channels(levels), height, width, generator=generator, **options)
    weights = torch.softmax(torch.randn(batch, levels, height, width, generator=generator, **options), dim=1)
    grad = torch.randn(batch, channels, height, width, generator=generator, **options)
    assert seeds.numel() < 2**31 <= batch * 44 * height * width  # a batch over the limit, items under it
    out = jdrl_ext.reblur(image, seeds, weights)
    grads = torch.ops.jdrl_ext._reblur_backward(grad, image, seeds, weights, "window", "replicate")
    for item in range(batch):
        one = slice(item, item + 1)
        assert torch.equal(out[one], jdrl_ext.reblur(image[one], seeds[one], weights[one])), f"output of item {item}"
        item_grads = torch.ops.jdrl_ext._reblur_backward(grad[one], image[one], seeds[one], weights[one], "window", "replicate")
        for name, got, expected in zip(["image", "seeds", "weights"], grads, item_grads):
            assert torch.equal(got[one], expected), f"grad {name} of item {item}"
