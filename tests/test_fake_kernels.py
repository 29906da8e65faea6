"""The fake (meta) kernels promise what the real kernels return, and unsupported dtypes get named errors.

torch.compile plans memory from the fake kernels: an output that the fake kernel declares
channels_last while the real kernel returns it contiguous makes inductor's generated code read it
with the wrong strides (or fail its stride assertions). Every op and backward op is checked here on
channels_last inputs, then a compiled pipeline of all four ops (inductor, CPU) with its backward.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import jdrl_ext

ops = torch.ops.jdrl_ext
FLOAT8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2]


def channels_last_inputs(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Inputs of all four ops in channels_last memory (B=2, C=3, 6 x 5, m = 4, K = 3)."""

    def cl(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.contiguous(memory_format=torch.channels_last)

    levels = 4
    return {
        "image": cl(torch.rand(2, 3, 6, 5, generator=generator)),
        "seeds": cl(torch.randn(2, jdrl_ext.seed_channels(levels), 6, 5, generator=generator)),
        "weights": cl(torch.softmax(torch.randn(2, levels, 6, 5, generator=generator), dim=1)),
        "level_seeds": cl(torch.randn(2, 3, 6, 5, generator=generator)),
        "kernels": cl(torch.rand(2, 9, 6, 5, generator=generator)),
        "kernel_grad": cl(torch.randn(2, 25, 6, 5, generator=generator)),
        "flow": cl(2 * torch.randn(2, 2, 6, 5, generator=generator)),
        "grad": cl(torch.randn(2, 3, 6, 5, generator=generator)),
    }


# (name, op, arguments by input name, other arguments): every forward and backward op.
CALLS = [
    ("isotropic_kernels", ops.isotropic_kernels.default, ["level_seeds"], ()),
    ("_isotropic_kernels_backward", ops._isotropic_kernels_backward.default, ["kernel_grad", "level_seeds"], ("window",)),
    ("sv_conv", ops.sv_conv.default, ["image", "kernels"], ()),
    ("_sv_conv_backward", ops._sv_conv_backward.default, ["grad", "image", "kernels"], ("replicate",)),
    ("reblur", ops.reblur.default, ["image", "seeds", "weights"], ()),
    ("_reblur_backward", ops._reblur_backward.default, ["grad", "image", "seeds", "weights"], ("window", "replicate")),
    ("flow_warp", ops.flow_warp.default, ["image", "flow"], ()),
    ("_flow_warp_backward", ops._flow_warp_backward.default, ["grad", "image", "flow"], ("border",)),
]


def as_tuple(result) -> tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


@pytest.mark.parametrize("name, op, tensor_names, options", CALLS, ids=[call[0] for call in CALLS])
def test_fake_kernel_output_strides_match_the_real_kernel(name, op, tensor_names, options):
    inputs = channels_last_inputs(torch.Generator().manual_seed(0))
    arguments = [inputs[key] for key in tensor_names]
    assert any(not t.is_contiguous() for t in arguments)  # the case that used to differ
    real = as_tuple(op(*arguments, *options))
    with FakeTensorMode() as mode:
        fake = as_tuple(op(*(mode.from_tensor(t) for t in arguments), *options))
    assert len(fake) == len(real)
    for index, (fake_out, real_out) in enumerate(zip(fake, real)):
        assert real_out.is_contiguous(), f"{name} output {index}: the real kernel returns a non-contiguous tensor"
        assert (fake_out.shape, fake_out.stride(), fake_out.dtype) == (real_out.shape, real_out.stride(), real_out.dtype), (
            f"{name} output {index}: fake {tuple(fake_out.shape)} strides {fake_out.stride()}, "
            f"real {tuple(real_out.shape)} strides {real_out.stride()}"
        )


def pipeline(image, seeds, weights, flow, level_seeds):
    """All four ops, with a channels_last-sensitive pointwise op after each."""
    warped = jdrl_ext.flow_warp(image, flow) * 1.5
    kernels = jdrl_ext.isotropic_kernels(level_seeds) + 0.0
    blurred = jdrl_ext.sv_conv(warped, kernels, padding_mode="zeros")[:, :, 1:, :] - 0.25
    reblurred = jdrl_ext.reblur(image, seeds, weights)[:, :, 1:, :]
    return ((blurred - reblurred) ** 2 * torch.arange(3.0).view(1, 3, 1, 1)).mean()


def test_torch_compile_inductor_channels_last_with_backward():
    torch._dynamo.reset()
    inputs = channels_last_inputs(torch.Generator().manual_seed(1))
    names = ["image", "seeds", "weights", "flow", "level_seeds"]
    eager_inputs = [inputs[n].clone().requires_grad_() for n in names]
    compiled_inputs = [inputs[n].clone().requires_grad_() for n in names]
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in compiled_inputs)
    expected = pipeline(*eager_inputs)
    expected.backward()
    # No cached graph: inductor's FX graph and autograd caches key on the graph, not on the fake
    # kernels' code, so a graph compiled before a fake kernel changed would be reused (the compiled
    # C++ kernels themselves stay cached: their key is their source).
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        compiled = torch.compile(pipeline, fullgraph=True, backend="inductor")
        loss = compiled(*compiled_inputs)
        loss.backward()
    torch.testing.assert_close(loss, expected)
    for name, eager, traced in zip(names, eager_inputs, compiled_inputs):
        torch.testing.assert_close(traced.grad, eager.grad, msg=lambda m, name=name: f"gradient of {name}: {m}")


