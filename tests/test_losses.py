"""Tests of jdrl.losses: every term against a value worked out by hand, the calibration mask's
floor, the pseudo defocus map, and every ablation variant end to end on a tiny net."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import jdrl_ext
from jdrl.losses import (
    MASK_TAU_PIXELS,
    VARIANTS,
    JDRLLoss,
    LossConfig,
    calibration_mask,
    charbonnier,
    pseudo_defocus_map,
    texture_gate,
    variant_overrides,
    warp_bicubic,
)
from jdrl.models.reblur_net import ReblurOutput

# benchmarks/deformation_shift.py's Fourier shift and Gaussian blur make the photo pairs of the
# flow_refine tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

EPS2 = 1e-6  # eps^2 for the default eps = 1e-3


class ConstantFlow:
    """A fake estimator: returns a fixed flow and records what it was asked."""

    def __init__(self, flow_x: list[float]) -> None:
        self.flow_x = torch.tensor(flow_x, dtype=torch.float64)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        self.calls.append((reference, moving))
        batch, _, height, width = reference.shape
        flow = reference.new_zeros(batch, 2, height, width)
        flow[:, 0] = self.flow_x.to(reference.dtype).expand(batch, height, width)
        return flow


class FixedReblur(torch.nn.Module):
    """A fake reblurring net: reblurred = 0.5 * I_hat; constant seeds (2, 4) and weights (3/4, 1/4), m = 2."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        self.last_seeds: torch.Tensor | None = None

    def forward(self, sharp_est: torch.Tensor, blurry: torch.Tensor):
        batch, _, height, width = sharp_est.shape
        seeds = torch.tensor([2.0, 4.0], dtype=sharp_est.dtype).view(1, 2, 1, 1).expand(batch, 2, height, width)
        seeds = seeds.clone().requires_grad_(True)
        weights = torch.tensor([0.75, 0.25], dtype=sharp_est.dtype).view(1, 2, 1, 1).expand(batch, 2, height, width)
        self.last_seeds = seeds
        return type("Out", (), {"reblurred": self.scale * sharp_est, "seeds": seeds, "weights": weights})()


def row(values: list[float]) -> torch.Tensor:
    """A (1, 1, 1, W) float64 image."""
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, -1)


# ---------------------------------------------------------------- charbonnier

def test_charbonnier_by_hand():
    diff = torch.tensor([0.0, math.sqrt(3) * 1e-3], dtype=torch.float64).view(1, 1, 1, 2)
    # sqrt(0 + 1e-6) = 1e-3 and sqrt(3e-6 + 1e-6) = 2e-3: mean 1.5e-3.
    assert charbonnier(diff).item() == pytest.approx(1.5e-3, rel=1e-12)
    assert charbonnier(diff, eps=2e-3).item() == pytest.approx((2e-3 + math.sqrt(7e-6)) / 2, rel=1e-12)


def test_charbonnier_mask_averages_over_kept_elements_and_broadcasts_over_channels():
    diff = torch.tensor([[0.0, 0.3], [0.4, 5.0]], dtype=torch.float64).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    diff[:, 1] *= 2
    mask = torch.tensor([[True, True], [True, False]]).view(1, 1, 2, 2)
    kept = [0.0, 0.3, 0.4, 0.0, 0.6, 0.8]
    expected = sum(math.sqrt(v * v + EPS2) for v in kept) / 6
    assert charbonnier(diff, mask).item() == pytest.approx(expected, rel=1e-12)
    # A float mask is a weighted mean.
    weights = mask.double() * 0.5
    assert charbonnier(diff, weights).item() == pytest.approx(expected, rel=1e-12)


