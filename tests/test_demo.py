"""Tests of `jdrl demo` (end to end, --quick) and of the ablation runner (`jdrl ablate`), on tiny
synthetic data with the tiny presets and a budget of two steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from jdrl import ablation
from jdrl.ablation import (
    METRIC_KEYS,
    AblationError,
    Budget,
    evaluate_synthetic,
    run_ablation,
    same_network_overrides,
    summarize,
    write_report,
)
from jdrl.cli import main
from jdrl.demo import GRID_COLUMNS, GRID_HEADER, GRID_ROWS, ROW_LABELS
from jdrl.losses import VARIANTS
from jdrl.synth import make_synthetic_dataset


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore_denormals():
    """The commands flush subnormal floats process-wide (jdrl.ablation.flush_denormals); other test
    files must not inherit that."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """2 train + 2 test misaligned pairs of 40 px."""
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, 2, 2, size=40, shift=1.0, zoom=0.01, max_radius=3.0, seed=0)


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in ("grid.png", "metrics.md", "metrics.json"):
        assert (out / name).is_file(), name
        assert str(out / name) in printed or name == "metrics.json"
    table = (out / "metrics.md").read_text()
    for label in ROW_LABELS.values():
        assert label in table
    payload = json.loads((out / "metrics.json").read_text())
    assert set(payload["means"]) == {"blurry", "l1", "no_reblur", "ours"}
    for row in payload["means"].values():
        assert set(row) == set(METRIC_KEYS)
    assert payload["psnr_vs_gt_aligned"] == {name: row["psnr_gt"] for name, row in payload["means"].items()}
    # Ours' defocus maps are scored against the true radius: R's implied radius and F_B's map.
    assert set(payload["defocus"]) == {"reblur", "predicted_map"}
    assert payload["defocus_spearman"] == payload["defocus"]["reblur"]["spearman"]
    assert -1 <= payload["defocus_spearman"] <= 1
    assert "Spearman" in table and "#4 w/o reblurring" in table
    assert payload["steps"] == 2 and payload["epochs"] == 1
    grid = cv2.imread(str(out / "grid.png"))
    assert grid is not None
    # Two test rows of enlarged 48 px tiles under a header, eight columns.
    assert len(GRID_COLUMNS) == 8
    tile = grid.shape[1] // len(GRID_COLUMNS)
    assert grid.shape[1] == tile * len(GRID_COLUMNS) and grid.shape[0] > 2 * tile
    for name in ("ours", "l1", "no_reblur"):
        assert (out / "runs" / name / "last.pt").is_file(), name
    # Ours' reblurring net takes its prefit steps (two in a quick run), the others have none.
    prefit = {}
    for name in ("ours", "l1", "no_reblur"):
        records = [json.loads(line) for line in (out / "runs" / name / "train_log.jsonl").read_text().splitlines()]
        prefit[name] = [record["steps"] for record in records if record["kind"] == "prefit"]
    assert prefit == {"ours": [2], "l1": [], "no_reblur": []}


def test_demo_budget_leaves_ours_prefit_out(tmp_path, monkeypatch):
    """In the wall-clock budget, ours' reblurring net prefit (paid once, before its first epoch) does
    not take epochs from the three trainings: here one epoch costs 10 s per network, the prefit
    100 s and the budget 60 s, so the three fit two epochs each; counted in, not one more. The
    demo's own bookkeeping runs; only the trainer and the clock are fakes."""
    import types

    import jdrl.train
    from jdrl import demo

    clock = [0.0]
    done: dict[str, int] = {}

    def fake_train(config, resume=None):
        name = Path(config.train.out_dir).name
        first = resume is None
        prefit = 100.0 if first and config.loss.reblur_prefit_steps > 0 else 0.0
        clock[0] += prefit + 10.0 * (config.train.epochs - done.get(name, 0))
        done[name] = config.train.epochs
        return types.SimpleNamespace(prefit_seconds=prefit)

    monkeypatch.setattr(jdrl.train, "train", fake_train)
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock[0])
    trainings = demo._train_all(tmp_path / "data", tmp_path / "val", tmp_path / "runs", demo.DemoSettings(minutes=1.0))
    assert trainings.epochs == done == {"ours": 2, "l1": 2, "no_reblur": 2}
    # Each network's time includes its prefit; its speed per epoch (what the chunks are sized by) does not.
    assert trainings.seconds == {"ours": 120.0, "l1": 20.0, "no_reblur": 20.0}


