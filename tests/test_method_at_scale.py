"""benchmarks/method_at_scale.py: it trains the demo's config of a method in resumed chunks, scores
the checkpoint's weights and average against gt_aligned, and names the argument that is wrong."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import method_at_scale  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from jdrl.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("scale")
    make_synthetic_dataset(root, n_train=3, n_test=2, size=48, max_radius=3.0, seed=3)
    return root


@pytest.fixture(autouse=True)
def keep_process_state():
    """main() sets the process's torch threads, flushes subnormals and the trainer seeds the global
    generator; give them back for the tests that follow."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def _test_psnr(net, root: Path) -> float:
    """Mean PSNR of ``net`` (the blurry input for None) against gt_aligned over root/test, computed
    here independently of the script."""
    from jdrl.imageio import read_image
    from jdrl.metrics import psnr

    scores = []
    for path in sorted((root / "test" / "blur").glob("*.png")):
        blurry = read_image(path)[None]
        with torch.no_grad():
            estimate = blurry if net is None else net(blurry).sharp.clamp(0, 1)
        scores.append(float(psnr(estimate, read_image(root / "test" / "gt_aligned" / path.name)[None])))
    return sum(scores) / len(scores)


def test_l1_in_chunks_scores_the_weights_and_their_average(data, tmp_path, monkeypatch):
    import jdrl.train
    from jdrl.checkpoint import load_checkpoint, load_deblur_net
    from jdrl.models import build_deblur_net

    resumed = []
    real_train = jdrl.train.train

    def recording_train(config, resume=None):
        resumed.append(resume)
        return real_train(config, resume=resume)

    monkeypatch.setattr(jdrl.train, "train", recording_train)
    out, report = tmp_path / "run", tmp_path / "run.json"
    argv = ["--method", "l1", "--train-data", str(data), "--test-data", str(data), "--preset", "tiny", "--out", str(out),
            "--steps", "4", "--every", "2", "--lr", "2e-3", "--set", "train.ema_decay=0.5", "--json", str(report)]
    assert method_at_scale.main(argv) == 0
    result = json.loads(report.read_text())
    assert result["input_psnr"] == pytest.approx(_test_psnr(None, data), abs=1e-6)
    # Two chunks of two steps, the second resumed from the first's checkpoint (one warm-up chunk,
    # as the trainer was told).
    assert resumed == [None, out / "last.pt"]
    assert [row["step"] for row in result["rows"]] == [2, 4]
    assert result["warmup_steps"] == 2
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 4 and state["epoch"] == 2
    config = state["config"]
    assert config["loss"]["flow_warmup_epochs"] == 1
    assert config["loss"]["deblur_loss"] == "l1" and not config["loss"]["reblurring"]
    assert config["optim"]["lr"] == 2e-3 and config["train"]["max_steps_per_epoch"] == 2
    assert config["train"]["ema_decay"] == 0.5 and config["model"]["preset"] == "tiny"
    # The last row scores the average the checkpoint keeps and, apart, the weights that trained.
    last = result["rows"][-1]
    assert last["ema_psnr"] == pytest.approx(_test_psnr(load_deblur_net(out / "last.pt"), data), abs=1e-5)
    weights = build_deblur_net(arch="jdrl", preset="tiny", levels=config["model"]["levels"])
    weights.load_state_dict(state["model"])
    assert last["psnr"] == pytest.approx(_test_psnr(weights.eval(), data), abs=1e-5)
    assert last["psnr"] != last["ema_psnr"]
    assert last["gain"] == pytest.approx(last["psnr"] - result["input_psnr"])
    assert set(last["gain_by_photo"]) == set(result["input_psnr_by_photo"])
    # Without the colour offset: against the input's score without it, for the weights and the average.
    from aligned_ceiling import Pairs, mean_psnr

    pairs = Pairs.read(data, "test", None, "--test-data")
    offset_free_input = mean_psnr(None, pairs, offset_free=True)[0]
    offset_free_average = mean_psnr(load_deblur_net(out / "last.pt"), pairs, offset_free=True)[0]
    assert last["ema_offset_free_gain"] == pytest.approx(offset_free_average - offset_free_input, abs=1e-5)
    assert last["offset_free_gain"] == pytest.approx(mean_psnr(weights, pairs, offset_free=True)[0] - offset_free_input, abs=1e-5)
    assert set(last["offset_free_gain_by_photo"]) == set(last["ema_offset_free_gain_by_photo"]) == set(last["gain_by_photo"])


