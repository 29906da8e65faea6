"""benchmarks/region_gains.py: PSNR by kind of pixel, checked on outputs whose error is known
region by region, and errors that name the argument."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import region_gains  # noqa: E402

# Halving an output's error everywhere in a region divides its squared error there by 4.
HALF_ERROR_DB = 10 * math.log10(4)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from jdrl.synth import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("synth"), 0, 3, size=48, max_radius=6.0, seed=5)
    return root, region_gains.read_pairs(root, None)


class HalfErrorWhere:
    """A stand-in net: the blurry input, with its error against ``gt_aligned`` halved on the pixels
    that ``where(pair)`` marks (the pair found by the input's storage, which compare() passes as is)."""

    def __init__(self, pairs, where):
        self.by_input = {pair.blurry.data_ptr(): pair for pair in pairs}
        self.where = where

    def __call__(self, blurry):
        pair = self.by_input[blurry.data_ptr()]
        mask = torch.as_tensor(self.where(pair))
        return SimpleNamespace(sharp=torch.where(mask, 0.5 * (blurry + pair.aligned), blurry))


def test_differences_follow_the_region_where_the_error_changed(pairs):
    root, test_pairs = pairs
    identity = HalfErrorWhere(test_pairs, lambda pair: torch.zeros(pair.radius.shape, dtype=torch.bool))
    defocused = HalfErrorWhere(test_pairs, lambda pair: torch.from_numpy(pair.radius >= 3))
    result = region_gains.compare(defocused, identity, region_gains.score_pairs(test_pairs, flow_miss=1.0), min_pixels=1)
    strong = result["radius >= 3"]
    assert strong["pairs"] == 3 and strong["a_wins"] == 3
    assert strong["difference"] == pytest.approx(HALF_ERROR_DB, abs=1e-6)  # float32 outputs
    assert strong["pooled_difference"] == pytest.approx(HALF_ERROR_DB, abs=1e-6)  # float32 outputs
    assert strong["a"] - strong["input"] == pytest.approx(HALF_ERROR_DB, abs=1e-6)  # float32 outputs
    for part in ("radius < 1", "radius 1-3"):
        assert result[part]["difference"] == pytest.approx(0.0, abs=1e-12)
        assert result[part]["a_wins"] == 0
    # B is the input itself; the pooled gain over all pixels lies strictly between the two bands'.
    assert result["all"]["b"] == pytest.approx(result["all"]["input"], abs=1e-12)
    assert 0.0 < result["all"]["pooled_difference"] < HALF_ERROR_DB
    # Each split's parts cover every pixel once.
    for parts in region_gains.REGIONS.values():
        assert sum(result[part]["pixel_share"] for part in parts) == pytest.approx(1.0)


def test_flow_misses_are_where_the_estimate_leaves_the_true_flow(pairs):
    _, test_pairs = pairs
    pair = test_pairs[0]
    width = pair.flow.shape[-1]

    def off_on_the_left(reference, moving):
        flow = pair.flow.clone()
        flow[:, 0, :, : width // 2] += 1.5  # 1.5 px off on the left half: a miss at --flow-miss 1
        flow[:, 1, :, width // 2 :] += 0.5  # 0.5 px off on the right half: followed
        return flow

    masks = region_gains.region_masks(pair, off_on_the_left(pair.blurry, pair.sharp), flow_miss=1.0)
    assert masks["flow misses"][:, : width // 2].all() and not masks["flow misses"][:, width // 2 :].any()
    assert (masks["flow follows"] == ~masks["flow misses"]).all()
    assert masks["textured"].mean() >= 0.5 and (masks["flat"] == ~masks["textured"]).all()

    def still_but_one_block(reference, moving):
        flow = torch.zeros_like(pair.flow)
        flow[:, 0, :8, :8] = 5.0  # far from the mean magnitude (~0.14 px): Eq. 6 drops it
        return flow

    masks = region_gains.region_masks(pair, still_but_one_block(pair.blurry, pair.sharp), flow_miss=1.0)
    assert masks["mask drops"][:8, :8].all() and masks["mask drops"].sum() == 64
    assert (masks["mask keeps"] == ~masks["mask drops"]).all()


def test_errors_name_the_argument(tmp_path, capsys, pairs):
    root, _ = pairs
    checkpoint = tmp_path / "a.pt"
    checkpoint.write_bytes(b"not read: the test data is checked first")
    with pytest.raises(SystemExit):
        region_gains.main(["--a", str(checkpoint), str(checkpoint), "--b", str(checkpoint), "--test-data", str(root)])
    assert "pair up by position" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        region_gains.main(["--a", str(tmp_path / "missing.pt"), "--b", str(checkpoint), "--test-data", str(root)])
    assert "missing.pt: no such file" in capsys.readouterr().err
    threads = str(torch.get_num_threads())  # leave the test process's thread count as it is
    assert region_gains.main(["--a", str(checkpoint), "--b", str(checkpoint), "--test-data", str(tmp_path),
                              "--threads", threads]) == 2
    assert f"--test-data {tmp_path}" in capsys.readouterr().err


def test_fine_error_and_detail(pairs):
    # A colour error that is the same everywhere has no fine part and keeps all the detail; noise is
    # nearly all fine part and adds no detail; a blur keeps part of it.
    _, test_pairs = pairs
    truth = test_pairs[0].aligned.clamp(0.1, 0.9)
    truth_fine = region_gains.fine_part(truth)
    truth_detail = (truth_fine ** 2).sum()

    def scores(estimate):
        maps = region_gains.pixel_scores(estimate, truth, truth_fine)
        return maps["error"].mean(), maps["fine_error"].mean(), maps["detail"].sum() / truth_detail

    error, fine_error, detail = scores(truth + 0.05)
    assert error == pytest.approx(3 * 0.05 ** 2) and fine_error < 1e-12 and detail == pytest.approx(1.0)
    noise = 0.02 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    error, fine_error, detail = scores(truth + noise)
    assert 0.8 * error < fine_error < error and detail == pytest.approx(1.0, abs=0.05)
    blurred = torch.nn.functional.avg_pool2d(truth, 3, stride=1, padding=1, count_include_pad=False)
    assert 0.1 < scores(blurred)[2] < 0.9


def test_targets_of_the_true_flow_keep_detail_bicubic_better(pairs):
    # With the true flow as the estimate, the warped I_S holds most of gt_aligned's detail (the
    # photometric change aside), bicubic more than bilinear (a bilinear resampling blurs).
    _, test_pairs = pairs
    identity = HalfErrorWhere(test_pairs, lambda pair: torch.zeros(pair.radius.shape, dtype=torch.bool))
    by_input = {pair.blurry.data_ptr(): pair for pair in test_pairs}
    scored = region_gains.score_pairs(test_pairs, 1.0, flow_estimator=lambda blurry, sharp: by_input[blurry.data_ptr()].flow)
    result = region_gains.compare(identity, identity, scored, 1)
    images = result["textured"]["images"]
    assert 0.4 < images["target bilinear"]["detail"] < images["target bicubic"]["detail"] < 1.1
    assert images["a"] == images["b"] == images["input"]


def test_dis_follows_the_true_flow_on_most_pixels(pairs):
    # The sign and argument order of the flow against warp/: with them wrong nearly every pixel misses.
    from jdrl.flow import build_flow_estimator

    _, test_pairs = pairs
    estimator = build_flow_estimator("dis")
    shares = [region_gains.region_masks(pair, estimator(pair.blurry, pair.sharp), 1.0)["flow misses"].mean()
              for pair in test_pairs]
    assert max(shares) < 0.5, shares


def test_main_writes_the_report_and_refuses_bad_outputs(tmp_path, capsys, monkeypatch, pairs):
    import json

    import jdrl.checkpoint

    root, test_pairs = pairs
    # Stand-in checkpoints: "good" halves the input's error where the blur is strong, "same" is the
    # input; the pairs main() reads are new tensors, so the stand-ins find theirs by content.
    def net_of(name):
        def net(blurry):
            pair = next(pair for pair in test_pairs if torch.equal(pair.blurry, blurry))
            if name == "nan":
                return SimpleNamespace(sharp=torch.full_like(blurry, math.nan))
            strong = torch.from_numpy(pair.radius >= 3) if name == "good" else torch.zeros(pair.radius.shape, dtype=torch.bool)
            return SimpleNamespace(sharp=torch.where(strong, 0.5 * (blurry + pair.aligned), blurry))
        return net

    monkeypatch.setattr(jdrl.checkpoint, "load_deblur_net", lambda path: net_of(Path(path).stem))
    monkeypatch.setattr(jdrl.checkpoint, "load_checkpoint", lambda path: {"config": {"loss": {"flow_reference": "blurry"}}})
    paths = {}
    for name in ("good", "same", "nan"):
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(b"")
    threads = ["--threads", str(torch.get_num_threads())]
    report = tmp_path / "report.json"
    assert region_gains.main(["--a", str(paths["good"]), str(paths["good"]), "--b", str(paths["same"]), str(paths["same"]),
                              "--test-data", str(root), "--json", str(report), *threads]) == 0
    printed = capsys.readouterr().out
    assert "mean A - B over 2 checkpoint pairs" in printed and "radius >= 3: +6.02 ± 0.00" in printed
    result = json.loads(report.read_text())
    assert result["test_pairs"] == 3 and len(result["results"]) == 2
    assert result["summary"]["radius >= 3"]["mean_difference"] == pytest.approx(HALF_ERROR_DB, abs=1e-6)
    assert result["summary"]["radius < 1"]["mean_difference"] == pytest.approx(0.0, abs=1e-12)
    assert region_gains.main(["--a", str(paths["nan"]), "--b", str(paths["same"]), "--test-data", str(root), *threads]) == 2
    assert "net A gives non-finite values" in capsys.readouterr().err


def test_a_missing_or_misshapen_companion_file_is_named(tmp_path, pairs):
    import shutil

    import numpy as np

    root, _ = pairs
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    first = sorted((copy / "test" / "blur").glob("*.png"))[0].stem
    np.save(copy / "test" / "radius" / f"{first}.npy", np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=f"radius/{first}.npy"):
        region_gains.read_pairs(copy, None)
    (copy / "test" / "warp" / f"{first}.npy").unlink()
    with pytest.raises(ValueError, match=f"warp/{first}.npy is missing"):
        region_gains.read_pairs(copy, None)