def test_charbonnier_empty_mask_is_zero_with_zero_gradient():
    diff = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    value = charbonnier(diff, torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(diff.grad, torch.zeros_like(diff))


def test_charbonnier_rejects_a_mask_that_does_not_broadcast():
    with pytest.raises(ValueError, match="mask"):
        charbonnier(torch.zeros(1, 3, 4, 4), torch.ones(1, 2, 4, 4))


# ---------------------------------------------------------------- calibration mask

def test_calibration_mask_by_hand_per_sample():
    flow = torch.zeros(2, 2, 1, 4, dtype=torch.float64)
    flow[0, 0, 0] = torch.tensor([1.0, 1.0, 1.0, 5.0])  # |n| mean 2
    flow[1, 1, 0] = torch.tensor([-10.0, -10.0, -10.0, -12.0])  # |n| mean 10.5, tolerance 3.675
    # Eq. 6 as printed (tau = 0): sample 0's tolerance 0.7 excludes |1-2| = 1 and |5-2| = 3.
    literal = calibration_mask(flow, lam=0.35, tau=0.0)
    assert literal.shape == (2, 1, 1, 4)
    assert literal[0].flatten().tolist() == [False, False, False, False]
    assert literal[1].flatten().tolist() == [True, True, True, True]
    # With a 1 px floor sample 0 keeps the three consistent pixels and still drops the outlier.
    floored = calibration_mask(flow, lam=0.35, tau=1.0)
    assert floored[0].flatten().tolist() == [True, True, True, False]
    assert floored[1].flatten().tolist() == [True, True, True, True]


def test_calibration_mask_floor_when_mean_flow_is_about_zero():
    """Nearly aligned pair: an exactly zero flow on 95% of the pixels and 4 px outliers elsewhere.

    Read literally, Eq. 6 keeps nothing (every zero pixel is `nbar` away from the mean, more than
    lambda * nbar); with the floor the aligned pixels stay and the outliers still go.
    """
    flow = torch.zeros(1, 2, 20, 20)
    outliers = torch.zeros(20, 20, dtype=torch.bool)
    outliers.view(-1)[::20] = True  # 20 of 400 pixels
    flow[0, 0][outliers] = 4.0
    without_floor = calibration_mask(flow, tau=0.0)
    with_floor = calibration_mask(flow)  # default tau = MASK_TAU_PIXELS
    assert MASK_TAU_PIXELS == 1.0
    assert without_floor.float().mean().item() == 0.0
    assert with_floor.float().mean().item() == pytest.approx(0.95)
    assert not with_floor[0, 0][outliers].any()


def test_calibration_mask_floor_on_dis_flow_of_an_aligned_blurry_sharp_pair():
    """The situation of the first T epochs: DIS between a blurry, noisy image and its aligned sharp
    version. The flow is sub-pixel noise around ~0.1-0.2 px; without the floor most pixels are lost."""
    from jdrl.flow import DISFlow

    generator = torch.Generator().manual_seed(0)
    texture = torch.rand(1, 3, 8, 8, generator=generator)
    sharp = F.interpolate(texture, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    blurry = F.avg_pool2d(F.pad(sharp, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
    blurry = (blurry + 0.02 * torch.randn(blurry.shape, generator=generator)).clamp(0, 1)
    flow = DISFlow()(blurry, sharp)
    assert flow.norm(dim=1).mean().item() < 0.5
    kept_without_floor = calibration_mask(flow, tau=0.0).float().mean().item()
    kept_with_floor = calibration_mask(flow).float().mean().item()
    assert kept_without_floor < 0.5
    assert kept_with_floor > 0.95


def test_calibration_mask_rejects_bad_shapes():
    with pytest.raises(ValueError, match="flow"):
        calibration_mask(torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------- pseudo defocus map

def test_pseudo_defocus_map_by_hand():
    levels = 3  # S(3) = 2 + 3 = 5 seed channels: level 1 -> channels 0-1, level 2 -> channels 2-4
    seeds = torch.arange(1.0, 6.0).view(1, 5, 1, 1).repeat(2, 1, 2, 3)
    weights = torch.tensor([0.5, 0.2, 0.3]).view(1, 3, 1, 1).repeat(2, 1, 2, 3)
    expected = torch.tensor([0.2 * 1, 0.2 * 2, 0.3 * 3, 0.3 * 4, 0.3 * 5]).view(1, 5, 1, 1)
    result = pseudo_defocus_map(seeds, weights)
    assert result.shape == (2, 5, 2, 3)
    assert torch.allclose(result, expected.expand_as(result))
    assert torch.equal(pseudo_defocus_map(seeds, weights, weighted=False), seeds)
    assert levels == weights.shape[1]


def test_pseudo_defocus_map_uses_the_packed_layout_of_jdrl_ext():
    levels = 8
    seeds = torch.randn(1, jdrl_ext.seed_channels(levels), 3, 3)
    weights = torch.softmax(torch.randn(1, levels, 3, 3), dim=1)
    result = pseudo_defocus_map(seeds, weights)
    for radius in range(1, levels):
        channels = jdrl_ext.level_slice(radius)
        assert torch.allclose(result[:, channels], weights[:, radius : radius + 1] * seeds[:, channels])


def test_pseudo_defocus_map_names_both_counts_on_mismatch():
    with pytest.raises(ValueError, match=r"34 channels.*m = 8.*35"):
        pseudo_defocus_map(torch.zeros(1, 34, 2, 2), torch.zeros(1, 8, 2, 2))


# ---------------------------------------------------------------- JDRLLoss terms by hand

SHARP = [0.1, 0.2, 0.3, 0.4]
ESTIMATE = [0.1, 0.2, 0.3, 0.5]


def deblur_only(**overrides) -> LossConfig:
    return LossConfig(reblurring=False, pseudo_supervision=False, **overrides)


def test_cycle_deformation_by_hand():
    # Flow +1 px in x everywhere: warp(I)(x) = I(min(x + 1, 3)) with border clamping.
    estimator = ConstantFlow([1.0, 1.0, 1.0, 1.0])
    loss = JDRLLoss(deblur_only(), estimator)
    estimate = row(ESTIMATE).requires_grad_(True)
    out = loss(row(SHARP), row(SHARP), estimate, None, epoch=100)
    # warp(I_S) = [.2 .3 .4 .4] - I_hat = [.1 .1 .1 -.1]; warp(I_hat) = [.2 .3 .5 .5] - I_S = [.1 .1 .2 .1].
    forward_term = math.sqrt(0.01 + EPS2)
    backward_term = (3 * math.sqrt(0.01 + EPS2) + math.sqrt(0.04 + EPS2)) / 4
    assert out.terms["deblur"].item() == pytest.approx(forward_term + backward_term, rel=1e-12)
    assert out.total.item() == pytest.approx(forward_term + backward_term, rel=1e-12)
    assert set(out.terms) == {"deblur"}
    assert out.stats["mask_kept"].item() == 1.0
    # The gradient reaches I_hat directly and through the differentiable warp.
    out.total.backward()
    assert estimate.grad is not None and estimate.grad.abs().sum() > 0


def test_one_way_deformation_by_hand():
    estimator = ConstantFlow([1.0, 1.0, 1.0, 1.0])
    loss = JDRLLoss(deblur_only(cycle_deformation=False), estimator)
    out = loss(row(SHARP), row(SHARP), row(ESTIMATE), None, epoch=100)
    assert out.terms["deblur"].item() == pytest.approx(math.sqrt(0.01 + EPS2), rel=1e-12)
    assert len(estimator.calls) == 1


def test_calibration_mask_inside_the_deblurring_loss_by_hand():
    # |flow| = [1 1 1 5]: mean 2; with the 1 px floor the last pixel is masked out.
    estimator = ConstantFlow([1.0, 1.0, 1.0, 5.0])
    out = JDRLLoss(deblur_only(cycle_deformation=False), estimator)(row(SHARP), row(SHARP), row(ESTIMATE), None, 100)
    assert out.terms["deblur"].item() == pytest.approx(math.sqrt(0.01 + EPS2), rel=1e-12)
    assert out.stats["mask_kept"].item() == pytest.approx(0.75)
    # Eq. 6 without the floor masks out everything: an empty mask costs 0.
    literal = JDRLLoss(deblur_only(cycle_deformation=False, mask_tau=0.0), estimator)
    assert literal(row(SHARP), row(SHARP), row(ESTIMATE), None, 100).terms["deblur"].item() == 0.0
    # Without the mask every pixel counts: [.1 .1 .1] and warp(I_S)(3) = .4 vs .5.
    unmasked = JDRLLoss(deblur_only(cycle_deformation=False, calibration_mask=False), estimator)
    out = unmasked(row(SHARP), row(SHARP), row(ESTIMATE), None, 100)
    assert out.terms["deblur"].item() == pytest.approx(math.sqrt(0.01 + EPS2), rel=1e-12)
    assert "mask_kept" not in out.stats


def test_plain_l1_by_hand():
    out = JDRLLoss(deblur_only(deblur_loss="l1"), None)(row(SHARP), row(SHARP), row(ESTIMATE), None, 0)
    assert out.terms["deblur"].item() == pytest.approx(0.1 / 4, rel=1e-12)


def test_flow_is_estimated_against_the_blurry_input_during_the_warm_up():
    estimator = ConstantFlow([0.0] * 4)
    loss = JDRLLoss(deblur_only(flow_warmup_epochs=15), estimator)
    blurry, sharp, estimate = row([0.9] * 4), row(SHARP), row(ESTIMATE)
    loss(blurry, sharp, estimate, None, epoch=14)
    (ref1, mov1), (ref2, mov2) = estimator.calls
    assert torch.equal(ref1, blurry) and torch.equal(mov1, sharp)  # warp(I_S -> I_B)
    assert torch.equal(ref2, sharp) and torch.equal(mov2, blurry)  # warp(I_B -> I_S)
    estimator.calls.clear()
    loss(blurry, sharp, estimate, None, epoch=15)
    (ref1, mov1), (ref2, mov2) = estimator.calls
    assert torch.equal(ref1, estimate) and torch.equal(mov2, estimate)


def test_flow_reference_blurry_keeps_the_warm_up_flow_after_it():
    blurry, sharp, estimate = row([0.9] * 4), row(SHARP), row(ESTIMATE)
    for epoch in (14, 15, 100):
        estimator = ConstantFlow([0.0] * 4)
        JDRLLoss(deblur_only(flow_warmup_epochs=15, flow_reference="blurry"), estimator)(blurry, sharp, estimate, None, epoch)
        (ref1, mov1), (ref2, mov2) = estimator.calls
        assert torch.equal(ref1, blurry) and torch.equal(mov1, sharp), epoch
        assert torch.equal(ref2, sharp) and torch.equal(mov2, blurry), epoch
    with pytest.raises(ValueError, match="loss.flow_reference"):
        LossConfig(flow_reference="sharp")


def test_flow_reference_blurry_gives_an_anchored_r_the_same_aligned_pair_with_one_flow_less():
    from jdrl.flow import DISFlow

    class CountingFlow(DISFlow):
        calls = 0

        def __call__(self, reference, moving):
            CountingFlow.calls += 1
            return super().__call__(reference, moving)

    torch.manual_seed(0)
    blurry, sharp, estimate = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    fits = {}
    for reference in ("estimate", "blurry"):
        torch.manual_seed(1)  # the same R for both
        # With the fit's mask on, the reused pair must carry the mask of its own flow too.
        config = LossConfig(flow_warmup_epochs=1, reblur_anchor=True, reblur_fit_mask=True, flow_reference=reference)
        loss = JDRLLoss(config, CountingFlow(), levels=8)
        CountingFlow.calls = 0
        out = loss(blurry, sharp, estimate, torch.zeros(1, 35, 24, 24), epoch=1)
        fits[reference] = (out.terms["reblur_fit"].item(), CountingFlow.calls)
    # R fits warp(I_S -> I_B) either way; against I_B, L_D's first flow is that one.
    assert fits["blurry"][0] == pytest.approx(fits["estimate"][0], rel=1e-6)
    assert fits["estimate"][1] == 3 and fits["blurry"][1] == 2


class GaussianReblur(torch.nn.Module):
    """A stand-in for R that knows the blur: a Gaussian of ``sigma`` px everywhere; its seeds and
    weights are placeholders of R's shapes (m = 8), ignored by ``blur``."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma
        self.scale = torch.nn.Parameter(torch.ones(()))  # something for the fit's gradient to reach

    def forward(self, sharp_est, blurry):
        batch, _, height, width = sharp_est.shape
        seeds = (self.scale * torch.ones(batch, 35, height, width)).to(sharp_est.dtype)
        weights = torch.full((batch, 8, height, width), 1 / 8, dtype=sharp_est.dtype)
        return ReblurOutput(self.blur(sharp_est, seeds, weights) * self.scale, seeds, weights, None)

    def blur(self, image, seeds, weights):
        from deformation_shift import gaussian_blur

        return gaussian_blur(image, self.sigma)


def _shifted_photo_pair():
    """Astronaut's face: the truth, I_S moved by (0.6, -0.4) px (a Fourier shift), and I_B, the
    truth blurred by a Gaussian of 2 px; -> (blurry, sharp, truth, the true flow from I_B to I_S)."""
    from deformation_shift import fourier_shift, gaussian_blur
    from skimage import data

    truth = torch.from_numpy(data.astronaut()[100:196, 180:276]).permute(2, 0, 1)[None].double() / 255
    sharp = fourier_shift(truth, 0.6, -0.4).float().clamp(0, 1)
    truth = truth.float()
    return gaussian_blur(truth, 2.0), sharp, truth, torch.tensor([0.6, -0.4])


def test_flow_refine_estimates_both_flows_between_equal_blurs():
    from jdrl.flow import DISFlow

    class RecordingFlow(DISFlow):
        def __init__(self):
            super().__init__()
            self.calls, self.flows = [], []

        def __call__(self, reference, moving):
            self.calls.append((reference, moving))
            self.flows.append(super().__call__(reference, moving))
            return self.flows[-1]

    blurry, sharp, truth, true_flow = _shifted_photo_pair()
    config = LossConfig(flow_warmup_epochs=1, reblur_anchor=True, flow_reference="blurry", flow_refine=True,
                        pseudo_supervision=False)
    estimator = RecordingFlow()
    loss = JDRLLoss(config, estimator, levels=8, reblur_net=GaussianReblur(2.0))
    out = loss(blurry, sharp, truth, None, epoch=1)
    # The first flow (R's fit), the flow from I_S to I_B (R's blur into I_S's frame), then L_D's two.
    (ref1, mov1), (ref2, mov2), (ref3, mov3), (ref4, mov4) = estimator.calls
    assert torch.equal(ref1, blurry) and torch.equal(mov1, sharp)
    assert torch.equal(ref2, sharp) and torch.equal(mov2, blurry)
    blurred_sharp = GaussianReblur(2.0).blur(sharp, None, None)
    assert torch.equal(ref3, blurry) and torch.allclose(mov3, blurred_sharp.clamp(0, 1))
    assert torch.allclose(ref4, blurred_sharp.clamp(0, 1)) and torch.equal(mov4, blurry)
    # The loss's refined flow finds the true shift better than its first flow, between the blurry and
    # the sharp image (the reverse flows likewise, towards minus the shift).
    inside = (..., slice(12, -12), slice(12, -12))
    first, back, refined, refined_back = (flow[inside].mean(dim=(2, 3))[0] for flow in estimator.flows)
    assert (refined - true_flow).norm() < 0.5 * (first - true_flow).norm()
    assert (refined_back + true_flow).norm() < 0.5 * (back + true_flow).norm()
    assert out.stats["flow_refine_change"] > 0.01
    # R's fit still trains R (on the first target), and L_D's value is that of the refined flows.
    out.total.backward()
    assert loss.reblur_net.scale.grad is not None and loss.reblur_net.scale.grad != 0
    plain = JDRLLoss(LossConfig(flow_warmup_epochs=1, reblur_anchor=True, flow_reference="blurry", pseudo_supervision=False),
                     estimator, levels=8, reblur_net=GaussianReblur(2.0))
    unrefined = plain(blurry, sharp, truth, None, epoch=1).terms
    assert float(unrefined["deblur"]) > float(out.terms["deblur"])
    assert float(unrefined["reblur_fit"].detach()) == pytest.approx(float(out.terms["reblur_fit"].detach()))
    # In the warm-up R is not anchored yet: no refinement, the two flows of the warm-up.
    estimator.calls.clear()
    assert "flow_refine_change" not in loss(blurry, sharp, truth, None, epoch=0).stats and len(estimator.calls) == 2
    # Without the cycle term the reverse flow is not estimated again.
    estimator.calls.clear()
    JDRLLoss(LossConfig(flow_warmup_epochs=1, flow_reference="blurry", flow_refine=True, pseudo_supervision=False,
                        cycle_deformation=False), estimator, levels=8, reblur_net=GaussianReblur(2.0))(blurry, sharp, truth, None, epoch=1)
    assert len(estimator.calls) == 3


def test_flow_refine_carries_rs_blur_into_the_sharp_frame_by_the_flow_from_i_s_to_i_b():
    # A fake estimator: +3 px along x from I_B to I_S, -3 px back (told apart by which image is the reference).
    blurry, sharp = torch.rand(1, 3, 12, 16), torch.rand(1, 3, 12, 16)

    def estimator(reference, moving):
        flow = reference.new_zeros(reference.shape[0], 2, *reference.shape[2:])
        flow[:, 0] = -3.0 if torch.equal(reference, sharp) else 3.0
        return flow

    class RampReblur(torch.nn.Module):
        """R whose seeds and level weights ramp along x, so that carrying them one way or the
        other differs; records what ``blur`` receives."""

        def __init__(self):
            super().__init__()
            self.received = []

        def forward(self, sharp_est, blurry):
            ramp = torch.linspace(0, 1, sharp_est.shape[-1]).expand(1, 1, *sharp_est.shape[-2:])
            seeds = ramp.expand(1, 35, -1, -1).clone()
            weights = torch.cat([ramp, 1 - ramp, torch.zeros(1, 6, *ramp.shape[-2:])], dim=1)
            return ReblurOutput(self.blur(sharp_est, seeds, weights), seeds, weights, None)

        def blur(self, image, seeds, weights):
            self.received.append((image, seeds, weights))
            return image * 0.5

    reblur_net = RampReblur()
    config = LossConfig(flow_warmup_epochs=0, flow_reference="blurry", flow_refine=True, pseudo_supervision=False)
    JDRLLoss(config, estimator, levels=8, reblur_net=reblur_net)(blurry, sharp, torch.rand(1, 3, 12, 16), None, epoch=0)
    (_, fit_seeds, fit_weights), (image, seeds, weights) = reblur_net.received[:2]
    to_blurry = estimator(sharp, blurry)
    assert torch.equal(image, sharp)
    assert torch.allclose(seeds, jdrl_ext.flow_warp(fit_seeds, to_blurry, padding_mode="border"))
    assert torch.allclose(weights, jdrl_ext.flow_warp(fit_weights, to_blurry, padding_mode="border"))
    assert not torch.allclose(weights, jdrl_ext.flow_warp(fit_weights, -to_blurry, padding_mode="border"))
    assert torch.allclose(weights.sum(dim=1), torch.ones(1, 12, 16))  # still a convex combination


def test_flow_refine_trains_r_by_its_fit_alone():
    from jdrl.flow import DISFlow

    torch.manual_seed(0)
    blurry, sharp, estimate = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24, requires_grad=True)
    defocus_map = torch.rand(1, 35, 24, 24, requires_grad=True)
    config = LossConfig(flow_warmup_epochs=1, flow_reference="blurry", flow_refine=True)
    loss = JDRLLoss(config, DISFlow(), levels=8)
    out = loss(blurry, sharp, estimate, defocus_map, epoch=1)
    parameters = list(loss.reblur_net.parameters())
    for name in ("deblur", "reblur", "pseudo"):
        grads = torch.autograd.grad(out.terms[name], parameters, retain_graph=True, allow_unused=True)
        assert all(grad is None or not grad.any() for grad in grads), name
    assert torch.autograd.grad(out.terms["deblur"] + out.terms["reblur"], estimate, retain_graph=True)[0].abs().sum() > 0
    grads = torch.autograd.grad(out.terms["reblur_fit"], parameters, allow_unused=True)
    assert any(grad is not None and grad.abs().sum() > 0 for grad in grads)


def test_flow_refine_needs_the_anchored_r_and_the_flow_against_the_input():
    for overrides in ({"flow_reference": "estimate"}, {"reblur_anchor": False}, {"reblurring": False, "pseudo_supervision": False},
                      {"deblur_loss": "l1"}):
        with pytest.raises(ValueError, match="loss.flow_refine"):
            LossConfig(**{"flow_refine": True, "flow_reference": "blurry", **overrides})
    assert LossConfig(flow_refine=True, flow_reference="blurry").flow_refine


def test_flow_carries_no_gradient_to_the_estimate():
    seen = []

    def estimator(reference, moving):
        seen.append(torch.is_grad_enabled() or reference.requires_grad or moving.requires_grad)
        return torch.zeros(reference.shape[0], 2, *reference.shape[2:], dtype=reference.dtype)

    estimate = row(ESTIMATE).requires_grad_(True)
    JDRLLoss(deblur_only(), estimator)(row(SHARP), row(SHARP), estimate, None, 100).total.backward()
    assert seen == [False, False]


def test_eq2_and_eq1_by_hand():
    estimator = ConstantFlow([1.0, 1.0, 1.0, 1.0])
    blurry = row([0.3] * 4)
    deblur = math.sqrt(0.01 + EPS2) + (3 * math.sqrt(0.01 + EPS2) + math.sqrt(0.04 + EPS2)) / 4
    # L_R: 0.5 * I_hat - I_B = [-.25 -.2 -.15 -.05].
    reblur = sum(math.sqrt(v * v + EPS2) for v in (0.25, 0.2, 0.15, 0.05)) / 4
    # B_P = w_1 * (2, 4) = (0.5, 1.0) against a zero defocus map.
    pseudo = (math.sqrt(0.25 + EPS2) + math.sqrt(1.0 + EPS2)) / 2

    fake = FixedReblur()
    # The paper's equations: without our seed penalty (tested on its own below).
    eq2 = JDRLLoss(LossConfig(reblur_anchor=False, seed_penalty=0.0), estimator, levels=2, reblur_net=fake)
    defocus_map = torch.zeros(1, 2, 1, 4, dtype=torch.float64, requires_grad=True)
    out = eq2(blurry, row(SHARP), row(ESTIMATE), defocus_map, epoch=100)
    assert out.terms["deblur"].item() == pytest.approx(deblur, rel=1e-12)
    assert out.terms["reblur"].item() == pytest.approx(reblur, rel=1e-12)
    assert out.terms["pseudo"].item() == pytest.approx(pseudo, rel=1e-12)
    assert out.total.item() == pytest.approx(deblur + 0.5 * reblur + 0.5 * pseudo, rel=1e-12)
    torch.testing.assert_close(out.reblurred, 0.5 * row(ESTIMATE))
    out.total.backward()
    # B_P is a target: L_P reaches the defocus map, never the reblurring net's seeds.
    assert defocus_map.grad is not None and defocus_map.grad.abs().sum() > 0
    assert fake.last_seeds.grad is None

    raw = JDRLLoss(LossConfig(reblur_anchor=False, weighted_pseudo_map=False, seed_penalty=0.0), estimator, levels=2, reblur_net=FixedReblur())
    out = raw(blurry, row(SHARP), row(ESTIMATE), torch.zeros(1, 2, 1, 4, dtype=torch.float64), epoch=100)
    assert out.terms["pseudo"].item() == pytest.approx((math.sqrt(4 + EPS2) + math.sqrt(16 + EPS2)) / 2, rel=1e-12)

    eq1 = JDRLLoss(LossConfig(reblur_anchor=False, pseudo_supervision=False, alpha=0.3, seed_penalty=0.0), estimator, levels=2, reblur_net=FixedReblur())
    out = eq1(blurry, row(SHARP), row(ESTIMATE), None, epoch=100)
    assert set(out.terms) == {"deblur", "reblur"}
    assert out.total.item() == pytest.approx(deblur + 0.3 * reblur, rel=1e-12)


def test_seed_penalty_by_hand():
    """Seeds (2, 4) with margin 3: only the 4 is penalized, by (4 - 3)^2, averaged over the two
    seed channels: 0.5 * weight, inside L_R (scaled by alpha); switched off, no term."""
    estimator = ConstantFlow([1.0, 1.0, 1.0, 1.0])
    blurry = row([0.3] * 4)
    plain = JDRLLoss(LossConfig(reblur_anchor=False, pseudo_supervision=False, seed_penalty=0.0), estimator, levels=2, reblur_net=FixedReblur())
    base = plain(blurry, row(SHARP), row(ESTIMATE), None, epoch=100)
    assert "seed_penalty" not in base.terms
    fake = FixedReblur()
    penalized = JDRLLoss(
        LossConfig(reblur_anchor=False, pseudo_supervision=False, seed_penalty=0.1, seed_penalty_margin=3.0), estimator, levels=2,
        reblur_net=fake,
    )
    out = penalized(blurry, row(SHARP), row(ESTIMATE), None, epoch=100)
    assert out.terms["seed_penalty"].item() == pytest.approx(0.1 * 0.5, rel=1e-12)
    assert out.total.item() == pytest.approx(base.total.item() + 0.5 * 0.1 * 0.5, rel=1e-12)
    out.total.backward()
    grad = fake.last_seeds.grad  # d/ds of 0.5 * 0.1 * mean over 2 channels and 4 pixels of relu(s - 3)^2
    assert torch.all(grad[:, 0] == 0)
    torch.testing.assert_close(grad[:, 1], torch.full_like(grad[:, 1], 0.5 * 0.1 * 2 * 1.0 / 8))
    # During the warm-up it joins R's fit on the aligned target, scaled the same way.
    warm = JDRLLoss(LossConfig(reblur_anchor=False, flow_warmup_epochs=3, seed_penalty=0.1), estimator, levels=2, reblur_net=FixedReblur())
    out = warm(blurry, row(SHARP), row(ESTIMATE), None, epoch=0)
    assert set(out.terms) == {"deblur", "reblur_pretrain", "seed_penalty"}
    expected = out.terms["deblur"] + 0.5 * (out.terms["reblur_pretrain"] + 0.1 * 0.5)
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"seed_penalty": -1.0}, "loss.seed_penalty must be a finite number >= 0"),
        ({"seed_penalty_margin": float("inf")}, "loss.seed_penalty_margin must be a finite number >= 0"),
        ({"seed_penalty": 0.01, "seed_penalty_margin": 6.0}, "must be below loss.seed_bound"),
        ({"logit_penalty": float("nan")}, "loss.logit_penalty must be a finite number >= 0"),
        ({"logit_penalty_margin": -1.0}, "loss.logit_penalty_margin must be a finite number >= 0"),
        ({"logit_penalty": 0.01, "logit_penalty_margin": 7.0}, "must be below loss.weight_logit_bound"),
    ],
)
def test_bound_penalty_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**settings)
    # Unbounded (bound 0), any margin is allowed; so is any margin when the penalty is off.
    LossConfig(weight_logit_bound=0.0, logit_penalty=0.01, logit_penalty_margin=7.0)
    LossConfig(logit_penalty=0.0, logit_penalty_margin=7.0)


class ReblurWithLogits(FixedReblur):
    """FixedReblur whose output also carries level logits (5, -1), as R_wpn's would."""

    def forward(self, sharp_est: torch.Tensor, blurry: torch.Tensor):
        out = super().forward(sharp_est, blurry)
        batch, _, height, width = sharp_est.shape
        logits = torch.tensor([5.0, -1.0], dtype=sharp_est.dtype).view(1, 2, 1, 1).expand(batch, 2, height, width)
        out.level_logits = self.last_logits = logits.clone().requires_grad_(True)
        return out


def test_logit_penalty_by_hand():
    """Logits (5, -1) with margin 3: only the 5 is penalized, by (5 - 3)^2, averaged over the two
    levels: 2 * weight, inside L_R (scaled by alpha) beside the seed penalty; off, no term."""
    estimator = ConstantFlow([1.0, 1.0, 1.0, 1.0])
    blurry = row([0.3] * 4)
    off = JDRLLoss(LossConfig(reblur_anchor=False, pseudo_supervision=False, seed_penalty=0.0, logit_penalty=0.0), estimator, levels=2,
                   reblur_net=ReblurWithLogits())
    base = off(blurry, row(SHARP), row(ESTIMATE), None, epoch=100)
    assert set(base.terms) == {"deblur", "reblur"}
    fake = ReblurWithLogits()
    on = JDRLLoss(
        LossConfig(reblur_anchor=False, pseudo_supervision=False, seed_penalty=0.0, logit_penalty=0.1, logit_penalty_margin=3.0), estimator,
        levels=2, reblur_net=fake,
    )
    out = on(blurry, row(SHARP), row(ESTIMATE), None, epoch=100)
    assert set(out.terms) == {"deblur", "reblur", "logit_penalty"}
    assert out.terms["logit_penalty"].item() == pytest.approx(0.1 * 2.0, rel=1e-12)
    assert out.total.item() == pytest.approx(base.total.item() + 0.5 * 0.1 * 2.0, rel=1e-12)
    out.total.backward()
    grad = fake.last_logits.grad  # d/dl of 0.5 * 0.1 * mean over 2 levels and 4 pixels of relu(l - 3)^2
    assert torch.all(grad[:, 1] == 0)
    torch.testing.assert_close(grad[:, 0], torch.full_like(grad[:, 0], 0.5 * 0.1 * 2 * 2.0 / 8))
    # Both hinges at once: each its own term.
    both = JDRLLoss(LossConfig(reblur_anchor=False, pseudo_supervision=False, seed_penalty=0.1, logit_penalty=0.1), estimator, levels=2,
                    reblur_net=ReblurWithLogits())
    out = both(blurry, row(SHARP), row(ESTIMATE), None, epoch=100)
    assert out.total.item() == pytest.approx(base.total.item() + 0.5 * (0.1 * 0.5 + 0.1 * 2.0), rel=1e-12)


def test_reblurring_joins_after_the_warm_up_when_asked():
    estimator = ConstantFlow([0.0] * 4)
    blurry, sharp, estimate = row([0.3] * 4), row(SHARP), row(ESTIMATE)
    defocus_map = torch.zeros(1, 2, 1, 4, dtype=torch.float64, requires_grad=True)
    fake = FixedReblur()
    delayed = JDRLLoss(
        LossConfig(reblur_anchor=False, flow_warmup_epochs=3, reblur_after_warmup=True, reblur_pretrain=False), estimator, levels=2,
        reblur_net=fake,
    )
    assert [delayed.reblur_active(epoch) for epoch in range(5)] == [False, False, False, True, True]
    out = delayed(blurry, sharp, estimate, defocus_map, epoch=2)
    assert set(out.terms) == {"deblur"} and out.reblurred is None
    assert out.total.item() == out.terms["deblur"].item()
    out = delayed(blurry, sharp, estimate, defocus_map, epoch=3)
    assert set(out.terms) == {"deblur", "reblur", "pseudo", "seed_penalty"}
    out.total.backward()
    assert fake.scale.grad is not None

    from_start = JDRLLoss(LossConfig(reblur_anchor=False, flow_warmup_epochs=3, reblur_after_warmup=False), estimator, levels=2, reblur_net=FixedReblur())
    assert from_start.reblur_active(0)
    assert set(from_start(blurry, sharp, estimate, defocus_map, epoch=0).terms) == {"deblur", "reblur", "pseudo", "seed_penalty"}
    assert not JDRLLoss(deblur_only(), estimator).reblur_active(100)


def test_reblur_pretraining_trains_r_on_the_aligned_target_during_the_warm_up():
    # Flow +1 px: the aligned target is warp(I_S) = I_S(x + 1) = [.2 .3 .4 .4]; FixedReblur halves it.
    estimator = ConstantFlow([1.0] * 4)
    blurry, sharp = row([0.3] * 4), row(SHARP)
    estimate = row(ESTIMATE).requires_grad_(True)
    fake = FixedReblur()
    loss = JDRLLoss(LossConfig(reblur_anchor=False, flow_warmup_epochs=3, seed_penalty=0.0), estimator, levels=2, reblur_net=fake)
    assert [loss.pretrain_active(epoch) for epoch in range(5)] == [True, True, True, False, False]
    out = loss(blurry, sharp, estimate, torch.zeros(1, 2, 1, 4, dtype=torch.float64), epoch=1)
    assert set(out.terms) == {"deblur", "reblur_pretrain"}
    pretrain = sum(math.sqrt(v * v + EPS2) for v in (0.2, 0.15, 0.1, 0.1)) / 4
    assert out.terms["reblur_pretrain"].item() == pytest.approx(pretrain, rel=1e-12)
    assert out.total.item() == pytest.approx(out.terms["deblur"].item() + 0.5 * pretrain, rel=1e-12)
    # It reuses Eq. 7's warm-up flow (I_S onto I_B): no third flow per step.
    assert len(estimator.calls) == 2 and torch.equal(estimator.calls[0][0], blurry)
    # R gets a gradient from it, the deblurred estimate (so F) none.
    assert torch.autograd.grad(out.terms["reblur_pretrain"], estimate, retain_graph=True, allow_unused=True)[0] is None
    out.terms["reblur_pretrain"].backward()
    assert fake.scale.grad is not None and fake.scale.grad.abs().item() > 0
    # After the warm-up L_R takes over; switched off, the warm-up has L_D alone.
    assert "reblur_pretrain" not in loss(blurry, sharp, row(ESTIMATE), torch.zeros(1, 2, 1, 4, dtype=torch.float64), epoch=3).terms
    off = JDRLLoss(LossConfig(reblur_anchor=False, flow_warmup_epochs=3, reblur_pretrain=False), estimator, levels=2, reblur_net=FixedReblur())
    assert set(off(blurry, sharp, row(ESTIMATE), None, epoch=0).terms) == {"deblur"}


def test_reblur_fit_mask_decides_whether_r_fits_the_pixels_the_calibration_mask_drops():
    # Flow 0, 0, 0, 3 px: |n - mean| is 0.75 for the first three (kept: tolerance max(0.35 * 0.75,
    # 1 px)) and 2.25 for the last (dropped). Warped: [.1 .2 .3 .4] (the last by border padding);
    # FixedReblur halves it: differences from I_B = 0.3 are .25 .2 .15 .1.
    blurry, sharp = row([0.3] * 4), row(SHARP)
    charb = [math.sqrt(v * v + EPS2) for v in (0.25, 0.2, 0.15, 0.1)]
    deblur_terms = []
    for fit_mask, expected in ((True, sum(charb[:3]) / 3), (False, sum(charb) / 4)):
        loss = JDRLLoss(LossConfig(reblur_anchor=False, flow_warmup_epochs=3, seed_penalty=0.0, reblur_fit_mask=fit_mask),
                        ConstantFlow([0.0, 0.0, 0.0, 3.0]), levels=2, reblur_net=FixedReblur())
        out = loss(blurry, sharp, row(ESTIMATE), None, epoch=0)
        assert out.terms["reblur_pretrain"].item() == pytest.approx(expected, rel=1e-12), fit_mask
        # Eq. 7's term keeps its mask either way: L_D is the same with and without R's.
        assert out.stats["mask_kept"].item() == pytest.approx(0.75)
        deblur_terms.append(out.terms["deblur"].item())
    assert deblur_terms[0] == deblur_terms[1]
    # The anchored fit after the warm-up follows the same switch.
    class AnchorableReblur(FixedReblur):
        def blur(self, image, seeds, weights):
            return self.scale * image

    for fit_mask, expected in ((True, sum(charb[:3]) / 3), (False, sum(charb) / 4)):
        loss = JDRLLoss(LossConfig(flow_warmup_epochs=0, seed_penalty=0.0, reblur_anchor=True, reblur_fit_mask=fit_mask,
                                   pseudo_supervision=False),
                        ConstantFlow([0.0, 0.0, 0.0, 3.0]), levels=2, reblur_net=AnchorableReblur())
        out = loss(blurry, sharp, row(ESTIMATE), None, epoch=0)
        assert out.terms["reblur_fit"].item() == pytest.approx(expected, rel=1e-12), fit_mask


def test_reblur_pretraining_reaches_every_reblurring_parameter_and_no_deblurring_one():
    from jdrl.flow import DISFlow
    from jdrl.models import build_deblur_net

    torch.manual_seed(0)
    net = build_deblur_net("jdrl", "tiny", 8)
    loss = JDRLLoss(LossConfig(flow_warmup_epochs=2), DISFlow(), levels=8)
    blurry, sharp = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    output = net(blurry)
    out = loss(blurry, sharp, output.sharp, output.defocus_map, epoch=0)
    out.terms["reblur_pretrain"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.reblur_net.parameters())
    assert all(p.grad is None for p in net.parameters())
    # The "l1" deblurring loss has no warm-up flow of its own: the term estimates one.
    l1 = JDRLLoss(LossConfig(deblur_loss="l1", flow_warmup_epochs=2, pseudo_supervision=False), DISFlow(), levels=8)
    assert "reblur_pretrain" in l1(blurry, sharp, output.sharp.detach(), None, epoch=0).terms
    with pytest.raises(ValueError, match="reblur_pretrain"):
        JDRLLoss(LossConfig(deblur_loss="l1", flow_warmup_epochs=2, pseudo_supervision=False), None)


def test_anchored_r_learns_only_from_the_aligned_target_and_l_r_trains_f_alone():
    from jdrl.flow import DISFlow
    from jdrl.models import build_deblur_net

    torch.manual_seed(0)
    net = build_deblur_net("jdrl", "tiny", 8)
    config = LossConfig(flow_warmup_epochs=1, reblur_anchor=True, logit_penalty=0.01)
    loss = JDRLLoss(config, DISFlow(), levels=8)
    blurry, sharp = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    output = net(blurry)
    out = loss(blurry, sharp, output.sharp, output.defocus_map, epoch=1)
    # The seed and logit penalties join the fit, not L_R (whose R outputs are constants here).
    assert set(out.terms) == {"deblur", "reblur_fit", "reblur", "pseudo", "seed_penalty", "logit_penalty"}
    r_params, f_params = list(loss.reblur_net.parameters()), list(net.parameters())
    # L_R and L_P: a gradient for F, none for R.
    for name in ("reblur", "pseudo"):
        grads = torch.autograd.grad(out.terms[name], r_params + f_params, retain_graph=True, allow_unused=True)
        assert all(g is None for g in grads[: len(r_params)]), name
        assert any(g is not None and g.abs().sum() > 0 for g in grads[len(r_params):]), name
    # The fit on the aligned target: every R parameter, no F parameter.
    grads = torch.autograd.grad(out.terms["reblur_fit"], r_params + f_params, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(r_params)])
    assert all(g is None for g in grads[len(r_params):])
    # Without the anchor, L_R trains R as in Eq. 2.
    plain = JDRLLoss(LossConfig(reblur_anchor=False, flow_warmup_epochs=1), DISFlow(), levels=8)
    output = net(blurry)
    out = plain(blurry, sharp, output.sharp, output.defocus_map, epoch=1)
    assert "reblur_fit" not in out.terms
    grads = torch.autograd.grad(out.terms["reblur"], list(plain.reblur_net.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="reblur_anchor"):
        JDRLLoss(LossConfig(deblur_loss="l1", reblur_anchor=True, reblur_pretrain=False, pseudo_supervision=False), None)


def test_texture_gate_is_the_texture_mask_of_the_correlations_per_image():
    """texture_gate (torch, for the loss) against jdrl.defocus.texture_mask (OpenCV): the same
    pixels on photo crops of odd sizes, each image of a batch against its own median, and on an
    image smaller than the Gaussian's reach (the mirrored border repeated); at other sigmas and on
    other crops at most a few pixels apart (float rounding at the median)."""
    import numpy as np
    from skimage import data as photos

    from jdrl.defocus import texture_mask

    crops = [photos.astronaut()[40:171, 60:157], photos.coffee()[200:331, 300:397]]
    arrays = [crop.astype("float32") / 255.0 for crop in crops]
    batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    gate = texture_gate(batch)
    assert gate.shape == (2, 1, 131, 97) and gate.dtype == torch.bool
    for index, array in enumerate(arrays):
        assert torch.equal(gate[index, 0], torch.from_numpy(texture_mask(array)))
    tiny = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(texture_gate(tiny)[0, 0], torch.from_numpy(texture_mask(tiny[0].permute(1, 2, 0).numpy())))
    differing = total = 0
    for photo in (photos.chelsea(), photos.rocket(), np.repeat(photos.camera()[..., None], 3, axis=2)):
        array = photo[100:231, 150:247].astype("float32") / 255.0
        for sigma in (1.1, 2.0, 3.0):  # 1.1: OpenCV's 11 taps, not 2 * round(4 sigma) + 1 = 9
            mine = texture_gate(torch.from_numpy(array).permute(2, 0, 1)[None], sigma)[0, 0].numpy()
            differing += int((mine != texture_mask(array, sigma)).sum())
            total += mine.size
    assert differing <= total // 2000
    with pytest.raises(ValueError, match="texture_gate: image"):
        texture_gate(torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize("reference", ["blurry", "estimate"])
def test_pseudo_mask_texture_counts_l_p_only_where_the_aligned_sharp_image_is_textured(reference):
    """With loss.pseudo_mask=texture, L_P is the Charbonnier mean over the pixels texture_gate keeps
    on I_S aligned to I_B (here by a flow of 8 px, so the textured part moves): the defocus map
    gets no gradient where the aligned image is flat, and changing it there leaves L_P as it was.
    Both ways to the aligned image: the warp of L_D (flow against I_B) and a flow of its own (flow
    against the estimate)."""
    generator = torch.Generator().manual_seed(3)
    sharp = torch.full((1, 3, 16, 32), 0.5, dtype=torch.float64)
    sharp[..., 8:24] = torch.rand(1, 3, 16, 16, generator=generator, dtype=torch.float64)  # textured middle
    # I_S aligned to I_B: moving(p + flow(p)) ~ reference(p), so the texture lands in columns 0..15.
    aligned = jdrl_ext.flow_warp(sharp, torch.stack([torch.full((1, 16, 32), 8.0, dtype=torch.float64),
                                                     torch.zeros(1, 16, 32, dtype=torch.float64)], dim=1))
    gate = texture_gate(aligned)
    assert gate[..., :10].all() and not gate[..., 22:].any() and not torch.equal(gate, texture_gate(sharp))
    # I_B and the estimate textured elsewhere: the gate is read on the aligned sharp image only.
    blurry, estimate = sharp.flip(-1) * 0.9, sharp * 0.95
    config = LossConfig(reblur_anchor=False, seed_penalty=0.0, flow_warmup_epochs=1, flow_reference=reference, pseudo_mask="texture")
    loss = JDRLLoss(config, ConstantFlow([8.0] * 32), levels=2, reblur_net=FixedReblur())
    defocus_map = torch.rand(1, 2, 16, 32, generator=generator, dtype=torch.float64, requires_grad=True)
    out = loss(blurry, sharp, estimate, defocus_map, epoch=5)
    target = torch.tensor([0.5, 1.0], dtype=torch.float64).view(1, 2, 1, 1)  # B_P = 0.25 * (2, 4)
    differences = (target - defocus_map)[gate.expand(1, 2, 16, 32)]
    expected = torch.sqrt(differences * differences + EPS2).mean()
    assert out.terms["pseudo"].item() == pytest.approx(expected.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(out.terms["pseudo"], defocus_map)
    assert grad[..., 22:].abs().sum() == 0 and grad[..., :10].abs().min() > 0
    changed = defocus_map.detach().clone()
    changed[..., 22:] += 3.0
    assert loss(blurry, sharp, estimate, changed, epoch=5).terms["pseudo"].item() == pytest.approx(expected.item(), rel=1e-12)
    # The paper's L_P counts every pixel.
    everywhere = JDRLLoss(LossConfig(reblur_anchor=False, seed_penalty=0.0, flow_warmup_epochs=1, flow_reference=reference),
                          ConstantFlow([8.0] * 32), levels=2, reblur_net=FixedReblur())
    differences = target - defocus_map.detach()
    assert everywhere(blurry, sharp, estimate, defocus_map, epoch=5).terms["pseudo"].item() == pytest.approx(
        torch.sqrt(differences * differences + EPS2).mean().item(), rel=1e-12)


def test_pseudo_mask_texture_needs_a_flow_estimator():
    config = LossConfig(deblur_loss="l1", reblur_anchor=False, reblur_pretrain=False, pseudo_mask="texture")
    with pytest.raises(ValueError, match="loss.pseudo_mask=texture"):
        JDRLLoss(config, None, levels=2, reblur_net=FixedReblur())
    JDRLLoss(LossConfig(deblur_loss="l1", reblur_anchor=False, reblur_pretrain=False), None, levels=2, reblur_net=FixedReblur())


def test_pseudo_supervision_needs_a_defocus_map():
    loss = JDRLLoss(LossConfig(reblur_anchor=False), ConstantFlow([0.0] * 4), levels=2, reblur_net=FixedReblur())
    with pytest.raises(ValueError, match="pseudo_supervision"):
        loss(row(SHARP), row(SHARP), row(ESTIMATE), None, epoch=100)


def test_loss_config_names_bad_options():
    with pytest.raises(ValueError, match="loss.deblur_loss"):
        LossConfig(deblur_loss="l2")
    with pytest.raises(ValueError, match="loss.alpha"):
        LossConfig(alpha=-1)
    for bad in (-2.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="loss.seed_bound"):
            LossConfig(seed_bound=bad)
    for bad in (-1.0, math.inf):
        with pytest.raises(ValueError, match="loss.weight_logit_bound"):
            LossConfig(weight_logit_bound=bad)
    with pytest.raises(ValueError, match="loss.reblur_space"):
        LossConfig(reblur_space="log")
    with pytest.raises(ValueError, match="loss.reblur_transfer"):
        LossConfig(reblur_transfer="gamma3")
    with pytest.raises(ValueError, match="loss.warp_interp"):
        LossConfig(warp_interp="nearest")
    with pytest.raises(ValueError, match="loss.pseudo_mask"):
        LossConfig(pseudo_mask="edges")
    with pytest.raises(ValueError, match="loss.pseudo_supervision"):
        LossConfig(reblurring=False)
    with pytest.raises(ValueError, match="flow_estimator"):
        JDRLLoss(deblur_only(), None)


# ---------------------------------------------------------------- variants

def test_variants_cover_table5_and_eq1_eq2():
    assert {"eq2", "eq1", "unet_eq1", "l1", "no_cycle", "no_mask", "no_reblur", "no_kpn", "no_wpn"} <= set(VARIANTS)
    with pytest.raises(KeyError, match="known"):
        variant_overrides("no_such_variant")


@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("logit_penalty", [0.0, 0.01])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_runs_and_has_its_terms(name, logit_penalty, anchor):
    from jdrl.config import load_config
    from jdrl.flow import DISFlow
    from jdrl.models import build_deblur_net

    config = load_config(None, {**variant_overrides(name), "model.preset": "tiny", "loss.logit_penalty": logit_penalty,
                                "loss.reblur_anchor": anchor})
    torch.manual_seed(0)
    net = build_deblur_net(config.model.arch, config.model.preset, config.model.levels)
    loss = JDRLLoss(config.loss, DISFlow(), levels=config.model.levels)
    blurry, sharp = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    output = net(blurry)
    out = loss(blurry, sharp, output.sharp, output.defocus_map, epoch=config.loss.flow_warmup_epochs)
    out.total.backward()
    assert math.isfinite(out.total.item())
    expected_terms = {"deblur"}
    if config.loss.reblurring:
        expected_terms.add("reblur")
        if anchor:  # R's own fit on the flow-aligned pair; L_R then trains F alone
            expected_terms.add("reblur_fit")
    if config.loss.pseudo_supervision:
        expected_terms.add("pseudo")
    if config.loss.reblurring and config.loss.predict_seeds and config.loss.seed_penalty > 0:
        expected_terms.add("seed_penalty")
    if config.loss.reblurring and config.loss.predict_weights and config.loss.logit_penalty > 0:
        expected_terms.add("logit_penalty")
    assert set(out.terms) == expected_terms
    if loss.reblur_net is not None:
        assert loss.reblur_net.predict_seeds == config.loss.predict_seeds
        assert loss.reblur_net.predict_weights == config.loss.predict_weights
        assert all(p.grad is not None for p in loss.reblur_net.parameters())
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_bicubic_warp_is_the_identity_at_zero_flow_and_flow_warp_at_whole_pixels():
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 9, 11, generator=generator, dtype=torch.float64)
    flow = torch.zeros(2, 2, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(warp_bicubic(image, flow), image, rtol=0, atol=1e-14)
    # At whole-pixel flows the cubic kernel is one tap; border clamping then agrees everywhere.
    flow[:, 0] = torch.randint(-3, 4, (2, 9, 11), generator=generator).double()
    flow[:, 1] = torch.randint(-3, 4, (2, 9, 11), generator=generator).double()
    for padding in ("border", "zeros"):
        torch.testing.assert_close(
            warp_bicubic(image, flow, padding), jdrl_ext.flow_warp(image, flow, padding_mode=padding), rtol=0, atol=1e-14
        )
    with pytest.raises(ValueError, match="padding_mode"):
        warp_bicubic(image, flow, "reflection")
    with pytest.raises(ValueError, match="flow must have shape"):
        warp_bicubic(image, flow[:, :1])


def test_bicubic_warp_blurs_a_fine_pattern_less_than_bilinear_at_half_a_pixel():
    # A cosine of period 4 px moved by half a pixel: bilinear averages two taps and keeps
    # cos(pi / 4) ~ 0.71 of its amplitude; the cubic kernel keeps about 0.97.
    xs = torch.arange(32, dtype=torch.float64)
    image = torch.cos(2 * math.pi * xs / 4 + 0.3).view(1, 1, 1, -1).expand(1, 1, 4, 32).contiguous()
    exact = torch.cos(2 * math.pi * (xs + 0.5) / 4 + 0.3).view(1, 1, 1, -1)
    flow = torch.zeros(1, 2, 4, 32, dtype=torch.float64)
    flow[:, 0] = 0.5
    inside = slice(2, -3)  # away from the clamped border
    bilinear = (jdrl_ext.flow_warp(image, flow) - exact)[..., inside].abs().max().item()
    bicubic = (warp_bicubic(image, flow) - exact)[..., inside].abs().max().item()
    assert bilinear > 0.25
    assert bicubic < 0.05


def test_deformation_loss_warps_with_the_configured_interpolation():
    sharp = row([0.1, 0.5, 0.2, 0.9, 0.3, 0.7, 0.4, 0.6])
    estimate = row([0.2, 0.4, 0.3, 0.8, 0.2, 0.6, 0.5, 0.5]).requires_grad_(True)
    flow = torch.zeros(1, 2, 1, 8, dtype=torch.float64)
    flow[:, 0] = 0.5
    values = {}
    for interp, warp in (("bilinear", jdrl_ext.flow_warp), ("bicubic", warp_bicubic)):
        loss = JDRLLoss(deblur_only(warp_interp=interp, calibration_mask=False), ConstantFlow([0.5] * 8))
        out = loss(sharp, sharp, estimate, None, epoch=100)
        expected = charbonnier(warp(sharp, flow) - estimate) + charbonnier(warp(estimate, flow) - sharp)
        assert out.terms["deblur"].item() == pytest.approx(expected.item(), rel=1e-12)
        (gradient,) = torch.autograd.grad(out.total, estimate)
        assert gradient.abs().sum() > 0
        values[interp] = out.terms["deblur"].item()
    assert values["bilinear"] != pytest.approx(values["bicubic"], rel=1e-3)


def test_an_anchored_r_reads_the_target_warped_as_the_loss_warps():
    from jdrl.defocus import reblur_net_input

    generator = torch.Generator().manual_seed(4)
    blurry, sharp = torch.rand(1, 3, 6, 8, generator=generator, dtype=torch.float64), torch.rand(1, 3, 6, 8, generator=generator, dtype=torch.float64)
    flow = torch.zeros(1, 2, 6, 8, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 0.5, 0.25

    def estimator(reference, moving):
        return flow.clone()

    for interp, warp in (("bilinear", jdrl_ext.flow_warp), ("bicubic", warp_bicubic)):
        config = LossConfig(reblur_anchor=True, warp_interp=interp)
        got = reblur_net_input(blurry, blurry, config, sharp, estimator)
        torch.testing.assert_close(got, warp(sharp, flow), rtol=0, atol=1e-12)
        # The loss's own aligned target (R's fit during the warm-up and after it) is the same.
        aligned, _ = JDRLLoss(config, estimator, levels=8)._aligned_to_blurry(sharp, blurry)
        torch.testing.assert_close(aligned, got, rtol=0, atol=1e-12)