def test_ours_trains_the_reblurring_net_with_the_demos_settings(data, tmp_path):
    from jdrl.checkpoint import load_checkpoint
    from jdrl.demo import DEMO_REBLUR_LR

    out = tmp_path / "ours"
    argv = ["--method", "ours", "--train-data", str(data), "--test-data", str(data), "--test-pairs", "1", "--preset", "tiny",
            "--out", str(out), "--steps", "2", "--every", "1", "--set", "loss.reblur_prefit_steps=1"]
    assert method_at_scale.main(argv) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["reblur"] is not None and state["config"]["loss"]["reblurring"]
    assert state["config"]["optim"]["reblur_lr"] == DEMO_REBLUR_LR
    # The --set wins over the demo's prefit.
    assert state["config"]["loss"]["reblur_prefit_steps"] == 1
    assert method_at_scale.method_overrides("ours", {})["loss.reblur_prefit_steps"] > 1


def test_bad_arguments_are_named(data, tmp_path, capsys):
    base = ["--method", "l1", "--train-data", str(data), "--test-data", str(data), "--out", str(tmp_path / "run")]
    for extra, message in ((["--set", "model.preset=tiny"], "--set model.preset"), (["--set", "train.epochs=3"], "--set train.epochs"),
                           (["--set", "optim.grad_clip=-1"], "grad_clip"), (["--set", "loss.no_such_key=1"], "no_such_key"),
                           (["--steps", "3", "--every", "2"], "--steps must be a positive multiple"), (["--lr", "0"], "--lr must be a positive"),
                           (["--lr", "inf"], "--lr must be a positive"), (["--set", "train={epochs: 3}"], "--set train:"),
                           (["--set", "model={preset: paper}"], "--set model:"), (["--steps", "4", "--every", "4"], "3 training pairs"),
                           (["--json", str(tmp_path / "none" / "r.json")], "--json")):
        with pytest.raises(SystemExit) as stopped:
            method_at_scale.main(base + extra)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as stopped:
        method_at_scale.main(base[:-1] + [str(tmp_path / "used")])
    assert stopped.value.code == 2 and "holds a run already" in capsys.readouterr().err
    shutil.copytree(data, tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "test" / "gt_aligned")
    with pytest.raises(SystemExit, match="--test-data .*gt_aligned"):
        method_at_scale.main(base[:4] + ["--test-data", str(tmp_path / "data"), "--out", str(tmp_path / "run2"), "--steps", "1", "--every", "1"])