# --- float8: a named error from the public functions and from the fake kernels ------------------------------


def float8_calls(dtype: torch.dtype, device: str):
    image = torch.rand(1, 3, 8, 8, device=device)
    seeds = torch.zeros(1, 35, 8, 8, device=device)
    weights = torch.zeros(1, 8, 8, 8, device=device)
    flow = torch.zeros(1, 2, 8, 8, device=device)
    kernels = torch.zeros(1, 9, 8, 8, device=device)
    return [
        ("image", lambda: jdrl_ext.reblur(image.to(dtype), seeds.to(dtype), weights.to(dtype))),
        ("seeds", lambda: jdrl_ext.reblur(image, seeds.to(dtype), weights)),
        ("weights", lambda: jdrl_ext.reblur(image, seeds, weights.to(dtype))),
        ("seeds", lambda: jdrl_ext.isotropic_kernels(seeds[:, :3].to(dtype))),
        ("image", lambda: jdrl_ext.sv_conv(image.to(dtype), kernels.to(dtype))),
        ("kernels", lambda: jdrl_ext.sv_conv(image, kernels.to(dtype))),
        ("image", lambda: jdrl_ext.flow_warp(image.to(dtype), flow.to(dtype))),
        ("flow", lambda: jdrl_ext.flow_warp(image, flow.to(dtype))),
    ]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", FLOAT8_DTYPES, ids=str)
def test_float8_inputs_get_an_error_naming_the_argument(dtype, device):
    for argument, call in float8_calls(dtype, device):
        with pytest.raises(TypeError, match=rf"^{argument} must be float16, bfloat16, float32 or float64, got .*float8"):
            call()


def test_an_argument_that_is_not_a_tensor_is_named():
    image, flow = torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 8, 8)
    with pytest.raises(TypeError, match=r"^image must be a torch.Tensor, got list$"):
        jdrl_ext.flow_warp([[0.0]], flow)
    with pytest.raises(TypeError, match=r"^flow must be a torch.Tensor, got ndarray$"):
        jdrl_ext.flow_warp(image, flow.numpy())
    with pytest.raises(TypeError, match=r"^weights must be a torch.Tensor, got NoneType$"):
        jdrl_ext.reblur(image, torch.zeros(1, 35, 8, 8), None)


@pytest.mark.parametrize("dtype", FLOAT8_DTYPES, ids=str)
def test_float8_fake_kernel_names_the_argument(dtype):
    # The fake kernels are what torch.compile traces: the same named error there.
    with FakeTensorMode() as mode:
        image = mode.from_tensor(torch.rand(1, 3, 8, 8).to(dtype))
        flow = mode.from_tensor(torch.zeros(1, 2, 8, 8).to(dtype))
        with pytest.raises(TypeError, match=r"^image must be float16, bfloat16, float32 or float64"):
            ops.flow_warp(image, flow)


@pytest.mark.parametrize("dtype", FLOAT8_DTYPES, ids=str)
def test_float8_direct_op_calls_name_the_argument(dtype):
    # torch.ops.jdrl_ext.* skip the Python checks: the C++ entry (shared by the CPU and CUDA kernels)
    # names the argument itself.
    image = torch.rand(1, 3, 8, 8)
    seeds = torch.zeros(1, 35, 8, 8)
    weights = torch.zeros(1, 8, 8, 8)
    flow = torch.zeros(1, 2, 8, 8)
    kernels = torch.zeros(1, 9, 8, 8)
    calls = [
        ("image", lambda: torch.ops.jdrl_ext.reblur(image.to(dtype), seeds, weights)),
        ("seeds", lambda: torch.ops.jdrl_ext.reblur(image, seeds.to(dtype), weights)),
        ("weights", lambda: torch.ops.jdrl_ext.reblur(image, seeds, weights.to(dtype))),
        ("seeds", lambda: torch.ops.jdrl_ext.isotropic_kernels(seeds[:, :3].to(dtype))),
        ("kernels", lambda: torch.ops.jdrl_ext.sv_conv(image, kernels.to(dtype))),
        ("flow", lambda: torch.ops.jdrl_ext.flow_warp(image, flow.to(dtype))),
    ]
    for argument, call in calls:
        with pytest.raises(TypeError, match=rf"^{argument} must be float16, bfloat16, float32 or float64, got Float8"):
            call()
