"""benchmarks/deformation_shift.py: its sub-pixel shift and blur are what they say, L_D of an exact
estimate is its floor, and bad arguments are named."""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import deformation_shift  # noqa: E402


def test_fourier_shift_moves_by_whole_and_half_pixels():
    # Odd sizes: no Nyquist bin, whose half-pixel phase the real part would drop.
    image = torch.rand(1, 3, 11, 9, dtype=torch.float64)
    # A whole pixel is a periodic roll (right, then down).
    assert torch.allclose(deformation_shift.fourier_shift(image, 1.0, 0.0), torch.roll(image, 1, dims=-1), atol=1e-12)
    assert torch.allclose(deformation_shift.fourier_shift(image, 0.0, 2.0), torch.roll(image, 2, dims=-2), atol=1e-12)
    # Two half pixels are one pixel, and a shift keeps the mean.
    half = deformation_shift.fourier_shift(image, 0.5, 0.0)
    assert torch.allclose(deformation_shift.fourier_shift(half, 0.5, 0.0), torch.roll(image, 1, dims=-1), atol=1e-12)
    assert torch.allclose(half.mean(), image.mean(), atol=1e-12)


def test_gaussian_blur_keeps_constants_and_smooths():
    constant = torch.full((1, 3, 9, 9), 0.4)
    assert torch.allclose(deformation_shift.gaussian_blur(constant, 1.0), constant, atol=1e-6)
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[..., 7, 7] = 1.0
    blurred = deformation_shift.gaussian_blur(impulse, 1.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and 0 < blurred[..., 7, 7] < 0.2
    assert deformation_shift.gaussian_blur(impulse, 0.0) is impulse


def test_an_exact_estimate_scores_the_floor_and_a_half_pixel_costs(tmp_path):
    from jdrl.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", n_train=0, n_test=2, size=48, max_radius=3.0, seed=5)
    report = tmp_path / "rows.json"
    argv = ["--data", str(tmp_path / "data"), "--pairs", "2", "--blur", "0", "--shifts", "0", "0.5", "--json", str(report)]
    assert deformation_shift.main(argv) == 0
    result = json.loads(report.read_text())
    assert result["pairs"] == 2
    rows = {(row["axis"], row["shift"]): row for row in result["rows"]}
    # Unshifted and exact: both of Eq. 7's Charbonnier terms sit at eps (1e-3), the pixel loss at eps.
    assert rows["x", 0.0]["deformation"] == pytest.approx(2e-3, rel=1e-3)
    assert rows["x", 0.0]["pixel"] == pytest.approx(1e-3, rel=1e-3)
    for axis in ("x", "y"):
        assert rows[axis, 0.5]["deformation"] > 2 * rows[axis, 0.0]["deformation"]
        assert rows[axis, 0.5]["pixel"] > rows[axis, 0.0]["pixel"]
    # After the warm-up the flow follows the estimate: a whole pixel costs L_D less than the pixel loss.
    argv = ["--data", str(tmp_path / "data"), "--pairs", "2", "--blur", "0", "--shifts", "1", "--json", str(report)]
    assert deformation_shift.main(argv) == 0
    for row in json.loads(report.read_text())["rows"]:
        assert row["deformation"] < row["pixel"]


def test_warp_interp_reaches_the_loss(tmp_path):
    from jdrl.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", n_train=0, n_test=2, size=48, max_radius=3.0, seed=5)
    half_pixel = {}
    for interp in ("bilinear", "bicubic"):
        report = tmp_path / f"{interp}.json"
        argv = ["--data", str(tmp_path / "data"), "--pairs", "2", "--blur", "0", "--shifts", "0", "0.5",
                "--warp-interp", interp, "--json", str(report)]
        assert deformation_shift.main(argv) == 0
        rows = {(row["axis"], row["shift"]): row["deformation"] for row in json.loads(report.read_text())["rows"]}
        assert rows["x", 0.0] == pytest.approx(2e-3, rel=1e-3)  # no flow, no interpolation: the floor either way
        half_pixel[interp] = rows["x", 0.5]
    # The cubic warp resamples the sharp image at a half-pixel flow with less blur than the bilinear one.
    assert half_pixel["bicubic"] != pytest.approx(half_pixel["bilinear"], rel=0.02)


def test_bad_arguments_are_named(tmp_path, capsys):
    for argv, message in ((["--data", str(tmp_path)], "no test/blur"), (["--data", str(tmp_path), "--blur", "-1"], "--blur"),
                          (["--data", str(tmp_path), "--pairs", "0"], "--pairs")):
        with pytest.raises(SystemExit) as stopped:
            deformation_shift.main(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
