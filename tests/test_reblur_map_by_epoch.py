"""benchmarks/reblur_map_by_epoch.py: it scores R's map after the prefit and after each epoch, its R
is the R that `jdrl train` ends with for the same config, and it names what is wrong."""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import reblur_map_by_epoch  # noqa: E402


@pytest.fixture(autouse=True)
def keep_process_state():
    """main() sets the torch threads and flushes subnormals, the trainer seeds the global generator."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from jdrl.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("map_by_epoch")
    make_synthetic_dataset(root, n_train=2, n_test=2, size=48, max_radius=3.0, seed=5)
    return root


def _config_file(data: Path, path: Path, **overrides) -> Path:
    from jdrl.config import load_config, save_config_yaml

    values = {"model.preset": "tiny", "data.root": str(data), "data.crop": 32, "data.workers": 0, "optim.lr": 1e-3,
              "loss.flow_warmup_epochs": 1, "loss.reblur_prefit_steps": 2, "loss.reblur_prefit_crop": 16,
              "train.epochs": 2, "train.device": "cpu", "train.out_dir": str(path.parent / "unused"), **overrides}
    save_config_yaml(load_config(None, values), path)
    return path


def test_rows_after_the_prefit_and_each_epoch_score_the_r_jdrl_train_ends_with(data, tmp_path):
    from jdrl.config import load_config
    from jdrl.defocus import load_reblur_net
    from jdrl.flow import build_flow_estimator
    from jdrl.train import train

    config = _config_file(data, tmp_path / "config.yaml")
    out = tmp_path / "run"
    assert reblur_map_by_epoch.main([str(config), "--data", str(data), "--out", str(out)]) == 0
    result = json.loads((out / "map_by_epoch.json").read_text())
    assert [row["epoch"] for row in result["rows"]] == [0, 1, 2] and result["pairs"] == 2 and result["prefit_steps"] == 2
    assert all(-1.0 <= row["spearman"] <= 1.0 for row in result["rows"])
    # The same config trained by jdrl train: its last R scores what the script's last row says.
    trained = train(load_config(config, {"train.out_dir": str(tmp_path / "train")}))
    reblur = load_reblur_net(trained.last_checkpoint)
    pairs = reblur_map_by_epoch.test_pairs(data, "test", None)
    scores = reblur_map_by_epoch.score_map(reblur[0], reblur[1], pairs, build_flow_estimator("dis"))
    assert scores["spearman"] == pytest.approx(result["rows"][-1]["spearman"], abs=1e-6)
    assert scores["pearson"] == pytest.approx(result["rows"][-1]["pearson"], abs=1e-6)
    # --set reaches the config (the rates are recorded), --epochs the count.
    argv = [str(config), "--data", str(data), "--out", str(tmp_path / "other"), "--epochs", "1",
            "--set", "optim.reblur_lr=1e-4", "--set", "optim.reblur_prefit_lr=1e-3", "--json", str(tmp_path / "other.json")]
    assert reblur_map_by_epoch.main(argv) == 0
    other = json.loads((tmp_path / "other.json").read_text())
    assert (other["reblur_lr"], other["reblur_prefit_lr"]) == (1e-4, 1e-3) and [row["epoch"] for row in other["rows"]] == [0, 1]


def test_bad_arguments_are_named(data, tmp_path, capsys):
    config = _config_file(data, tmp_path / "config.yaml")
    no_r = _config_file(data, tmp_path / "no_r.yaml", **{"loss.reblurring": False, "loss.pseudo_supervision": False,
                                                         "loss.reblur_prefit_steps": 0})
    no_radius = tmp_path / "no_radius"
    (no_radius / "test" / "blur").mkdir(parents=True)
    cases = (([str(tmp_path / "none.yaml"), "--data", str(data)], "none.yaml: not a file"),
             ([str(no_r), "--data", str(data)], "no reblurring net"),
             ([str(config), "--data", str(data), "--epochs", "0"], "--epochs must be >= 1"),
             ([str(config), "--data", str(data), "--set", "optim.reblur_prefit_lr=0"], "optim.reblur_prefit_lr"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as stopped:
            reblur_map_by_epoch.main(argv + ["--out", str(tmp_path / "out")])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--data .*no_radius.*gt/"):
        reblur_map_by_epoch.main([str(config), "--data", str(no_radius), "--out", str(tmp_path / "out")])
