"""Tests of the defocus-map metric (jdrl.defocus), the linear-light transfer (jdrl.colorspace) and the
reblurring net's guards and options that issue 9 added."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

import jdrl_ext
from jdrl.colorspace import linear_to_srgb, srgb_to_linear
from jdrl.defocus import (
    defocus_correlations,
    implied_radius,
    level_second_moments,
    levels_for_seed_channels,
    pearson,
    predicted_map_radius,
    radius_picture,
    spearman,
    texture_mask,
)
from jdrl.losses import charbonnier, pseudo_defocus_map
from jdrl.models import ReblurNet


def _offsets_squared(radius: int) -> torch.Tensor:
    d = torch.arange(-radius, radius + 1, dtype=torch.float64)
    return (d[:, None] ** 2 + d[None, :] ** 2).reshape(1, -1, 1, 1)


@pytest.mark.parametrize("support", ["window", "disk"])
def test_level_second_moments_equal_the_ops_kernels(support):
    torch.manual_seed(0)
    for radius in range(1, 8):
        seeds = torch.randn(2, radius + 1, 4, 5, dtype=torch.float64) * 3
        kernels = jdrl_ext.isotropic_kernels(seeds, support=support)
        expected = (kernels * _offsets_squared(radius)).sum(dim=1)
        torch.testing.assert_close(level_second_moments(seeds, support), expected)


def test_implied_radius_of_the_mixed_kernel():
    torch.manual_seed(1)
    levels = 5
    seeds = torch.randn(1, (levels - 1) * (levels + 2) // 2, 3, 4, dtype=torch.float64)
    weights = torch.softmax(torch.randn(1, levels, 3, 4, dtype=torch.float64), dim=1)
    # The mixed kernel of reblur, built tap by tap: level 0 a delta, level r its kernels.
    size = 2 * (levels - 1) + 1
    mixed = torch.zeros(1, size * size, 3, 4, dtype=torch.float64)
    centre = (size * size) // 2
    mixed[:, centre] += weights[:, 0]
    for radius in range(1, levels):
        start = (radius - 1) * (radius + 2) // 2
        kernels = jdrl_ext.isotropic_kernels(seeds[:, start : start + radius + 1]).view(1, 2 * radius + 1, 2 * radius + 1, 3, 4)
        pad = levels - 1 - radius
        padded = torch.nn.functional.pad(kernels.permute(0, 3, 4, 1, 2), (pad, pad, pad, pad)).permute(0, 3, 4, 1, 2)
        mixed += weights[:, radius : radius + 1] * padded.reshape(1, size * size, 3, 4)
    expected = (2 * (mixed * _offsets_squared(levels - 1)).sum(dim=1)).sqrt().float()
    torch.testing.assert_close(implied_radius(seeds, weights), expected)


def test_a_uniform_disk_of_radius_r_gives_r():
    # Equal seeds with support "disk" make a uniform disk of whole taps; its radius approaches R as
    # the disk gets finer (continuous disk: exactly R).
    levels = 8
    for radius in range(3, levels):
        weights = torch.zeros(1, levels, 1, 1)
        weights[:, radius] = 1
        seeds = torch.zeros(1, (levels - 1) * (levels + 2) // 2, 1, 1)
        value = implied_radius(seeds, weights, support="disk").item()
        assert value == pytest.approx(radius, rel=0.025)
    # A sharp pixel (all weight on level 0) has radius 0.
    weights = torch.zeros(1, levels, 1, 1)
    weights[:, 0] = 1
    assert implied_radius(torch.zeros(1, 35, 1, 1), weights).item() == 0


def test_implied_radius_bad_shapes_name_both():
    with pytest.raises(ValueError, match="S\\(m\\) = 35"):
        implied_radius(torch.zeros(1, 34, 2, 2), torch.zeros(1, 8, 2, 2))
    assert [levels_for_seed_channels(count) for count in (2, 5, 35)] == [2, 3, 8]
    with pytest.raises(ValueError, match="34 channels"):
        levels_for_seed_channels(34)


def test_predicted_map_radius_inverts_the_pseudo_map_when_seeds_sit_at_the_bound():
    torch.manual_seed(2)
    levels, bound = 8, 6.0
    seeds = torch.randn(1, 35, 6, 6).clamp(-1, 1)
    # Every level's largest |seed| at the bound, as R's saturated tanh gives.
    for radius in range(1, levels):
        start = (radius - 1) * (radius + 2) // 2
        level = seeds[:, start : start + radius + 1]
        seeds[:, start : start + radius + 1] = bound * level / level.abs().amax(dim=1, keepdim=True)
    weights = torch.softmax(3 * torch.randn(1, levels, 6, 6), dim=1)
    pseudo = pseudo_defocus_map(seeds, weights)
    torch.testing.assert_close(predicted_map_radius(pseudo, levels, bound), implied_radius(seeds, weights), atol=1e-4, rtol=1e-4)
    # An all-zero map is "sharp": radius 0.
    assert predicted_map_radius(torch.zeros(1, 35, 2, 2), levels, bound).abs().max().item() == 0


def test_spearman_and_pearson():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert pearson(a, a**3) < 0.99
    assert spearman(a, -a) == pytest.approx(-1.0)
    # Ties take their average rank: ranks (1.5, 1.5, 3) and (1, 2, 3) -> Pearson of those.
    assert spearman(np.array([0.0, 0.0, 1.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(pearson([1.5, 1.5, 3], [1, 2, 3]))
    assert math.isnan(pearson(np.ones(4), a[:4]))


def test_texture_mask_keeps_the_textured_half():
    image = np.zeros((64, 64, 3), dtype=np.float32)
    image[:, :32] = np.random.default_rng(0).random((64, 32, 3))  # texture on the left, flat right
    mask = texture_mask(image)
    assert mask.mean() == pytest.approx(0.5, abs=0.05)
    assert mask[:, :24].mean() > 0.95 and mask[:, 40:].mean() < 0.05


def test_defocus_correlations_pool_images_and_drop_the_border():
    rng = np.random.default_rng(3)
    sharp = [torch.from_numpy(rng.random((3, 40, 40)).astype(np.float32)) for _ in range(2)]
    true = [np.tile(np.linspace(0, 7, 40, dtype=np.float32), (40, 1)) for _ in range(2)]
    perfect = defocus_correlations([t * 2 + 1 for t in true], true, sharp, border=7)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["pearson_all"] == pytest.approx(1.0)
    # About half of the pixels inside the border are textured (the median is the whole image's).
    assert 0.25 * 2 * 26 * 26 < perfect["pixels"] < 0.75 * 2 * 26 * 26
    # Garbage only in the border does not count.
    spoiled = [t.copy() for t in true]
    for s in spoiled:
        s[:7] = -s[:7] * 100
    assert defocus_correlations(spoiled, true, sharp, border=7)["spearman_all"] == pytest.approx(1.0)
    assert defocus_correlations(spoiled, true, sharp, border=0)["spearman_all"] < 0.9
    with pytest.raises(ValueError, match="as many"):
        defocus_correlations(true, true[:1], sharp)


def test_radius_picture_has_a_colour_bar():
    radius = torch.linspace(0, 5, 50).repeat(40, 1)
    picture = radius_picture(radius, bar_width=70)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[1] == 50 * math.ceil(120 / 40) + 70
    # The bar's top swatch is the colour of the top value; its bottom one that of 0.
    bar = picture[:, -70:]
    assert (bar[12, 10] != bar[-12, 10]).any()


# ------------------------------------------------------------------------------------------------
# Linear light


@pytest.mark.parametrize("transfer", ["srgb", "gamma2.2"])
def test_transfer_functions_round_trip(transfer):
    values = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(srgb_to_linear(linear_to_srgb(values, transfer), transfer), values, atol=1e-6, rtol=0)
    encoded = srgb_to_linear(values, transfer)
    assert encoded.min() >= 0 and encoded.max() == pytest.approx(1.0)
    assert (encoded[1:] >= encoded[:-1]).all()
    back = linear_to_srgb(encoded, transfer)
    tolerance = 1e-9 if transfer == "srgb" else 2e-3  # x^(1/2.2)'s linear toe below 0.0019
    torch.testing.assert_close(back, values, atol=tolerance, rtol=0)
    # Clamped to [0, 1] first.
    assert srgb_to_linear(torch.tensor([-0.5, 1.5]), transfer).tolist() == pytest.approx([0.0, 1.0])


def test_srgb_curve_matches_iec_61966_2_1():
    assert srgb_to_linear(torch.tensor([0.5])).item() == pytest.approx(((0.5 + 0.055) / 1.055) ** 2.4)
    assert srgb_to_linear(torch.tensor([0.02])).item() == pytest.approx(0.02 / 12.92)
    assert srgb_to_linear(torch.tensor([0.5]), "gamma2.2").item() == pytest.approx(0.5**2.2)


def test_linear_reblurring_explains_a_blur_made_in_linear_light():
    # Fixed kernels (no R_kpn: flat seeds; no R_wpn: uniform weights), so the two spaces differ only
    # in where the blur acts. A blur made in linear light (as jdrl synth makes it) is reproduced
    # exactly by linear reblurring and not by sRGB reblurring, and vice versa.
    torch.manual_seed(4)
    sharp = (torch.rand(1, 3, 24, 24) > 0.5).float() * 0.9 + 0.05  # high-contrast edges
    seeds = torch.zeros(1, 35, 24, 24)
    weights = torch.full((1, 8, 24, 24), 1 / 8)
    linear_blur = linear_to_srgb(jdrl_ext.reblur(srgb_to_linear(sharp, "gamma2.2"), seeds, weights), "gamma2.2")
    srgb_blur = jdrl_ext.reblur(sharp, seeds, weights)
    linear_r = ReblurNet(levels=8, width=4, predict_seeds=False, predict_weights=False, space="linear", transfer="gamma2.2")
    srgb_r = ReblurNet(levels=8, width=4, predict_seeds=False, predict_weights=False)
    with torch.no_grad():
        assert charbonnier(linear_r(sharp, linear_blur).reblurred - linear_blur).item() < 1.01e-3
        assert charbonnier(srgb_r(sharp, linear_blur).reblurred - linear_blur).item() > 0.02
        assert charbonnier(srgb_r(sharp, srgb_blur).reblurred - srgb_blur).item() < 1.01e-3
        # Linear light brightens blurred edges: a dark/bright mix averages in intensity, not in code value.
        assert linear_r(sharp, linear_blur).reblurred.mean() > srgb_r(sharp, srgb_blur).reblurred.mean() + 0.02


def test_reblur_net_rejects_unknown_space_and_transfer():
    with pytest.raises(ValueError, match="space"):
        ReblurNet(space="log")
    with pytest.raises(ValueError, match="transfer"):
        ReblurNet(space="linear", transfer="gamma3")
    with pytest.raises(ValueError, match="logit_bound"):
        ReblurNet(logit_bound=-1.0)


# ------------------------------------------------------------------------------------------------
# The level-logit guard


def _logit_spread_after_training(logit_bound: float | None, steps: int, lr: float = 1e-3) -> float:
    """Train a small R alone at ``lr`` on a pair whose "blurry" image is the sharp one (what R sees
    when ``I_hat`` is still ``I_B``: the identity explains it); -> the final mean level-logit spread."""
    torch.manual_seed(0)
    sharp = torch.from_numpy(np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32))
    net = ReblurNet(levels=8, width=8, seed_bound=6.0, logit_bound=logit_bound)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        out = net(sharp, sharp)
        loss = charbonnier(out.reblurred - sharp)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = net(sharp, sharp).level_logits
    return (logits.amax(dim=1) - logits.amin(dim=1)).mean().item()


def test_level_logits_stay_bounded_at_a_high_learning_rate():
    # Unguarded, Adam at 1e-3 drives all weight onto level 0 and the logits apart without limit
    # (measured: spread 9 at the start, 80 after 20 steps, 210 after 100); then no other level
    # gets a gradient. The guard holds the spread within 2 * bound.
    bound = 6.0
    guarded = _logit_spread_after_training(bound, steps=40)
    unguarded = _logit_spread_after_training(None, steps=40)
    assert guarded <= 2 * bound
    assert unguarded > 5 * bound  # the same run without the guard: the guard is what holds it


def test_anchored_reblur_net_is_scored_on_the_flow_aligned_sharp_image():
    from jdrl.defocus import defocus_radii
    from jdrl.losses import LossConfig, build_reblur_net

    torch.manual_seed(0)
    config = LossConfig(reblur_anchor=True)
    net = build_reblur_net(config, 4).eval()
    blurry, sharp, estimate = torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20)
    one_px_right = lambda reference, moving: torch.cat(  # noqa: E731 - a constant flow estimator
        [torch.ones_like(reference[:, :1]), torch.zeros_like(reference[:, :1])], dim=1
    )
    radii = defocus_radii(blurry, estimate, None, (net, config), sharp, one_px_right)
    with torch.no_grad():
        out = net(jdrl_ext.flow_warp(sharp, one_px_right(blurry, sharp)), blurry)
    assert torch.equal(radii["reblur"], implied_radius(out.seeds, out.weights, net.support)[0])
    # Not R on the estimate, as an R trained on Eq. 2 is scored.
    with torch.no_grad():
        on_estimate = net(estimate, blurry)
    assert not torch.allclose(radii["reblur"], implied_radius(on_estimate.seeds, on_estimate.weights, net.support)[0])
    with pytest.raises(ValueError, match="reblur_anchor"):
        defocus_radii(blurry, estimate, None, (net, config))


def test_a_checkpoint_takes_the_loss_settings_of_its_time():
    """Keys a checkpoint's config predates are read as they were then (no bound, sRGB, no
    pretraining, no anchor, no seed or logit penalty, a masked fit), not as today's defaults; what it has is kept."""
    from jdrl.defocus import checkpoint_loss_config

    old = checkpoint_loss_config({"config": {"loss": {"alpha": 0.5, "seed_bound": 2.0}}})
    assert (old.seed_bound, old.weight_logit_bound, old.reblur_space) == (2.0, 0.0, "srgb")
    assert (old.reblur_pretrain, old.reblur_anchor, old.seed_penalty, old.logit_penalty) == (False, False, 0.0, 0.0)
    assert old.reblur_fit_mask
    new = checkpoint_loss_config({"config": {"loss": {"seed_penalty": 0.01, "logit_penalty": 0.02, "reblur_anchor": True,
                                                      "reblur_fit_mask": False}}})
    assert new.seed_penalty == 0.01 and new.seed_bound == 0.0 and new.logit_penalty == 0.02
    assert new.reblur_anchor and not new.reblur_fit_mask
    # not written by jdrl train: today's defaults
    today = checkpoint_loss_config({})
    assert (today.seed_penalty, today.logit_penalty, today.reblur_anchor, today.reblur_fit_mask) == (0.01, 0.01, True, False)