def test_demo_set_overrides_reach_every_training(tmp_path, capsys):
    out = tmp_path / "demo"
    # The anchor is on by default: switching it off shows the override reaching every training.
    argv = ["demo", "--quick", "--out", str(out), "--threads", "1", "--device", "cpu", "--set", "loss.reblur_anchor=false"]
    assert main(argv) == 0
    for name in ("ours", "l1", "no_reblur"):
        state = torch.load(out / "runs" / name / "last.pt", map_location="cpu", weights_only=False)
        assert state["config"]["loss"]["reblur_anchor"] is False, name
    assert "`loss.reblur_anchor=False`" in (out / "metrics.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["settings"]["overrides"] == {"loss.reblur_anchor": False}


def test_demo_unknown_set_key_is_a_usage_error(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--device", "cpu", "--set", "loss.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["train.out_dir=x", "train.epochs=3", "optim.lr=1e-3", "model.preset=tiny"])
def test_demo_refuses_set_keys_it_controls(tmp_path, capsys, key):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--device", "cpu", "--set", key]) == 2
    error = capsys.readouterr().err
    assert key.split("=")[0] in error and "demo" in error
    assert not (tmp_path / "demo").exists()  # refused before any data is made


def test_demo_set_ours_reaches_ours_only(tmp_path, capsys):
    out = tmp_path / "demo"
    # loss.flow_refine needs the reblurring net: #4 and L1 refuse it, so it can reach ours only.
    argv = ["demo", "--quick", "--out", str(out), "--threads", "1", "--device", "cpu",
            "--set-ours", "loss.flow_reference=blurry", "--set-ours", "loss.flow_refine=true"]
    assert main(argv) == 0
    loss = {
        name: torch.load(out / "runs" / name / "last.pt", map_location="cpu", weights_only=False)["config"]["loss"]
        for name in ("ours", "l1", "no_reblur")
    }
    assert loss["ours"]["flow_refine"] is True and loss["ours"]["flow_reference"] == "blurry"
    for name in ("l1", "no_reblur"):
        assert loss[name]["flow_refine"] is False and loss[name]["flow_reference"] != "blurry", name
    markdown = (out / "metrics.md").read_text()
    assert "Config overrides for ours only: `loss.flow_reference=blurry`, `loss.flow_refine=True`." in markdown
    assert "Config overrides for every training" not in markdown
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["ours_overrides"] == {"loss.flow_reference": "blurry", "loss.flow_refine": True}
    assert settings["overrides"] == {}


def test_demo_names_ours_eq1_when_its_overrides_leave_out_l_p(tmp_path, capsys):
    """`--set-ours loss.pseudo_supervision=false` (or `loss.beta=0`) trains ours as Eq. 1: the
    table, metrics.json's rows, the grid's column and the progress log say so; with the defaults
    they say Eq. 2."""
    from jdrl.demo import (GRID_COLUMNS, METRIC_KEYS, OURS_EQ1_LABEL, DemoSettings, format_metrics, grid_columns,
                           method_label, row_labels)

    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out", str(out), "--threads", "1", "--device", "cpu",
            "--set-ours", "loss.pseudo_supervision=false"]
    assert main(argv) == 0
    config = torch.load(out / "runs" / "ours" / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert config["loss"]["pseudo_supervision"] is False
    assert f"| {OURS_EQ1_LABEL} |" in (out / "metrics.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["rows"]["ours"] == OURS_EQ1_LABEL
    log = capsys.readouterr().err
    assert "ours: reblurring-guided, Eq. 1" in log and "Eq. 2" not in log
    defaults, eq1, beta0 = (DemoSettings(), DemoSettings(ours_overrides={"loss.pseudo_supervision": False}),
                            DemoSettings(ours_overrides={"loss.beta": 0}))
    assert row_labels(defaults)["ours"] == ROW_LABELS["ours"] and "Eq. 2" in ROW_LABELS["ours"]
    assert row_labels(eq1)["ours"] == row_labels(beta0)["ours"] == OURS_EQ1_LABEL
    assert grid_columns(defaults) == GRID_COLUMNS and "ours (Eq. 2)" in GRID_COLUMNS
    assert "ours (Eq. 1)" in grid_columns(eq1) and "ours (Eq. 2)" not in grid_columns(beta0)
    assert "Eq. 2" in method_label("ours", defaults) and "Eq. 1" in method_label("ours", eq1)
    assert method_label("no_reblur", eq1) == method_label("no_reblur", defaults)
    means = {key: {k: 1.0 for k in METRIC_KEYS} for key in ROW_LABELS}
    assert OURS_EQ1_LABEL in format_metrics(means, row_labels(eq1))


def test_demo_set_of_an_option_only_ours_has_fails_before_training(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out", str(out), "--threads", "1", "--device", "cpu",
            "--set", "loss.flow_reference=blurry", "--set", "loss.flow_refine=true"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    # The method that refuses it, the option, and where it belongs; and not one training ran.
    assert "L1 on the misaligned pairs" in error and "loss.flow_refine" in error and "--set-ours" in error
    assert not any((out / "runs" / name / "last.pt").exists() for name in ("ours", "l1", "no_reblur"))


def test_demo_refuses_set_ours_keys_it_controls(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--device", "cpu", "--set-ours", "train.epochs=3"]) == 2
    assert "--set-ours train.epochs" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_rejects_a_bad_budget(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--minutes", "0"]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_ablation_runner_two_variants_two_steps(synthetic, tmp_path, monkeypatch):
    budget = Budget(epochs=1, steps_per_epoch=2, lr=1e-3)
    out = tmp_path / "ablation"
    records = run_ablation(synthetic, out, ["l1", "no_kpn"], budget, preset="tiny", device="cpu", log=lambda _: None)
    assert [record["variant"] for record in records] == ["l1", "no_kpn"]
    for record in records:
        assert record["steps"] == 2
        assert record["arch"] == "unet"
        assert set(record["means"]) == set(METRIC_KEYS)
        assert len(record["per_image"]) == 2
        assert (out / "results" / f"{record['variant']}_seed0.json").is_file()
    # One epoch has no warm-up, so the reblurring loss trained (it joins after the warm-up).
    assert "reblur" in records[1]["final_loss"]
    # R's implied radius is scored against the true radius maps; the UNet with L1 has no map at all.
    assert records[0]["defocus"] is None
    assert -1 <= records[1]["defocus"]["reblur"]["spearman"] <= 1

    # A second call with the same settings reuses the stored results without training.
    def no_training(*args, **kwargs):
        raise AssertionError("train_and_evaluate must not run for a stored result")

    monkeypatch.setattr(ablation, "train_and_evaluate", no_training)
    again = run_ablation(synthetic, out, ["l1", "no_kpn"], budget, preset="tiny", device="cpu", log=lambda _: None)
    assert [record["means"] for record in again] == [record["means"] for record in records]
    # A result trained with other resolved settings (as before a default changed) is not reused.
    stored_path = out / "results" / "no_kpn_seed0.json"
    stored = json.loads(stored_path.read_text())
    assert stored["trained_with"]["loss"]["seed_penalty"] == 0.01
    stored["trained_with"]["loss"]["seed_penalty"] = 0.0
    stored_path.write_text(json.dumps(stored))
    with pytest.raises(AssertionError, match="must not run"):
        run_ablation(synthetic, out, ["no_kpn"], budget, preset="tiny", device="cpu", log=lambda _: None)

    rows = summarize(again, order=["no_kpn", "l1"])
    assert [row["variant"] for row in rows] == ["no_kpn", "l1"]
    blurry = evaluate_synthetic(None, synthetic).means
    settings = again[0]["settings"]
    markdown, table_json = write_report(out, rows, blurry, settings, "jdrl ablate (test)")
    text = markdown.read_text()
    assert "blurry input" in text and "#1 w/ L1 loss" in text and "#5 w/o R_kpn" in text
    assert "R radius Spearman" in text and f"{records[1]['defocus']['reblur']['spearman']:.3f}" in text
    assert "24.62/0.758" in text  # the paper's Table 5 value beside ours
    assert json.loads(table_json.read_text())["rows"][1]["variant"] == "l1"


def test_ablate_set_overrides_every_variant_and_keys_the_cache(synthetic, tmp_path, capsys):
    out = tmp_path / "ablation"
    common = ["ablate", "--out", str(out), "--data", str(synthetic), "--variants", "no_wpn", "--epochs", "1",
              "--steps-per-epoch", "2", "--preset", "tiny", "--device", "cpu", "--threads", "1"]
    # A bound of 0.5 needs a seed-penalty margin below it (checked by LossConfig). Eq. 2's R (not
    # anchored): R reads I_hat, which the by-hand radius below recomputes.
    assert main([*common, "--set", "loss.seed_bound=0.5", "--set", "loss.seed_penalty_margin=0.25",
                 "--set", "loss.flow_warmup_epochs=0", "--set", "loss.reblur_anchor=false"]) == 0
    stored = json.loads((out / "results" / "no_wpn_seed0.json").read_text())
    assert stored["overrides"]["loss.seed_bound"] == 0.5 and stored["overrides"]["loss.predict_weights"] is False
    assert stored["settings"]["extra_overrides"] == {
        "loss.seed_bound": 0.5, "loss.seed_penalty_margin": 0.25, "loss.flow_warmup_epochs": 0,
        "loss.reblur_anchor": False,
    }
    checkpoint = torch.load(out / "runs" / "no_wpn_seed0" / "last.pt", weights_only=False)
    assert checkpoint["config"]["loss"]["seed_bound"] == 0.5
    assert "Overrides for every variant" in (out / "ablation.md").read_text()
    # benchmarks/reblur_diagnostics.py reads the run back: bounded seeds, uniform weights (no R_wpn).
    from jdrl.checkpoint import load_deblur_net
    from jdrl.defocus import implied_radius, load_reblur_net
    from jdrl.imageio import read_image

    spec = importlib.util.spec_from_file_location("reblur_diagnostics", REPO / "benchmarks" / "reblur_diagnostics.py")
    diagnostics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnostics)
    values = diagnostics.diagnose(out / "runs" / "no_wpn_seed0", synthetic, pairs=2)
    assert 0 < values["max abs seed"] <= 0.5
    assert values["w0"] == pytest.approx(1 / 8) and values["w_top"] == pytest.approx(1 / 8)
    assert values["L_R"] > 0 and values["C(R(I_hat) - I_hat)"] > 0
    # The synthetic data has gt_aligned and radius maps: sharpness and radius columns are filled in.
    assert 0 < values["sharpness I_B"] < 1 and values["sharpness I_hat"] > 0
    # Uniform weights put 7/8 on blurring levels: R's radius cannot be 0.
    assert values["true radius"] > 0 and values["R radius"] > 0
    # --split test reads the test pairs' radius maps (inside the margin).
    tested = diagnostics.diagnose(out / "runs" / "no_wpn_seed0", synthetic, pairs=1, split="test")
    first_test = sorted((synthetic / "test" / "radius").glob("*.npy"))[0]
    border = diagnostics.BORDER
    assert tested["true radius"] == pytest.approx(float(np.load(first_test)[border:-border, border:-border].mean()))
    # The fixture's blur stays under 3 px: "true >= 4" has no pixels (None), "true < 2" is R's
    # radius over the first test image's pixels of true radius < 2, inside the margin.
    assert tested["R radius, true >= 4"] is None
    with torch.no_grad():
        blurry = read_image(synthetic / "test" / "blur" / f"{first_test.stem}.png")[None]
        net = load_deblur_net(out / "runs" / "no_wpn_seed0" / "last.pt").eval()
        reblur, _ = load_reblur_net(out / "runs" / "no_wpn_seed0" / "last.pt")
        r_out = reblur(net(blurry).sharp.clamp(0, 1), blurry)
        r_radius = implied_radius(r_out.seeds, r_out.weights, reblur.support)[0].numpy()[border:-border, border:-border]
    true_radius = np.load(first_test)[border:-border, border:-border]
    assert tested["R radius, true < 2"] == pytest.approx(float(r_radius[true_radius < 2].mean()), rel=1e-5)
    # A run without a reblurring net gets the sharpness columns only.
    without_r = tmp_path / "without_r"
    without_r.mkdir()
    torch.save({**checkpoint, "reblur": None}, without_r / "last.pt")
    plain = diagnostics.diagnose(without_r, synthetic, pairs=2)
    assert plain["sharpness I_hat"] == pytest.approx(values["sharpness I_hat"]) and plain["L_R"] is None
    assert plain["R radius"] is None
    with pytest.raises(SystemExit, match="best.pt"):
        diagnostics.diagnose(without_r, synthetic, pairs=1, checkpoint_name="best.pt")
    # The table: columns no run has are left out, a run without R shows "-" in R's columns.
    capsys.readouterr()
    assert diagnostics.main([str(out / "runs" / "no_wpn_seed0"), str(without_r), "--data", str(synthetic), "--pairs", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = [cell.strip() for cell in printed[0].strip("|").split("|")]
    assert "R radius" in header and "R radius, true >= 4" not in header
    plain_row = [cell.strip() for cell in printed[3].strip("|").split("|")]
    assert plain_row[header.index("R radius")] == "-" and plain_row[header.index("sharpness I_hat")] != "-"
    # Images no larger than twice the margin would give NaN means: refused, naming the folder.
    tiny = make_synthetic_dataset(tmp_path / "tiny", 1, 0, size=16, max_radius=2.0, parallax=1.0, nonrigid=0.5, seed=0)
    with pytest.raises(SystemExit, match="16 px"):
        diagnostics.diagnose(without_r, tiny, pairs=1)
    # Other overrides are other settings: the stored result is not reused for them.
    assert main([*common, "--set", "loss.flow_warmup_epochs=0"]) == 0
    assert "reusing" not in capsys.readouterr().out
    # A bad key is reported before anything trains.
    assert main([*common, "--set", "loss.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    # An override that only one variant cannot take is reported before the other one trains.
    checked = tmp_path / "checked"
    assert main(["ablate", "--out", str(checked), "--data", str(synthetic), "--variants", "eq2,l1", "--epochs", "1",
                 "--steps-per-epoch", "1", "--preset", "tiny", "--device", "cpu", "--threads", "1",
                 "--set", "loss.pseudo_supervision=true"]) == 2
    assert "pseudo_supervision" in capsys.readouterr().err
    assert not (checked / "results").exists()


def test_reblur_diagnostics_runs_an_anchored_reblurring_net_as_it_trained(synthetic, tmp_path):
    """An anchored R reads the blur from the flow-aligned sharp target; the diagnostics' radius must
    be the one jdrl.defocus gives for that R (which evaluation reports), not R run on I_hat."""
    from jdrl.checkpoint import load_deblur_net
    from jdrl.defocus import defocus_radii, load_reblur_net
    from jdrl.flow import build_flow_estimator
    from jdrl.imageio import read_image

    out = tmp_path / "anchored"
    assert main(["ablate", "--out", str(out), "--data", str(synthetic), "--variants", "unet_eq1", "--epochs", "1",
                 "--steps-per-epoch", "2", "--preset", "tiny", "--device", "cpu", "--threads", "1",
                 "--set", "loss.reblur_anchor=true", "--set", "loss.flow_warmup_epochs=0"]) == 0
    run = out / "runs" / "unet_eq1_seed0"
    spec = importlib.util.spec_from_file_location("reblur_diagnostics", REPO / "benchmarks" / "reblur_diagnostics.py")
    diagnostics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnostics)
    values = diagnostics.diagnose(run, synthetic, pairs=1, split="test")

    name = sorted((synthetic / "test" / "blur").glob("*.png"))[0].name
    blurry = read_image(synthetic / "test" / "blur" / name)[None]
    sharp = read_image(synthetic / "test" / "gt" / name)[None]
    net = load_deblur_net(run / "last.pt").eval()
    with torch.no_grad():
        estimate = net(blurry).sharp.clamp(0, 1)
    radius = defocus_radii(
        blurry, estimate, None, load_reblur_net(run / "last.pt"), sharp=sharp, flow_estimator=build_flow_estimator("dis")
    )["reblur"].numpy()
    border = diagnostics.BORDER
    assert values["R radius"] == pytest.approx(float(np.mean(radius[border:-border, border:-border])), rel=1e-5)
    # L_R as the anchored loss computes it: the blur read from the aligned pair, applied to I_hat.
    import jdrl_ext
    from jdrl.losses import charbonnier

    reblur, config = load_reblur_net(run / "last.pt")
    with torch.no_grad():
        flow = build_flow_estimator("dis")(blurry, sharp).to(sharp)
        fitted = reblur(jdrl_ext.flow_warp(sharp, flow, padding_mode=config.warp_padding), blurry)
        expected = charbonnier(reblur.blur(estimate, fitted.seeds, fitted.weights) - blurry, eps=config.eps).item()
        fit_only = charbonnier(fitted.reblurred - blurry, eps=config.eps).item()
    assert values["L_R"] == pytest.approx(expected, rel=1e-5) and expected != pytest.approx(fit_only, rel=1e-3)
    # Without the sharp targets an anchored R cannot run as it trained: refused, naming the folder.
    import shutil

    no_gt = tmp_path / "no_gt"
    shutil.copytree(synthetic, no_gt)
    shutil.rmtree(no_gt / "test" / "gt")
    with pytest.raises(SystemExit, match="anchored"):
        diagnostics.diagnose(run, no_gt, pairs=1, split="test")
    # The UNet has no defocus map: no pseudo-map columns.
    assert values["pseudo map Spearman"] is None and values["F_B vs pseudo map"] is None


@pytest.fixture(scope="module")
def eq2_run(synthetic, tmp_path_factory) -> Path:
    """A two-step Eq. 2 run (tiny preset, so F_B and R) on the synthetic pairs: its run folder."""
    out = tmp_path_factory.mktemp("eq2")
    assert main(["ablate", "--out", str(out), "--data", str(synthetic), "--variants", "eq2", "--epochs", "1",
                 "--steps-per-epoch", "2", "--preset", "tiny", "--device", "cpu", "--threads", "1",
                 "--set", "loss.flow_warmup_epochs=0"]) == 0
    return out / "runs" / "eq2_seed0"


def test_reblur_diagnostics_compares_f_b_with_r_s_pseudo_map(synthetic, eq2_run):
    """With F_B (Eq. 2, weighted pseudo map), the two pooled Spearman columns are R's pseudo map read
    back against the true radius and F_B's read-back against R's, recomputed here by hand."""
    from jdrl.checkpoint import load_deblur_net
    from jdrl.defocus import defocus_correlations, load_reblur_net, predicted_map_radius, reblur_net_input
    from jdrl.flow import build_flow_estimator
    from jdrl.imageio import read_image
    from jdrl.losses import pseudo_defocus_map

    run = eq2_run
    spec = importlib.util.spec_from_file_location("reblur_diagnostics", REPO / "benchmarks" / "reblur_diagnostics.py")
    diagnostics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnostics)
    values = diagnostics.diagnose(run, synthetic, pairs=2, split="test")

    net = load_deblur_net(run / "last.pt").eval()
    reblur, config = load_reblur_net(run / "last.pt")
    flow = build_flow_estimator("dis")
    pseudo, fb, true, aligned = [], [], [], []
    with torch.no_grad():
        for path in sorted((synthetic / "test" / "blur").glob("*.png"))[:2]:
            blurry = read_image(path)[None]
            output = net(blurry)
            sharp = read_image(synthetic / "test" / "gt" / path.name)[None]
            seeds, weights, _ = reblur.predict(reblur_net_input(blurry, output.sharp.clamp(0, 1), config, sharp, flow), blurry)
            pseudo.append(predicted_map_radius(pseudo_defocus_map(seeds, weights), 8, config.seed_bound, reblur.support)[0])
            fb.append(predicted_map_radius(output.defocus_map, 8, config.seed_bound, reblur.support)[0])
            true.append(torch.from_numpy(np.load(synthetic / "test" / "radius" / f"{path.stem}.npy")))
            aligned.append(read_image(synthetic / "test" / "gt_aligned" / path.name))
    assert values["pseudo map Spearman"] == pytest.approx(defocus_correlations(pseudo, true, aligned)["spearman"], abs=1e-6)
    assert values["F_B vs pseudo map"] == pytest.approx(defocus_correlations(fb, pseudo, aligned)["spearman"], abs=1e-6)

    # PSNR by true-radius band: squared errors pooled over the two pairs inside the 8 px border.
    border = diagnostics.BORDER
    for image_name in ("I_hat", "I_B"):
        for band, low, high in (("< 2", 0.0, 2.0), ("2-4", 2.0, 4.0), (">= 4", 4.0, np.inf)):
            total, pixels = 0.0, 0
            for path, image_aligned, radius in zip(sorted((synthetic / "test" / "blur").glob("*.png"))[:2], aligned, true):
                blurry = read_image(path)[None]
                image = net(blurry).sharp.clamp(0, 1).detach() if image_name == "I_hat" else blurry
                squared = (image[0] - image_aligned).pow(2).mean(dim=0)[border:-border, border:-border]
                inside = radius[border:-border, border:-border]
                where = (inside >= low) & (inside < high)
                total, pixels = total + squared[where].sum().item(), pixels + int(where.sum())
            name = f"PSNR {image_name}, true {band}"
            if pixels:
                assert values[name] == pytest.approx(10 * np.log10(pixels / total), abs=1e-4), name
            else:
                assert values[name] is None, name


def test_defocus_map_alone_scores_f_b_against_r_s_frozen_pseudo_map(synthetic, eq2_run, tmp_path, capsys):
    """benchmarks/defocus_map_alone.py: the run's own F_B row and the constant-map baseline are the
    Charbonnier losses against R's pseudo map, recomputed here by hand; a fresh F_B trains on it (its
    loss moves) and the radius target trains a one-channel map."""
    from jdrl.checkpoint import load_deblur_net
    from jdrl.defocus import load_reblur_net, reblur_net_input
    from jdrl.flow import build_flow_estimator
    from jdrl.imageio import read_image
    from jdrl.losses import charbonnier, pseudo_defocus_map

    spec = importlib.util.spec_from_file_location("defocus_map_alone", REPO / "benchmarks" / "defocus_map_alone.py")
    alone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alone)
    scores = tmp_path / "pseudo.json"
    assert alone.main([str(eq2_run), "--data", str(synthetic), "--steps", "3", "--log-every", "1", "--lr", "1e-2",
                       "--json", str(scores)]) == 0
    rows = json.loads(scores.read_text())["rows"]
    assert [row["step"] for row in rows] == ["run's F_B", 1, 2, 3]
    assert "| run's F_B |" in capsys.readouterr().out

    net = load_deblur_net(eq2_run / "last.pt").eval()
    reblur, config = load_reblur_net(eq2_run / "last.pt")
    flow = build_flow_estimator("dis")

    def maps(split):
        out = []
        with torch.no_grad():
            for path in sorted((synthetic / split / "blur").glob("*.png")):
                blurry = read_image(path)[None]
                output = net(blurry)
                sharp = read_image(synthetic / split / "gt" / path.name)[None]
                seeds, weights, _ = reblur.predict(reblur_net_input(blurry, output.sharp.clamp(0, 1), config, sharp, flow), blurry)
                out.append((pseudo_defocus_map(seeds, weights), output.defocus_map))
        return out

    test, train = maps("test"), maps("train")
    mean = torch.cat([pseudo for pseudo, _ in train]).mean(dim=(0, 2, 3), keepdim=True)
    run_loss = np.mean([charbonnier(fb - pseudo, eps=config.eps).item() for pseudo, fb in test])
    mean_loss = np.mean([charbonnier(mean - pseudo, eps=config.eps).item() for pseudo, _ in test])
    assert rows[0]["L_P"] == pytest.approx(run_loss, rel=1e-5)
    assert [row["L_P_of_mean"] for row in rows] == pytest.approx([mean_loss] * 4, rel=1e-4)
    assert len({round(row["L_P"], 6) for row in rows[1:]}) > 1

    radius_scores = tmp_path / "radius.json"
    assert alone.main([str(eq2_run), "--data", str(synthetic), "--target", "radius", "--steps", "1",
                       "--json", str(radius_scores)]) == 0
    radius_rows = json.loads(radius_scores.read_text())["rows"]
    assert [row["step"] for row in radius_rows] == [1] and np.isfinite(radius_rows[0]["L_P"])

    # --moving: a fresh R trains beside F_B, so the targets (and their mean) change from step to step.
    moving_scores = tmp_path / "moving.json"
    assert alone.main([str(eq2_run), "--data", str(synthetic), "--moving", "--steps", "2", "--log-every", "1",
                       "--json", str(moving_scores)]) == 0
    moving_rows = json.loads(moving_scores.read_text())["rows"]
    assert moving_rows[0] == rows[0]
    assert moving_rows[1]["L_P_of_mean"] != pytest.approx(moving_rows[2]["L_P_of_mean"], rel=1e-6)
    assert moving_rows[1]["L_P_of_mean"] != pytest.approx(mean_loss, rel=1e-3)
    with pytest.raises(SystemExit):
        alone.main([str(eq2_run), "--data", str(synthetic), "--moving", "--target", "radius"])
    # --ema: the targets come from an average of R's weights. R trains the same whatever F_B does, so
    # an average that forgets at once (decay ~0) is R itself: the baselines equal --moving's; a slow
    # one (0.9) lags behind R and they differ.
    def ema_rows(decay: str) -> list[dict]:
        path = tmp_path / f"ema{decay}.json"
        assert alone.main([str(eq2_run), "--data", str(synthetic), "--moving", "--ema", decay, "--steps", "2",
                           "--log-every", "1", "--json", str(path)]) == 0
        return json.loads(path.read_text())["rows"]

    forgetful, slow = ema_rows("1e-9"), ema_rows("0.9")
    for step in (1, 2):
        assert forgetful[step]["L_P_of_mean"] == pytest.approx(moving_rows[step]["L_P_of_mean"], rel=1e-5)
        assert slow[step]["L_P_of_mean"] != pytest.approx(moving_rows[step]["L_P_of_mean"], rel=1e-3)
    with pytest.raises(SystemExit):
        alone.main([str(eq2_run), "--data", str(synthetic), "--ema", "0.9"])


def test_demo_rescore_reproduces_the_demo_and_refuses_its_training_photos(tmp_path, capsys):
    """benchmarks/demo_rescore.py (and defocus_map_use.py) on a demo's own test pairs gives the
    demo's own numbers (means, by photo, and ours - #4 with its standard error recomputed here from
    the demo's per-pair rows); a test set cut from the demo's training photos is refused, naming
    --data; other blur settings are flagged."""
    import statistics

    demo = tmp_path / "demo"
    assert main(["demo", "--quick", "--test", "5", "--out", str(demo), "--threads", "1", "--device", "cpu"]) == 0
    payload = json.loads((demo / "metrics.json").read_text())
    # The table scores all five test pairs, the grid shows the first four.
    assert len(payload["per_image"]["ours"]) == 5
    grid = cv2.imread(str(demo / "grid.png"))
    tile = grid.shape[1] // len(GRID_COLUMNS)
    assert grid.shape[0] == GRID_HEADER + GRID_ROWS * tile and GRID_ROWS == 4
    assert "Ours - #4, PSNR vs gt_aligned pair by pair" in (demo / "metrics.md").read_text()
    spec = importlib.util.spec_from_file_location("demo_rescore", REPO / "benchmarks" / "demo_rescore.py")
    rescore = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rescore)
    capsys.readouterr()

    scores = tmp_path / "rescore.json"
    assert rescore.main([str(demo), "--data", str(demo / "data"), "--json", str(scores)]) == 0
    assert str(demo) in capsys.readouterr().out
    result = json.loads(scores.read_text())
    assert result["blurry"]["psnr_gt"] == pytest.approx(payload["means"]["blurry"]["psnr_gt"], abs=1e-9)
    (row,) = result["demos"]
    for name in ("l1", "no_reblur", "ours"):
        assert row["methods"][name]["means"]["psnr_gt"] == pytest.approx(payload["means"][name]["psnr_gt"], abs=1e-6), name
    differences = [a["psnr_gt"] - b["psnr_gt"] for a, b in zip(payload["per_image"]["ours"], payload["per_image"]["no_reblur"])]
    assert len(differences) == 5
    # The five pairs are crops of the four test photos: one photo gives two.
    meta = json.loads((demo / "data" / "meta.json").read_text())
    photo_of = {pair["name"]: pair["source"] for pair in meta["pairs"]["test"]}
    by_photo: dict[str, list[float]] = {}
    for pair, difference in zip(payload["per_image"]["ours"], differences):
        by_photo.setdefault(photo_of[pair["name"]], []).append(difference)
    assert sorted(len(values) for values in by_photo.values()) == [1, 1, 1, 2]
    photo_means = {photo: statistics.mean(values) for photo, values in by_photo.items()}
    expected = {"mean": statistics.mean(differences), "standard_error": statistics.stdev(differences) / 5 ** 0.5,
                "wins": sum(difference > 0 for difference in differences), "pairs": 5,
                "group_standard_error": statistics.stdev(photo_means.values()) / 2}
    for versus, tolerance in ((row["ours_minus_no_reblur_psnr_gt"], 1e-6), (payload["ours_minus_no_reblur_psnr_gt"], 1e-9)):
        assert versus.pop("by_group") == pytest.approx(photo_means, abs=tolerance)
        assert versus == pytest.approx(expected, abs=tolerance)
    assert row["r_map_spearman"] == pytest.approx(payload["defocus_spearman"], abs=1e-6)
    assert row["differs"] == {}
    # Each row photo by photo, and the input's: the means of the demo's own per-pair PSNRs.
    def by_photo_mean(rows):
        values: dict[str, list[float]] = {}
        for pair in rows:
            values.setdefault(photo_of[pair["name"]], []).append(pair["psnr_gt"])
        return {photo: statistics.mean(scores) for photo, scores in values.items()}

    assert result["blurry_psnr_gt_by_photo"] == pytest.approx(by_photo_mean(payload["per_image"]["blurry"]), abs=1e-9)
    for name in ("l1", "no_reblur", "ours"):
        assert row["psnr_gt_by_photo"][name] == pytest.approx(by_photo_mean(payload["per_image"][name]), abs=1e-6), name

    with pytest.raises(SystemExit, match="--data"):
        rescore.main([str(demo), "--data", str(demo / "data"), "--split", "train"])
    # Crops of training photos the demo's two pairs did not use are refused too: it saw them in
    # its validation pairs, or could have (meta.json's list of training photos).
    demo_pair_photos = {pair["source"] for pair in meta["pairs"]["train"]}
    all_photos = make_synthetic_dataset(tmp_path / "train_photos", 12, 0, size=32, seed=3)
    unused = {pair["source"] for pair in json.loads((all_photos / "meta.json").read_text())["pairs"]["train"]} - demo_pair_photos
    assert unused
    with pytest.raises(SystemExit, match=sorted(unused)[0]):
        rescore.main([str(demo), "--data", str(all_photos), "--split", "train"])
    other = make_synthetic_dataset(tmp_path / "other", 0, 2, size=48, max_radius=2.0, seed=5)
    assert rescore.main([str(demo), "--data", str(other), "--json", str(scores)]) == 0
    assert "max_radius" in json.loads(scores.read_text())["demos"][0]["differs"]

    # benchmarks/defocus_map_use.py on the same demo (a test of its own would train another one):
    # with F_B's map as predicted it repeats the demo's per-pair PSNRs; the map replaced by its
    # spatial mean or by zeros changes the output, and F is left as it was.
    spec = importlib.util.spec_from_file_location("defocus_map_use", REPO / "benchmarks" / "defocus_map_use.py")
    map_use = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(map_use)
    uses = tmp_path / "map_use.json"
    assert map_use.main([str(demo / "runs" / "ours"), str(demo / "runs" / "no_reblur" / "last.pt"), "--data", str(demo / "data"),
                         "--json", str(uses)]) == 0
    assert "moon" in capsys.readouterr().out
    used = json.loads(uses.read_text())
    assert used["input"] == pytest.approx({p["name"]: p["psnr_gt"] for p in payload["per_image"]["blurry"]}, abs=1e-9)
    ours = used["runs"][str(demo / "runs" / "ours")]
    assert ours["as is"] == pytest.approx({p["name"]: p["psnr_gt"] for p in payload["per_image"]["ours"]}, abs=1e-6)
    for mode in ("mean", "zeros"):
        assert any(abs(ours[mode][name] - ours["as is"][name]) > 1e-6 for name in ours["as is"]), mode
    with pytest.raises(SystemExit, match="best.pt or last.pt"):
        map_use.main([str(tmp_path), "--data", str(demo / "data")])
    with pytest.raises(SystemExit, match="--data"):
        map_use.main([str(demo / "runs" / "ours"), "--data", str(tmp_path)])


def test_warmup_is_the_papers_share_and_shorter_than_the_run():
    assert [ablation.warmup_share_of(epochs) for epochs in (1, 2, 12, 19, 30, 200)] == [0, 1, 1, 1, 2, 15]
    assert Budget(epochs=1).flow_warmup_epochs() == 0 and Budget(epochs=5, warmup_epochs=3).flow_warmup_epochs() == 3


def test_blurry_input_scores_against_gt_aligned_not_gt(synthetic):
    means = evaluate_synthetic(None, synthetic).means
    # gt is misaligned, gt_aligned is not: the blurry input matches gt_aligned much better.
    assert means["psnr_gt"] > means["psnr_unaligned"] + 1.0


def test_variants_come_from_the_losses_module():
    assert set(ablation.TABLE5_VARIANTS) <= set(VARIANTS)
    l1_same_network = same_network_overrides("l1")
    assert not any(key.startswith("model.") for key in l1_same_network)
    assert l1_same_network["loss.deblur_loss"] == "l1"
    assert VARIANTS["l1"]["model.arch"] == "unet"  # left untouched
    with pytest.raises(AblationError, match="unknown variant"):
        same_network_overrides("nope")


def test_bad_arguments_name_themselves(synthetic, tmp_path):
    with pytest.raises(AblationError, match="epochs"):
        Budget(epochs=0)
    with pytest.raises(AblationError, match="unknown variant"):
        run_ablation(synthetic, tmp_path, ["l1", "bogus"], Budget(epochs=1))
    with pytest.raises(AblationError, match="gt_aligned"):
        evaluate_synthetic(None, tmp_path)


def test_ours_reblur_lr_is_the_demo_rate_or_the_override():
    from jdrl.demo import (DEMO_REBLUR_LR, DEMO_REBLUR_PREFIT_LR, DEMO_REBLUR_PREFIT_STEPS, METHODS, DemoSettings,
                           ours_reblur_lr, ours_reblur_prefit_lr)

    assert METHODS["ours"][1]["optim.reblur_lr"] == DEMO_REBLUR_LR == 1e-4
    assert METHODS["ours"][1]["optim.reblur_prefit_lr"] == DEMO_REBLUR_PREFIT_LR == 1e-3
    assert DemoSettings().reblur_prefit_steps == DEMO_REBLUR_PREFIT_STEPS == 1344
    assert ours_reblur_lr(DemoSettings()) == 1e-4 and ours_reblur_prefit_lr(DemoSettings()) == 1e-3
    # The prefit's rate: an override of it, or null for R's rate throughout.
    assert ours_reblur_prefit_lr(DemoSettings(ours_overrides={"optim.reblur_prefit_lr": "3e-4"})) == 3e-4
    assert ours_reblur_prefit_lr(DemoSettings(overrides={"optim.reblur_prefit_lr": None, "optim.reblur_lr": 2e-4})) == 2e-4
    # --set values are YAML: "1e-4" (no dot) arrives as a string, null as None (optim.reblur_lr's default).
    assert ours_reblur_lr(DemoSettings(overrides={"optim.reblur_lr": "1e-4"})) == 1e-4
    assert ours_reblur_lr(DemoSettings(overrides={"optim.reblur_lr": None})) == 5e-4  # min(lr 5e-4, cap 1e-3)
    # --set-ours (ours only) wins over --set (every training).
    assert ours_reblur_lr(DemoSettings(overrides={"optim.reblur_lr": 2e-4}, ours_overrides={"optim.reblur_lr": 1e-4})) == 1e-4
