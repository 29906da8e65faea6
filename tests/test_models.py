"""The networks of jdrl.models: shapes on odd sizes, gradients, presets, the reblurring network."""

from __future__ import annotations

import math

import pytest
import torch
from jdrl.models import (
    PRESETS,
    DeblurOutput,
    DefocusMapNet,
    ReblurNet,
    ReblurOutput,
    build_deblur_net,
    seed_channels,
)

ODD_SIZE = (37, 45)


def assert_every_parameter_has_gradient(module: torch.nn.Module) -> None:
    missing = [name for name, p in module.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    silent = [name for name, p in module.named_parameters() if not torch.any(p.grad != 0)]
    assert not silent, f"all-zero gradient for {silent}"
    broken = [name for name, p in module.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradient for {broken}"


def test_seed_channels_matches_the_spec_layout():
    assert seed_channels(8) == 35
    assert seed_channels(2) == 2
    with pytest.raises(ValueError, match="levels"):
        seed_channels(1)


def test_seed_channels_agrees_with_jdrl_ext():
    import jdrl_ext

    for levels in (2, 3, 8, 10):
        assert seed_channels(levels) == jdrl_ext.seed_channels(levels)


@pytest.mark.parametrize("arch", ["jdrl", "unet"])
@pytest.mark.parametrize("size", [ODD_SIZE, (32, 40), (5, 7)])
def test_deblur_net_keeps_any_input_size(arch, size):
    torch.manual_seed(0)
    net = build_deblur_net(arch, "tiny")
    blurry = torch.rand(2, 3, *size)
    out = net(blurry)
    assert isinstance(out, DeblurOutput)
    assert out.sharp.shape == blurry.shape
    if arch == "jdrl":
        assert out.defocus_map.shape == (2, 35, *size)
    else:
        assert out.defocus_map is None


@pytest.mark.parametrize("levels", [8, 5])
def test_f_d_takes_the_whole_fused_input(levels):
    # SPEC section 7: the re-weighted [I_B, B_hat] (3 + S(m) channels) enters F_D's first layer,
    # with no squeeze to 3 channels in between; F_D's 3-channel output is added to I_B.
    torch.manual_seed(0)
    net = build_deblur_net("jdrl", "tiny", levels=levels)
    fused_channels = 3 + seed_channels(levels)
    assert net.deblur_body.embed.in_channels == fused_channels
    assert not any("fusion.to_image" in name for name, _ in net.named_parameters())
    seen = {}
    net.deblur_body.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0], out=output))
    blurry = torch.rand(2, 3, *ODD_SIZE)
    with torch.no_grad():
        out = net(blurry)
    assert seen["x"].shape == (2, fused_channels, 40, 48)  # padded to multiples of 8
    # The first channels are I_B and the rest the defocus map, each times its channel gate.
    gate = net.fusion.excite(torch.cat([blurry, out.defocus_map], dim=1).mean(dim=(2, 3)))
    torch.testing.assert_close(seen["x"][:, :3, :37, :45], blurry * gate[:, :3, None, None])
    torch.testing.assert_close(seen["x"][:, 3:, :37, :45], out.defocus_map * gate[:, 3:, None, None])
    torch.testing.assert_close(out.sharp, blurry + seen["out"][..., :37, :45])


def test_small_preset_shapes_and_levels():
    torch.manual_seed(0)
    net = build_deblur_net("jdrl", "small", levels=5)
    out = net(torch.rand(1, 3, *ODD_SIZE))
    assert out.sharp.shape == (1, 3, *ODD_SIZE)
    assert out.defocus_map.shape == (1, seed_channels(5), *ODD_SIZE)


@pytest.mark.parametrize("arch", ["jdrl", "unet"])
def test_gradients_reach_every_parameter_of_the_deblur_net(arch):
    torch.manual_seed(0)
    net = build_deblur_net(arch, "tiny")
    out = net(torch.rand(2, 3, *ODD_SIZE))
    loss = out.sharp.square().mean()
    if out.defocus_map is not None:
        loss = loss + out.defocus_map.square().mean()
    loss.backward()
    assert_every_parameter_has_gradient(net)


