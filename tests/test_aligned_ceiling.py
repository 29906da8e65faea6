"""benchmarks/aligned_ceiling.py: it learns from gt_aligned (not the misaligned gt), scores the
input as the metrics do, and names the argument whose data is unusable."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import aligned_ceiling  # noqa: E402


@pytest.fixture(scope="module")
def one_pair(tmp_path_factory):
    """One 32 px synthetic pair, the same in train/ and test/ (so training on it must raise its PSNR),
    with a black misaligned ``gt``: a script that learnt from ``gt`` would move away from ``gt_aligned``."""
    from jdrl.imageio import write_image
    from jdrl.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("ceiling")
    make_synthetic_dataset(root, n_train=1, n_test=1, size=32, max_radius=3.0, seed=3)
    for path in (root / "train" / "gt").glob("*.png"):
        write_image(path, torch.zeros(3, 32, 32))
    shutil.rmtree(root / "test")
    shutil.copytree(root / "train", root / "test")
    return root


@pytest.fixture(autouse=True)
def keep_process_state():
    """main() sets the process's torch threads, flushes subnormals and seeds the global generator;
    give all three back for the tests that follow."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_training_on_the_aligned_pair_raises_its_psnr(one_pair, tmp_path):
    from jdrl.imageio import read_image
    from jdrl.metrics import psnr

    out = tmp_path / "ceiling.json"
    argv = ["--train-data", str(one_pair), "--test-data", str(one_pair), "--preset", "tiny", "--lr", "2e-3",
            "--steps", "40", "--every", "20", "--ema", "0.9", "--train-score-pairs", "5", "--json", str(out)]
    assert aligned_ceiling.main(argv) == 0
    result = json.loads(out.read_text())
    name = next((one_pair / "test" / "blur").glob("*.png")).name
    blurry = read_image(one_pair / "test" / "blur" / name)[None]
    aligned = read_image(one_pair / "test" / "gt_aligned" / name)[None]
    assert result["input_psnr"] == pytest.approx(float(psnr(blurry, aligned)), abs=1e-6)
    assert [row["step"] for row in result["rows"]] == [0, 20, 40]
    first, last = result["rows"][0], result["rows"][-1]
    # 40 steps on the one pair it is scored on: the net must move toward gt_aligned by a clear
    # margin, and beat the blurry input (a net that learnt to copy its input would not).
    assert last["psnr"] > first["psnr"] + 1.0, result["rows"]
    assert last["gain"] > 0, result["rows"]
    assert last["gain"] == pytest.approx(last["psnr"] - result["input_psnr"])
    # train/ holds the same one pair as test/ (and --train-score-pairs 5 asks for more than there
    # are): its score is the test score, and its one photo's gain is the mean gain. meta.json
    # names the pair's photo under train/ only (test/ is a copy), so under test/ it is the pair's name.
    assert result["train_scored_pairs"] == 1
    assert result["train_input_psnr"] == result["input_psnr"]
    assert [row["train_psnr"] for row in result["rows"]] == [row["psnr"] for row in result["rows"]]
    photo = json.loads((one_pair / "meta.json").read_text())["pairs"]["train"][0]["source"]
    assert list(last["train_gain_by_photo"]) == [photo] and last["train_gain_by_photo"][photo] == pytest.approx(last["gain"])
    assert list(last["gain_by_photo"]) == [name[: -len(".png")]] and last["gain_by_photo"][name[: -len(".png")]] == pytest.approx(last["gain"])
    # The weight average starts at the initial weights and follows the training toward gt_aligned.
    assert first["ema_psnr"] == first["psnr"]
    assert last["ema_psnr"] > first["psnr"] + 1.0 and last["ema_psnr"] != last["psnr"], result["rows"]


