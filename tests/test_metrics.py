"""Tests of PSNR/SSIM (against scikit-image), optional LPIPS, and flow-aligned metrics."""

from __future__ import annotations

import math

import cv2
import pytest
import skimage.data
import torch
from jdrl.flow import DISFlow
from jdrl.metrics import aligned_metrics, load_lpips, paired_difference, psnr, ssim
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def photo(height: int, width: int) -> torch.Tensor:
    rgb = cv2.resize(skimage.data.astronaut()[:400, 50:450], (width + 8, height + 8), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 29, 47), (1, 7, 9)])
def test_psnr_and_ssim_equal_scikit_image(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    target = torch.rand(shape, generator=generator)
    pred = (target + 0.1 * torch.randn(shape, generator=generator)).clamp(0, 1)
    pred_hwc, target_hwc = pred.permute(1, 2, 0).double().numpy(), target.permute(1, 2, 0).double().numpy()
    expected_psnr = peak_signal_noise_ratio(target_hwc, pred_hwc, data_range=1.0)
    expected_ssim = structural_similarity(pred_hwc, target_hwc, win_size=7, data_range=1.0, channel_axis=2)
    assert abs(float(psnr(pred, target)) - expected_psnr) < 1e-9
    assert abs(float(ssim(pred, target)) - expected_ssim) < 1e-7


def test_batched_metrics_are_per_image():
    target = torch.rand(3, 3, 24, 20)
    pred = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    batched = ssim(pred, target)
    assert batched.shape == (3,)
    for index in range(3):
        assert abs(float(batched[index]) - float(ssim(pred[index], target[index]))) < 1e-12
    assert psnr(pred, target).shape == (3,)
    assert math.isinf(float(psnr(target[0], target[0]))) and abs(float(ssim(target[0], target[0])) - 1.0) < 1e-12


def test_metric_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(3, 8, 8\) and \(3, 8, 9\)"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(torch.rand(3, 6, 8), torch.rand(3, 6, 8))


def test_lpips_is_loaded_only_from_local_weights():
    metric, reason = load_lpips()
    if metric is None:
        assert reason  # reported as skipped, with the reason; never an exception, never a download
    else:
        image = torch.rand(1, 3, 32, 32)
        assert float(metric(image, image)) < 1e-6


def test_aligned_metrics_beat_unaligned_ones_on_a_shifted_pair():
    image = photo(96, 96)
    pred = image[:, 4:-4, 4:-4].unsqueeze(0)
    sharp = image[:, 6:-2, 3:-5].unsqueeze(0)  # the same scene, 2 px down and 1 px left
    metrics = aligned_metrics(pred, sharp, DISFlow())
    assert set(metrics) == {"psnr", "ssim", "psnr_unaligned", "ssim_unaligned"}
    assert metrics["psnr"] > metrics["psnr_unaligned"] + 8.0
    assert metrics["ssim"] > metrics["ssim_unaligned"] + 0.1
    assert metrics["psnr"] > 30.0

    calls = []

    def fake_lpips(a, b):
        calls.append(1)
        return (a - b).abs().flatten(1).mean(1)

    with_lpips = aligned_metrics(pred[0], sharp[0], DISFlow(), lpips_metric=fake_lpips)
    assert len(calls) == 2 and with_lpips["lpips"] < with_lpips["lpips_unaligned"]


def test_paired_difference_is_the_mean_difference_and_its_standard_error():
    # Differences 1, 2, -1: mean 2/3, sample variance ((1/3)^2 + (4/3)^2 + (5/3)^2) / 2 = 7/3.
    result = paired_difference([11.0, 12.0, 9.0], [10.0, 10.0, 10.0])
    assert result == pytest.approx({"mean": 2 / 3, "standard_error": math.sqrt(7 / 3 / 3), "wins": 2, "pairs": 3})
    assert paired_difference([1.0], [0.5])["standard_error"] is None
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0, 2.0], [1.0])
    # By photo: means 1.5 (a) and -1 (b); their standard deviation sqrt(2 * 1.25^2) over sqrt(2).
    grouped = paired_difference([11.0, 12.0, 9.0], [10.0, 10.0, 10.0], ["a", "a", "b"])
    assert grouped["by_group"] == pytest.approx({"a": 1.5, "b": -1.0})
    assert grouped["group_standard_error"] == pytest.approx(1.25)
    assert grouped["standard_error"] == pytest.approx(result["standard_error"])
    assert paired_difference([1.0, 2.0], [0.0, 0.0], ["a", "a"])["group_standard_error"] is None
    with pytest.raises(ValueError, match="one label per pair"):
        paired_difference([1.0, 2.0], [0.0, 0.0], ["a"])