@pytest.mark.parametrize("arch", ["jdrl", "unet"])
def test_deblur_net_starts_near_the_identity(arch):
    # The global residual with a small last layer: the first estimates are close to I_B.
    torch.manual_seed(0)
    net = build_deblur_net(arch, "small")
    blurry = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        sharp = net(blurry).sharp
    assert (sharp - blurry).abs().mean() < 0.25


def test_paper_presets_have_plausible_sizes():
    counts = {}
    for arch in PRESETS:
        for preset in PRESETS[arch]:
            net = build_deblur_net(arch, preset)
            counts[(arch, preset)] = sum(p.numel() for p in net.parameters())
    print("parameters per preset:", {f"{a}/{p}": n for (a, p), n in counts.items()})
    # Restormer alone has about 26.1M parameters; F_B, the fusion and the 3 + 35 input channels of
    # F_D's first layer add a few hundred thousand.
    assert 25e6 < counts[("jdrl", "paper")] < 28e6
    assert counts[("jdrl", "tiny")] < counts[("jdrl", "small")] < counts[("jdrl", "paper")]
    assert counts[("unet", "tiny")] < counts[("unet", "small")] < counts[("unet", "paper")]
    # "small" must stay trainable on a CPU.
    assert counts[("jdrl", "small")] < 2e6


def test_paper_preset_runs_on_a_small_image():
    torch.manual_seed(0)
    net = build_deblur_net("jdrl", "paper").eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 13, 11))
    assert out.sharp.shape == (1, 3, 13, 11)
    assert out.defocus_map.shape == (1, 35, 13, 11)
    assert torch.isfinite(out.sharp).all()


def test_rebuilt_net_reproduces_outputs_from_its_state_dict():
    # What checkpoint.load_deblur_net relies on: arch, preset and levels rebuild the same module.
    torch.manual_seed(0)
    original = build_deblur_net("jdrl", "tiny", levels=6)
    torch.manual_seed(1)
    rebuilt = build_deblur_net("jdrl", "tiny", levels=6)
    rebuilt.load_state_dict(original.state_dict())
    blurry = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(blurry).sharp, original(blurry).sharp)


def _old_layout_state_dict(levels: int = 8) -> dict[str, torch.Tensor]:
    """A jdrl 'tiny' state dict as checkpoint format 1 held it: a 1x1 squeeze to 3 channels before F_D."""
    state = dict(build_deblur_net("jdrl", "tiny", levels=levels).state_dict())
    fused_channels = 3 + seed_channels(levels)
    state["fusion.to_image.weight"] = torch.zeros(3, fused_channels, 1, 1)
    state["fusion.to_image.bias"] = torch.zeros(3)
    state["deblur_body.embed.weight"] = state["deblur_body.embed.weight"][:, :3].clone()
    return state


def test_old_layout_checkpoint_gets_a_clear_error(tmp_path):
    from jdrl.checkpoint import CheckpointError, load_checkpoint, load_deblur_net

    path = tmp_path / "old_run" / "best.pt"
    path.parent.mkdir()
    # Written the way format 1 was: torch.save of the state, no "format_version".
    old_config = {"model": {"arch": "jdrl", "preset": "tiny", "levels": 8}}
    torch.save({"model": _old_layout_state_dict(), "config": old_config}, path)
    for load in (load_checkpoint, load_deblur_net):
        with pytest.raises(CheckpointError) as caught:
            load(path)
        message = str(caught.value)
        assert str(path) in message
        assert "old jdrl network layout" in message and "format 1" in message
        assert "retrain" in message
    # Recognised by its weights too, when the config does not say the arch.
    torch.save({"model": _old_layout_state_dict(), "config": {}}, path)
    with pytest.raises(CheckpointError, match="old jdrl network layout"):
        load_checkpoint(path)