def test_scores_are_split_by_photo(tmp_path):
    """Each photo's score is the mean over its own pairs (crops of four test photos), and --dim
    sets the net's width (here below the preset's)."""
    from jdrl.imageio import read_image
    from jdrl.metrics import psnr
    from jdrl.synth import make_synthetic_dataset, pair_sources

    root = tmp_path / "data"
    make_synthetic_dataset(root, n_train=1, n_test=6, size=32, max_radius=3.0, seed=5)
    out = tmp_path / "ceiling.json"
    assert aligned_ceiling.main(["--train-data", str(root), "--test-data", str(root), "--preset", "tiny", "--dim", "4",
                                 "--steps", "0", "--train-score-pairs", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    # The training pair is scored from train/, under its own photo (never a test photo).
    (train_name, train_photo), = pair_sources(root, "train").items()
    train_input = float(psnr(read_image(root / "train" / "blur" / f"{train_name}.png")[None],
                             read_image(root / "train" / "gt_aligned" / f"{train_name}.png")[None]))
    assert result["train_input_psnr_by_photo"] == pytest.approx({train_photo: train_input}, abs=1e-6)
    scores: dict[str, list[float]] = {}
    for name, photo in pair_sources(root, "test").items():
        blurry = read_image(root / "test" / "blur" / f"{name}.png")[None]
        aligned = read_image(root / "test" / "gt_aligned" / f"{name}.png")[None]
        scores.setdefault(photo, []).append(float(psnr(blurry, aligned)))
    assert len(scores) == 4 and max(len(values) for values in scores.values()) == 2
    expected = {photo: sum(values) / len(values) for photo, values in scores.items()}
    assert result["input_psnr_by_photo"] == pytest.approx(expected, abs=1e-6)
    row = result["rows"][0]
    assert set(row["gain_by_photo"]) == set(expected)
    # The mean over pairs weighs each photo by its number of pairs.
    weighted = sum(row["gain_by_photo"][photo] * len(values) for photo, values in scores.items()) / 6
    assert row["gain"] == pytest.approx(weighted, abs=1e-6)
    from jdrl.models.restormer import RESTORMER_PRESETS, JDRLDeblurNet

    tiny = sum(p.numel() for p in JDRLDeblurNet(RESTORMER_PRESETS["tiny"]).parameters())
    assert 0 < result["parameters"] < tiny


def test_the_learning_rate_schedules():
    assert aligned_ceiling.learning_rate(1e-3, "constant", 7, 10) == 1e-3
    assert aligned_ceiling.learning_rate(1e-3, "cosine", 0, 10) == pytest.approx(1e-3)
    assert aligned_ceiling.learning_rate(1e-3, "cosine", 10, 10) == pytest.approx(1e-5)
    assert aligned_ceiling.learning_rate(1e-3, "cosine", 5, 10) == pytest.approx(0.5 * (1e-3 + 1e-5))


def test_bad_arguments_are_named(one_pair, tmp_path, capsys):
    shutil.copytree(one_pair, tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "test" / "gt_aligned")
    with pytest.raises(SystemExit, match="--test-data .*gt_aligned"):
        aligned_ceiling.main(["--train-data", str(one_pair), "--test-data", str(tmp_path / "data"), "--steps", "0"])
    with pytest.raises(SystemExit, match="--train-data .*gt_aligned"):
        aligned_ceiling.main(["--train-data", str(tmp_path / "data" / "test"), "--test-data", str(one_pair), "--steps", "0"])
    for extra, message in ((["--lr", "0"], "--lr must be > 0"), (["--ema", "1"], "--ema must be in [0, 1)"), (["--json", str(tmp_path / "none" / "c.json")], "--json"),
                           (["--train-score-pairs", "-1"], "--train-score-pairs must be >= 0"), (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
                           (["--dim", "0"], "--dim must be"), (["--dim", "5"], "--dim must be")):
        with pytest.raises(SystemExit) as stopped:
            aligned_ceiling.main(["--train-data", str(one_pair), "--test-data", str(one_pair), "--steps", "0", *extra])
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_gradient_clipping_and_its_norms(one_pair, tmp_path):
    """Each row reports the gradient norms of the steps before it; a clip no step reaches changes
    nothing, one below every norm changes the training."""

    def rows(*extra):
        out = tmp_path / "ceiling.json"
        argv = ["--train-data", str(one_pair), "--test-data", str(one_pair), "--preset", "tiny", "--lr", "2e-3",
                "--steps", "6", "--every", "3", "--json", str(out), *extra]
        assert aligned_ceiling.main(argv) == 0
        return json.loads(out.read_text())["rows"]

    plain = rows()
    assert "grad_norm_max" not in plain[0]
    for row in plain[1:]:
        assert 0 < row["grad_norm_median"] <= row["grad_norm_max"]
    unreached = rows("--grad-clip", str(10 * max(row["grad_norm_max"] for row in plain[1:])))
    assert [row["psnr"] for row in unreached] == [row["psnr"] for row in plain]
    smallest = min(row["grad_norm_median"] for row in plain[1:])
    clipped = rows("--grad-clip", str(smallest / 100))
    # The norms are reported before clipping.
    assert clipped[1]["grad_norm_median"] > smallest / 10
    assert clipped[1]["psnr"] != plain[1]["psnr"]


def test_offset_free_psnr_takes_out_each_images_mean_colour_error():
    """A net whose output is the target shifted in colour, plus a little noise, scores as the noise
    alone once the shift is taken out; the plain score counts the shift."""
    from types import SimpleNamespace

    from jdrl.metrics import psnr

    generator = torch.Generator().manual_seed(0)
    sharp = [0.2 + 0.6 * torch.rand(3, 16, 12, generator=generator) for _ in range(2)]
    noise = [0.01 * torch.randn(3, 16, 12, generator=generator) for _ in range(2)]
    shift = torch.tensor([0.05, -0.03, 0.02]).view(3, 1, 1)
    outputs = {id(target): target + shift + wiggle for target, wiggle in zip(sharp, noise)}
    by_input = {}
    pairs = aligned_ceiling.Pairs(["a", "b"], [target.clone() for target in sharp], sharp, {"a": "p", "b": "q"})
    for blurry, target in zip(pairs.blurry, sharp):
        by_input[blurry.data_ptr()] = outputs[id(target)]
    net = lambda batch: SimpleNamespace(sharp=by_input[batch[0].data_ptr()][None])  # noqa: E731
    plain, _ = aligned_ceiling.mean_psnr(net, pairs)
    free, by_photo = aligned_ceiling.mean_psnr(net, pairs, offset_free=True)
    expected = [float(psnr((target + wiggle - wiggle.mean(dim=(-2, -1), keepdim=True))[None], target[None]))
                for target, wiggle in zip(sharp, noise)]
    assert by_photo == pytest.approx({"p": expected[0], "q": expected[1]}, abs=1e-4)
    assert free == pytest.approx(sum(expected) / 2, abs=1e-4)
    assert plain < free - 5