def test_extend_continues_a_run_as_a_longer_run_would_have(data, tmp_path, capsys):
    from jdrl.checkpoint import load_checkpoint, save_checkpoint

    # #4 reads the warm-up (flow against the blurry input), so a wrong warm-up would change its scores.
    base = ["--method", "no_reblur", "--train-data", str(data), "--test-data", str(data), "--preset", "tiny", "--every", "1",
            "--lr", "2e-3", "--set", "train.ema_decay=0.5"]
    longer = tmp_path / "longer"
    assert method_at_scale.main(base + ["--out", str(longer), "--steps", "3", "--json", str(tmp_path / "longer.json")]) == 0
    run, report = tmp_path / "run", tmp_path / "run.json"
    assert method_at_scale.main(base + ["--out", str(run), "--steps", "2", "--json", str(report)]) == 0
    first_seconds = json.loads(report.read_text())["rows"][-1]["seconds"]
    assert method_at_scale.main(base + ["--out", str(run), "--steps", "3", "--json", str(report), "--extend", "--threads", "2"]) == 0
    extended, fresh = json.loads(report.read_text()), json.loads((tmp_path / "longer.json").read_text())
    # Both warm up for one chunk (the share of 2 and of 3 chunks), so the third chunk is the same training.
    assert extended["warmup_steps"] == fresh["warmup_steps"] == 1
    assert extended["extended_from"] == [{"step": 2, "to_steps": 3, "threads": 2, "warmup_steps": 1}] and extended["args"]["steps"] == 3
    assert [row["step"] for row in extended["rows"]] == [1, 2, 3]
    for mine, theirs in zip(extended["rows"], fresh["rows"]):
        assert mine["psnr"] == pytest.approx(theirs["psnr"], abs=1e-6)
        assert mine["ema_psnr"] == pytest.approx(theirs["ema_psnr"], abs=1e-6)
    assert extended["rows"][2]["seconds"] > first_seconds
    # Extended again, to 20 chunks: the warm-up stays the first run's one chunk (a fresh 20-chunk run's share is 2).
    assert method_at_scale.main(base + ["--out", str(run), "--steps", "20", "--json", str(report), "--extend"]) == 0
    extended = json.loads(report.read_text())
    assert [entry["step"] for entry in extended["extended_from"]] == [2, 3] and extended["warmup_steps"] == 1
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 20 and state["config"]["loss"]["flow_warmup_epochs"] == 1
    capsys.readouterr()
    # What an extension refuses, named.
    for extra, message in ((["--steps", "20", "--json", str(report)], "--steps 20 must be more"),
                           (["--steps", "21", "--json", str(report), "--seed", "1"], "--seed is 1"),
                           (["--steps", "21", "--json", str(report), "--set", "optim.grad_clip=0.1"], "the method's overrides are now"),
                           (["--steps", "21", "--json", str(report), "--warmup-steps", "21"], "only a run still in its warm-up"),
                           (["--steps", "21"], "--extend needs --json"),
                           (["--steps", "21", "--json", str(tmp_path / "none.json")], "not a file"),
                           (["--steps", "21", "--json", str(tmp_path / "longer.json")], "--out is")):
        with pytest.raises(SystemExit) as stopped:
            method_at_scale.main(base + ["--out", str(run), "--extend"] + extra)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    # A checkpoint that trained with another config (as after a change of a default) is refused, by key.
    state["config"]["loss"]["mask_lambda"] = 0.5
    save_checkpoint(run / "last.pt", state)
    with pytest.raises(SystemExit) as stopped:
        method_at_scale.main(base + ["--out", str(run), "--extend", "--steps", "21", "--json", str(report)])
    assert stopped.value.code == 2 and "in loss.mask_lambda" in capsys.readouterr().err
    # A checkpoint ahead of the rows (stopped while scoring) is refused.
    state["config"]["loss"]["mask_lambda"] = load_checkpoint(longer / "last.pt")["config"]["loss"]["mask_lambda"]
    state["step"] = 21
    save_checkpoint(run / "last.pt", state)
    with pytest.raises(SystemExit) as stopped:
        method_at_scale.main(base + ["--out", str(run), "--extend", "--steps", "22", "--json", str(report)])
    assert stopped.value.code == 2 and "last.pt is at step 21" in capsys.readouterr().err
    # A checkpoint from before an option existed (its key absent) trained as the option meant then
    # (jdrl.defocus.checkpoint_loss_config): accepted where that is what the extension would train
    # (loss.warp_interp: bilinear then and now), refused, by key, where it is not (no loss.reblur_anchor:
    # R was not anchored then, and is by default now; train.* keys are never filled in).
    state["step"] = 20
    del state["config"]["loss"]["warp_interp"]
    del state["config"]["loss"]["reblur_anchor"]
    del state["config"]["train"]["ema_decay"]  # the run sets 0.5
    save_checkpoint(run / "last.pt", state)
    with pytest.raises(SystemExit) as stopped:
        method_at_scale.main(base + ["--out", str(run), "--extend", "--steps", "21", "--json", str(report)])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and "loss.reblur_anchor" in error and "train.ema_decay" in error and "warp_interp" not in error
    state["config"]["loss"]["reblur_anchor"] = True
    state["config"]["train"]["ema_decay"] = 0.5
    save_checkpoint(run / "last.pt", state)
    assert method_at_scale.main(base + ["--out", str(run), "--extend", "--steps", "21", "--json", str(report)]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 21


def test_extend_of_a_run_from_before_a_default_moved(data, tmp_path, capsys):
    """A run of ours recorded the demo's overrides of its day (R at 1e-3 throughout, no
    optim.reblur_prefit_lr key). Extending it with today's ours is refused by name; with --set that
    puts the old rates back, the configs agree and it continues."""
    out, report = tmp_path / "ours", tmp_path / "ours.json"
    base = ["--method", "ours", "--train-data", str(data), "--test-data", str(data), "--test-pairs", "1", "--preset", "tiny",
            "--out", str(out), "--every", "1", "--json", str(report), "--set", "loss.reblur_prefit_steps=1"]
    old_rates = ["--set", "optim.reblur_lr=1e-3", "--set", "optim.reblur_prefit_lr=null"]
    assert method_at_scale.main(base + old_rates + ["--steps", "1"]) == 0
    result = json.loads(report.read_text())
    del result["overrides"]["optim.reblur_prefit_lr"]  # as the JSON of such a run holds it
    report.write_text(json.dumps(result))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        method_at_scale.main(base + ["--steps", "2", "--extend"])
    assert stopped.value.code == 2 and "the method's overrides are now" in capsys.readouterr().err
    assert method_at_scale.main(base + old_rates + ["--steps", "2", "--extend"]) == 0
    assert [row["step"] for row in json.loads(report.read_text())["rows"]] == [1, 2]


def test_warmup_steps_sets_the_flow_warm_up(data, tmp_path, capsys):
    from jdrl.checkpoint import load_checkpoint

    out, report = tmp_path / "run", tmp_path / "run.json"
    base = ["--method", "no_reblur", "--train-data", str(data), "--test-data", str(data), "--test-pairs", "1", "--preset", "tiny",
            "--steps", "2", "--every", "1"]
    assert method_at_scale.main(base + ["--out", str(out), "--warmup-steps", "2", "--json", str(report)]) == 0
    # The whole run warms up: its flow is always taken against the blurry input.
    assert load_checkpoint(out / "last.pt")["config"]["loss"]["flow_warmup_epochs"] == 2
    assert json.loads(report.read_text())["warmup_steps"] == 2
    # A run that never left its warm-up may be extended with a longer one: the flow stays against I_B.
    assert method_at_scale.main(base[:-4] + ["--steps", "3", "--every", "1", "--out", str(out), "--warmup-steps", "3",
                                             "--json", str(report), "--extend"]) == 0
    assert load_checkpoint(out / "last.pt")["config"]["loss"]["flow_warmup_epochs"] == 3
    assert json.loads(report.read_text())["warmup_steps"] == 3
    for value in ("3", "-1"):
        with pytest.raises(SystemExit) as stopped:
            method_at_scale.main(base + ["--warmup-steps", value, "--out", str(tmp_path / "other")])
        assert stopped.value.code == 2 and "--warmup-steps must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # not a multiple of --every
        method_at_scale.main(base[:-4] + ["--steps", "4", "--every", "2", "--warmup-steps", "1", "--out", str(tmp_path / "other")])
    assert stopped.value.code == 2 and "--warmup-steps must be" in capsys.readouterr().err


# The overrides the measured runs' JSON files recorded, pinned here, as the demo's own defaults may
# move on. Ours: the demo's ours of then, then the four --set (the runs that reached +1.5 dB).
# #4: the demo's no_reblur, then the four --set ("#4 with the bicubic warp", +1.64 / +1.51 dB).
LONG_CONFIG_RUNS = {
    "ours_long_cpu.yaml": {"optim.reblur_lr": 1e-3, "loss.reblur_prefit_steps": 1344,
                           "loss.flow_reference": "blurry", "loss.flow_refine": True,
                           "optim.grad_clip": 0.02, "train.ema_decay": 0.999},
    "eq1_long_cpu.yaml": {"optim.reblur_lr": 1e-3, "loss.reblur_prefit_steps": 1344,
                          "loss.flow_reference": "blurry", "loss.flow_refine": True,
                          "optim.grad_clip": 0.02, "train.ema_decay": 0.999,
                          "loss.warp_interp": "bicubic", "loss.pseudo_supervision": False},
    "no_reblur_long_cpu.yaml": {"loss.pseudo_supervision": False, "loss.reblurring": False,
                                "optim.grad_clip": 0.02, "train.ema_decay": 0.999,
                                "loss.flow_reference": "blurry", "loss.warp_interp": "bicubic"},
}


@pytest.mark.parametrize("name", sorted(LONG_CONFIG_RUNS))
def test_long_cpu_config_is_the_config_the_measured_runs_trained(name):
    """configs/ours_long_cpu.yaml, eq1_long_cpu.yaml and no_reblur_long_cpu.yaml claim runs of
    RESULTS.md: this script's ``--method ... --steps 8000 --every 250 --warmup-steps 250`` with
    their ``--set``. Compare every key of the last chunk's config (the places a run writes to aside)."""
    import dataclasses

    from jdrl.ablation import Budget, variant_config
    from jdrl.config import load_config

    budget = Budget(epochs=8000 // 250, steps_per_epoch=250, lr=5e-4, warmup_epochs=250 // 250)
    measured = variant_config(LONG_CONFIG_RUNS[name], "DATA", "OUT", budget, preset="small", device="cpu")
    shipped = load_config(REPO / "configs" / name,
                          {"data.root": "DATA", "train.out_dir": "OUT", "train.log_every": measured.train.log_every})
    assert dataclasses.asdict(shipped) == dataclasses.asdict(measured)


# benchmarks/records/: each recorded run is a shipped long config, as RESULTS says, plus the --set
# named here (ours with the bicubic warp, and with L_P masked or lighter; Eq. 1 and #4 as
# shipped), and its number of steps.
BICUBIC = {"loss.warp_interp": "bicubic"}
RECORDED_RUNS = {
    "oldR_bicubic_S2.json": ("ours_long_cpu.yaml", BICUBIC, 8000),
    "oldR_bicubic_S3.json": ("ours_long_cpu.yaml", BICUBIC, 8000),
    "oldR_bicubic_S4.json": ("ours_long_cpu.yaml", BICUBIC, 8000),
    "eq1_bicubic_S2.json": ("eq1_long_cpu.yaml", {}, 8000),
    "eq1_bicubic_S3.json": ("eq1_long_cpu.yaml", {}, 8000),
    "eq1_bicubic_S4.json": ("eq1_long_cpu.yaml", {}, 8000),
    "pmask_texture_bicubic_S2.json": ("ours_long_cpu.yaml", {**BICUBIC, "loss.pseudo_mask": "texture"}, 8000),  # stopped at 4500
    "beta01_bicubic_S2.json": ("ours_long_cpu.yaml", {**BICUBIC, "loss.beta": 0.1}, 8000),
    "beta01_bicubic_S3.json": ("ours_long_cpu.yaml", {**BICUBIC, "loss.beta": 0.1}, 8000),
    "beta01_bicubic_S4.json": ("ours_long_cpu.yaml", {**BICUBIC, "loss.beta": 0.1}, 8000),
    "beta025_bicubic_S2.json": ("ours_long_cpu.yaml", {**BICUBIC, "loss.beta": 0.25}, 8000),
    "beta025_bicubic_S3.json": ("ours_long_cpu.yaml", {**BICUBIC, "loss.beta": 0.25}, 8000),
    "no_reb_IB_bicubic_S2.json": ("no_reblur_long_cpu.yaml", {}, 8000),
    "no_reb_IB_bicubic_S3.json": ("no_reblur_long_cpu.yaml", {}, 8000),
    "no_reb_IB_bicubic_S4.json": ("no_reblur_long_cpu.yaml", {}, 8000),
}


def test_every_recorded_run_is_checked():
    """A record added to benchmarks/records/ without an entry above would go unchecked."""
    recorded = {path.name for path in (REPO / "benchmarks" / "records").glob("*.json")}
    assert recorded == set(RECORDED_RUNS)


@pytest.mark.parametrize("record", sorted(RECORDED_RUNS))
def test_recorded_runs_trained_the_shipped_long_configs(record):
    """The records' own overrides (the --set values as the config got them) build the config that
    the shipped long config, with the named extra --set, builds."""
    import dataclasses

    from jdrl.ablation import Budget, variant_config
    from jdrl.config import load_config

    run = json.loads((REPO / "benchmarks" / "records" / record).read_text())
    args = run["args"]
    name, extra, steps = RECORDED_RUNS[record]
    assert (args["steps"], args["every"], args["warmup_steps"], args["preset"], args["lr"]) == (steps, 250, 250, "small", 5e-4)
    # the config of the 8000-step runs (the shipped configs'); a shorter run differs in its step count only
    budget = Budget(epochs=8000 // 250, steps_per_epoch=250, lr=5e-4, warmup_epochs=250 // 250)
    recorded = variant_config(run["overrides"], "DATA", "OUT", budget, preset="small", device="cpu")
    shipped = load_config(REPO / "configs" / name,
                          {"data.root": "DATA", "train.out_dir": "OUT", "train.log_every": recorded.train.log_every,
                           **extra})
    assert dataclasses.asdict(shipped) == dataclasses.asdict(recorded)
