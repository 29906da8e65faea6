"""benchmarks/flow_target.py: the flow-aligned target of an exact reference is the truth, the
blurry reference's is worse on misaligned pairs, and bad arguments are named."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import flow_target  # noqa: E402


def test_masked_psnr_and_textured():
    image = torch.rand(1, 3, 8, 8)
    keep = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    assert math.isnan(flow_target.masked_psnr(image, image + 0.1, keep))
    keep[..., :4, :] = True
    worse = image.clone()
    worse[..., 4:, :] += 0.5  # outside the kept pixels: does not count
    worse[..., :4, :] += 0.1
    assert flow_target.masked_psnr(worse, image, keep) == pytest.approx(20.0, abs=1e-3)
    assert torch.all(flow_target.textured(torch.full((1, 3, 9, 9), 0.3)) < 1e-3)  # float32 rounding of E[x^2] - E[x]^2
    stripes = torch.zeros(1, 3, 9, 9)
    stripes[..., ::2] = 1.0
    assert torch.all(flow_target.textured(stripes) > 0.4)


def test_the_oracle_target_is_the_truth_and_the_blurry_one_is_not(tmp_path):
    from jdrl.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", n_train=0, n_test=3, size=64, max_radius=5.0, seed=3)
    report = tmp_path / "rows.json"
    argv = ["--data", str(tmp_path / "data"), "--split", "test", "--pairs", "3", "--references", "blurry", "oracle",
            "--anchor", "8", "--json", str(report)]
    assert flow_target.main(argv) == 0
    misaligned = json.loads(report.read_text())
    assert misaligned["pairs"] == 3 and set(misaligned["rows"]) == {"blurry", "oracle", "oracle anchored 8"}
    # The sharp shot aligned already (gt = gt_aligned): against the exact reference the flow is ~0 and
    # the target is the truth; the blurry reference's flow misplaces it.
    for path in (tmp_path / "data" / "test" / "gt_aligned").glob("*.png"):
        shutil.copy(path, tmp_path / "data" / "test" / "gt" / path.name)
    assert flow_target.main(argv) == 0
    aligned = json.loads(report.read_text())["rows"]
    assert aligned["oracle"]["mean"]["psnr"] > 45
    assert aligned["oracle"]["mean"]["offset_length"] == 0  # the same flow, computed twice
    assert aligned["blurry"]["mean"]["offset_length"] > 0.001
    assert aligned["blurry"]["mean"]["psnr"] < aligned["oracle"]["mean"]["psnr"] - 5
    # On the misaligned pairs the exact reference still gives the better target (the colour change
    # between the shots and the occluders keep both below the aligned case).
    rows = misaligned["rows"]
    assert rows["blurry"]["mean"]["psnr"] < rows["oracle"]["mean"]["psnr"] < aligned["oracle"]["mean"]["psnr"]
    assert all(0 < row["mean"]["mask_kept"] <= 1 for row in rows.values())


def test_refined_scores_both_directions_with_the_checkpoints_reblurring_net(tmp_path):
    from jdrl.checkpoint import save_checkpoint
    from jdrl.config import Config
    from jdrl.losses import build_reblur_net
    from jdrl.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", n_train=0, n_test=2, size=48, max_radius=3.0, seed=4)
    config = Config()
    torch.manual_seed(0)
    reblur_net = build_reblur_net(config.loss, levels=config.model.levels)
    save_checkpoint(tmp_path / "ours.pt", {"config": config.to_dict(), "reblur": reblur_net.state_dict(), "model": {}})
    report = tmp_path / "rows.json"
    argv = ["--data", str(tmp_path / "data"), "--split", "test", "--pairs", "2", "--references", "blurry", "refined",
            "composed:1", "--checkpoint", str(tmp_path / "ours.pt"), "--json", str(report)]
    assert flow_target.main(argv) == 0
    rows = json.loads(report.read_text())["rows"]
    assert set(rows) == {"blurry", "refined", "composed:1"}
    for name in ("blurry", "refined"):
        assert 15 < rows[name]["mean"]["psnr"] < 60 and 15 < rows[name]["mean"]["psnr_reverse"] < 60
    assert math.isnan(rows["composed:1"]["mean"]["psnr_reverse"])  # the composed refinement has no reverse flow
    # An untrained R still blurs I_S, so the refined flows are not the blurry ones.
    assert rows["refined"]["mean"]["psnr"] != rows["blurry"]["mean"]["psnr"]


def test_bad_arguments_are_named(tmp_path, capsys):
    for argv, message in ((["--data", str(tmp_path)], "no train/blur"), (["--data", str(tmp_path), "--pairs", "0"], "--pairs"),
                          (["--data", str(tmp_path), "--references", "sharp"], "blurry[:SIGMA]"),
                          (["--data", str(tmp_path), "--references", "blurry:-1"], "SIGMA must be finite"),
                          (["--data", str(tmp_path), "--references", "composed:0.5"], "N must be a whole number"),
                          (["--data", str(tmp_path), "--references", "refined:2"], "refined takes no number"),
                          (["--data", str(tmp_path), "--anchor", "-2"], "--anchor")):
        with pytest.raises(SystemExit) as stopped:
            flow_target.main(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    from jdrl.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", n_train=1, n_test=0, size=32, max_radius=2.0, seed=1)
    for argv, message in ((["--references", "estimate"], "need --checkpoint"),
                          (["--references", "estimate", "--checkpoint", str(tmp_path / "none.pt")], "no such file")):
        with pytest.raises(SystemExit) as stopped:
            flow_target.main(["--data", str(tmp_path / "data")] + argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_composed_corrects_the_flow_with_a_second_flow_between_equal_blurs():
    from deformation_shift import gaussian_blur, fourier_shift
    from jdrl.config import Config
    from jdrl.flow import build_flow_estimator
    from jdrl.losses import loss_warp
    from jdrl.models.reblur_net import ReblurOutput
    from skimage import data

    class GaussianReblur:
        """A stand-in for R that knows the blur: a Gaussian of 2 px everywhere."""

        def __call__(self, sharp_est, blurry):
            return ReblurOutput(self.blur(sharp_est, None, None), None, None, None)

        def blur(self, image, seeds, weights):
            return gaussian_blur(image, 2.0)

    photo = torch.from_numpy(data.astronaut()[100:196, 180:276]).permute(2, 0, 1)[None].float() / 255
    truth = photo.double()
    sharp = fourier_shift(truth, 0.6, -0.4).float().clamp(0, 1)  # the sharp shot, moved by a fraction of a pixel
    truth = truth.float()
    blurry = gaussian_blur(truth, 2.0)
    estimator, loss_config = build_flow_estimator("dis"), Config().loss
    flow = estimator(blurry, sharp)
    refined = flow_target.composed(flow, blurry, sharp, GaussianReblur(), estimator, 2, loss_config)
    inside = (..., slice(12, -12), slice(12, -12))  # away from the periodic shift's wrapped border
    # truth(p) = sharp(p + (0.6, -0.4)): the true flow. Between a blurry and a sharp image DIS misses
    # it by about 0.09 px; between two images of equal blur by a fifth of that.
    true_flow = torch.tensor([0.6, -0.4])

    def miss(f):
        return float((f[inside].mean(dim=(2, 3))[0] - true_flow).norm())

    assert miss(refined) < 0.5 * miss(flow)
    # And the target it gives is closer to the truth (the bilinear resampling's own blur bounds both).
    error = lambda f: float((loss_warp(sharp, f, loss_config) - truth)[inside].abs().mean())  # noqa: E731
    assert error(refined) < error(flow)