def test_checkpoint_format_version_round_trip_and_unchanged_unet(tmp_path):
    from jdrl.checkpoint import (
        CHECKPOINT_FORMAT_VERSION,
        CheckpointError,
        load_checkpoint,
        load_deblur_net,
        save_checkpoint,
    )

    torch.manual_seed(0)
    net = build_deblur_net("jdrl", "tiny")
    config = {"model": {"arch": "jdrl", "preset": "tiny", "levels": 8}}
    save_checkpoint(tmp_path / "new.pt", {"model": net.state_dict(), "config": config})
    assert load_checkpoint(tmp_path / "new.pt")["format_version"] == CHECKPOINT_FORMAT_VERSION
    blurry = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_deblur_net(tmp_path / "new.pt")(blurry).sharp, net.eval()(blurry).sharp)
    # The UNet's layout did not change: its format-1 checkpoints still load.
    unet = build_deblur_net("unet", "tiny")
    unet_config = {"model": {"arch": "unet", "preset": "tiny", "levels": 8}}
    torch.save({"model": unet.state_dict(), "config": unet_config}, tmp_path / "unet.pt")
    load_deblur_net(tmp_path / "unet.pt")
    # A newer format than this code knows is refused, not misread.
    torch.save({"model": {}, "config": config, "format_version": CHECKPOINT_FORMAT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer than this jdrl reads"):
        load_checkpoint(tmp_path / "future.pt")


def test_deblur_net_arguments_are_checked():
    with pytest.raises(ValueError, match="'resnet'"):
        build_deblur_net("resnet", "tiny")
    with pytest.raises(ValueError, match="'huge'"):
        build_deblur_net("unet", "huge")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_deblur_net("jdrl", "tiny")(torch.rand(1, 4, 16, 16))


def test_defocus_map_net_shapes_and_gradients():
    torch.manual_seed(0)
    net = DefocusMapNet(levels=8, width=8, residual_blocks=1)
    out = net(torch.rand(2, 3, *ODD_SIZE))
    assert out.shape == (2, 35, *ODD_SIZE)
    out.square().mean().backward()
    assert_every_parameter_has_gradient(net)
    assert DefocusMapNet(levels=4, width=8)(torch.rand(1, 3, 9, 9)).shape == (1, 9, 9, 9)


# ---- ReblurNet: its forward calls the compiled jdrl_ext.reblur --------------------------------


def test_reblur_net_outputs():
    torch.manual_seed(0)
    net = ReblurNet(levels=8, width=8)
    sharp_est, blurry = torch.rand(2, 3, *ODD_SIZE), torch.rand(2, 3, *ODD_SIZE)
    out = net(sharp_est, blurry)
    assert isinstance(out, ReblurOutput)
    assert out.reblurred.shape == (2, 3, *ODD_SIZE)
    assert out.seeds.shape == (2, 35, *ODD_SIZE)
    assert out.weights.shape == (2, 8, *ODD_SIZE)
    assert (out.weights >= 0).all()
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(2, *ODD_SIZE))


def test_reblur_net_uses_the_op_as_specified():
    import jdrl_ext
    import jdrl_ext.reference

    torch.manual_seed(0)
    net = ReblurNet(levels=4, width=8, support="disk", padding_mode="zeros").double()
    sharp_est, blurry = torch.rand(1, 3, 17, 19, dtype=torch.float64), torch.rand(1, 3, 17, 19, dtype=torch.float64)
    out = net(sharp_est, blurry)
    expected = jdrl_ext.reference.reblur(sharp_est, out.seeds, out.weights, support="disk", padding_mode="zeros")
    torch.testing.assert_close(out.reblurred, expected)


def test_gradients_reach_every_parameter_of_the_reblur_net():
    torch.manual_seed(0)
    net = ReblurNet(levels=8, width=8)
    sharp_est = torch.rand(1, 3, *ODD_SIZE, requires_grad=True)
    out = net(sharp_est, torch.rand(1, 3, *ODD_SIZE))
    out.reblurred.square().mean().backward()
    assert_every_parameter_has_gradient(net)
    assert sharp_est.grad is not None and torch.any(sharp_est.grad != 0)


def test_reblur_net_without_kernel_prediction_uses_flat_kernels():
    torch.manual_seed(0)
    net = ReblurNet(levels=8, width=8, predict_seeds=False)
    assert net.kernel_net is None and not net.predict_seeds
    out = net(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    assert out.seeds.shape == (1, 35, 16, 16)
    assert (out.seeds == 0).all()
    out.reblurred.mean().backward()
    assert_every_parameter_has_gradient(net)


def test_reblur_net_without_weight_prediction_uses_uniform_weights():
    torch.manual_seed(0)
    net = ReblurNet(levels=8, width=8, predict_weights=False)
    assert net.weight_net is None and not net.predict_weights
    out = net(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    torch.testing.assert_close(out.weights, torch.full((1, 8, 16, 16), 1 / 8))
    out.reblurred.mean().backward()
    assert_every_parameter_has_gradient(net)


def test_reblur_net_seed_bound_is_a_scaled_tanh_of_the_raw_seeds():
    torch.manual_seed(0)
    raw_net = ReblurNet(levels=4, width=8)
    bounded = ReblurNet(levels=4, width=8, seed_bound=0.5)
    bounded.load_state_dict(raw_net.state_dict())
    sharp_est, blurry = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    raw = raw_net(sharp_est, blurry).seeds
    assert raw.abs().max() > 0.5  # the bound acts on this input
    seeds = bounded(sharp_est, blurry).seeds
    torch.testing.assert_close(seeds, 0.5 * torch.tanh(raw / 0.5))
    assert seeds.abs().max() < 0.5
    # 0 and None mean unbounded.
    for unbounded in (0.0, None):
        net = ReblurNet(levels=4, width=8, seed_bound=unbounded)
        net.load_state_dict(raw_net.state_dict())
        torch.testing.assert_close(net(sharp_est, blurry).seeds, raw)


def test_reblur_net_arguments_are_checked():
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="seed_bound"):
            ReblurNet(seed_bound=bad)
    with pytest.raises(ValueError, match="support"):
        ReblurNet(support="square")
    with pytest.raises(ValueError, match="padding_mode"):
        ReblurNet(padding_mode="reflect")
    with pytest.raises(ValueError, match="sharp_est and blurry"):
        ReblurNet(width=8)(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))


@pytest.mark.parametrize("preset, size, batch", [("tiny", (37, 53), 2), ("small", (64, 48), 1)])
@pytest.mark.parametrize("band_bytes", [1, None])
def test_inference_in_bands_equals_the_training_forward(preset, size, batch, band_bytes, monkeypatch):
    """Without gradients on the CPU each transformer block runs a band of rows at a time (two passes
    for the attention); it must give what the whole-image path gives, up to the order of the
    attention's sums. band_bytes=1: bands of 4 rows (many bands, every halo case); None: the
    default (one band per level at these sizes)."""
    from jdrl.models import restormer
    from jdrl.models.restormer import GatedFeedForward, TransformerBlock

    if band_bytes is not None:
        monkeypatch.setattr(restormer, "BAND_BYTES", band_bytes)
    torch.manual_seed(0)
    net = build_deblur_net("jdrl", preset, 8).eval()
    with torch.no_grad():  # random, not He-scaled, output layers so that every value matters
        for module in net.modules():
            if isinstance(module, GatedFeedForward):
                module.project_out.weight.normal_()
            if isinstance(module, TransformerBlock):
                module.attention.temperature.uniform_(0.5, 3.0)
                module.attention.project_out.weight.normal_()
    image = torch.rand(batch, 3, *size)
    if batch == 1:  # as `jdrl deblur` passes a tile: a view of an (H, W, 3) photo, batch stride 3
        image = image[0].permute(1, 2, 0).contiguous().permute(2, 0, 1).unsqueeze(0)
        assert image.stride()[0] == 3
    called = []
    banded = TransformerBlock._forward_in_bands
    monkeypatch.setattr(TransformerBlock, "_forward_in_bands", lambda self, x: (called.append(1), banded(self, x))[1])
    with torch.no_grad():
        bands = net(image)
    assert called and bands.sharp.is_contiguous() and bands.defocus_map.is_contiguous()

    # forward's whole-image path, here with no_grad's 1x1 convolutions
    monkeypatch.setattr(TransformerBlock, "_forward_in_bands", TransformerBlock._forward_whole_image)
    with torch.no_grad():
        whole = net(image)
    scale = whole.sharp.abs().max().item()
    torch.testing.assert_close(bands.sharp, whole.sharp, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(bands.defocus_map, whole.defocus_map)  # F_B has no transformer blocks
    # The autograd path (contiguous layout, F.conv2d's 1x1 convolutions): the same up to rounding.
    trained = net(image)
    torch.testing.assert_close(bands.sharp, trained.sharp.detach(), rtol=1e-5, atol=1e-5 * scale)
    if band_bytes == 1:  # a missing halo row (a wrong bottom neighbour) is far beyond that tolerance
        correct = restormer.row_bands
        monkeypatch.setattr(restormer, "row_bands", lambda height, rows: [
            (start, stop, halo_start, stop) for start, stop, halo_start, _ in correct(height, rows)
        ])
        monkeypatch.setattr(TransformerBlock, "_forward_in_bands", banded)
        with torch.no_grad():
            broken = net(image)
        assert (broken.sharp - whole.sharp).abs().max().item() > 1e-3 * scale


def test_row_bands_cover_the_rows_with_one_row_of_halo():
    from jdrl.models import restormer
    from jdrl.models.restormer import band_rows, row_bands

    assert row_bands(10, 4) == [(0, 4, 0, 5), (4, 8, 3, 9), (8, 10, 7, 10)]
    assert row_bands(3, 4) == [(0, 3, 0, 3)]
    assert band_rows(10**12) == 4 and band_rows(1024) == restormer.BAND_BYTES // 1024


def test_bench_tile_times_both_paths_and_restores_the_module(capsys):
    import importlib.util
    from pathlib import Path

    from jdrl.models import restormer
    from jdrl.models.restormer import TransformerBlock

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_tile.py"
    spec = importlib.util.spec_from_file_location("bench_tile", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    banded, band_bytes, threads = TransformerBlock._forward_in_bands, restormer.BAND_BYTES, torch.get_num_threads()
    assert bench.main(["--tile", "32", "--preset", "tiny", "--threads", "1", "--repeats", "1", "--band-mb", "1,2"]) == 0
    printed = capsys.readouterr().out
    assert "whole image: median" in printed and "bands of 1 MB" in printed and "bands of 2 MB" in printed
    assert TransformerBlock._forward_in_bands is banded and restormer.BAND_BYTES == band_bytes
    assert torch.get_num_threads() == threads


def test_channel_attention_equals_the_normalized_query_key_form():
    """MDTA computes its cosine similarities from (c x c) products instead of F.normalize (faster
    on a CPU); both must give the same attention, values and gradients, zero rows included."""
    from jdrl.models.restormer import ChannelAttention

    def normalized_form(module, x):
        batch, channels, height, width = x.shape
        query, key, value = module.qkv_local(module.to_qkv(x)).chunk(3, dim=1)
        shape = (batch, module.heads, channels // module.heads, height * width)
        query = torch.nn.functional.normalize(query.reshape(shape), dim=-1)
        key = torch.nn.functional.normalize(key.reshape(shape), dim=-1)
        attention = torch.softmax(query @ key.transpose(-2, -1) * module.temperature, dim=-1)
        return module.project_out((attention @ value.reshape(shape)).reshape(batch, channels, height, width))

    torch.manual_seed(0)
    module = ChannelAttention(8, 2).double()
    with torch.no_grad():
        module.temperature.uniform_(0.5, 3.0)
        module.to_qkv.weight[0].zero_()  # query channel 0 is all zeros: the eps clamp of F.normalize
    x = torch.randn(2, 8, 7, 5, dtype=torch.float64, requires_grad=True)
    expected, actual = normalized_form(module, x), module(x)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    grads_expected = torch.autograd.grad(expected.square().sum(), [x, *module.parameters()])
    grads_actual = torch.autograd.grad(actual.square().sum(), [x, *module.parameters()])
    for got, want in zip(grads_actual, grads_expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    channels_last = x.detach().float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(module.float()(channels_last), normalized_form(module, channels_last), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_equals_conv2d(channels_last):
    from jdrl.models.common import PointwiseConv2d, pointwise_conv

    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layer = PointwiseConv2d(5, 6)
    expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias)
    with torch.no_grad():  # the oneDNN path
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(pointwise_conv(x.double(), layer.weight.double()), torch.nn.functional.conv2d(
            x.double(), layer.weight.double()), rtol=1e-12, atol=1e-12)
    grad = torch.autograd.grad(layer(x).square().sum(), layer.weight)[0]  # with gradients: F.conv2d's path
    torch.testing.assert_close(grad, torch.autograd.grad(expected.square().sum(), layer.weight)[0])
    assert list(layer.state_dict()) == ["weight", "bias"]
