"""Tests of the config, checkpoints, trainer and `jdrl` command, on generated 32x32 pairs with the
tiny preset (a few steps each)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jdrl.checkpoint import CheckpointError, load_checkpoint, load_deblur_net, save_checkpoint
from jdrl.config import REBLUR_LR_CAP, Config, ConfigError, config_from_dict, load_config
from jdrl.losses import VARIANTS, JDRLLoss
from jdrl.train import NonFiniteLossError, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """4 random-textured 32x32 pairs in SDD layout; the sharp image is shifted by (1, 2) px."""
    from jdrl.imageio import write_image

    root = tmp_path_factory.mktemp("pairs")
    generator = torch.Generator().manual_seed(0)
    for index in range(4):
        texture = torch.rand(1, 3, 8, 8, generator=generator)
        sharp = F.interpolate(texture, size=(36, 36), mode="bicubic", align_corners=False).clamp(0, 1)
        blurry = F.avg_pool2d(F.pad(sharp, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        write_image(root / "blur" / f"{index:03d}.png", blurry[0, :, 2:34, 2:34])
        write_image(root / "gt" / f"{index:03d}.png", sharp[0, :, 1:33, 2:34])
    return root


@pytest.fixture(autouse=True)
def restore_denormals():
    """`jdrl train` flushes subnormal floats process-wide; other tests must not inherit that."""
    yield
    torch.set_flush_denormal(False)


def tiny_config(pairs: Path, out_dir: Path, **overrides) -> Config:
    values = {
        "model.preset": "tiny",
        "data.root": str(pairs),
        "data.crop": 24,
        "data.workers": 0,
        "optim.lr": 1e-3,
        "loss.flow_warmup_epochs": 1,
        "train.epochs": 2,
        "train.out_dir": str(out_dir),
        "train.device": "cpu",
        "train.log_every": 1,
    }
    values.update(overrides)
    return load_config(None, values)


def same_state(left: dict, right: dict) -> bool:
    if left.keys() != right.keys():
        return False
    for key, a in left.items():
        b = right[key]
        if isinstance(a, dict):
            if not same_state(a, b):
                return False
        elif isinstance(a, torch.Tensor):
            if not torch.equal(a, b):
                return False
        elif a != b:
            return False
    return True


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in records]


# ---------------------------------------------------------------- config

def test_config_defaults_are_the_papers():
    config = Config()
    config.validate()
    assert (config.optim.lr, config.optim.betas, config.optim.eps) == (2e-5, (0.9, 0.999), 1e-8)
    assert (config.optim.lr_step, config.optim.lr_gamma) == (60, 0.5)
    assert (config.train.epochs, config.train.batch_size, config.data.crop) == (200, 1, 512)
    assert (config.loss.alpha, config.loss.beta, config.loss.mask_lambda) == (0.5, 0.5, 0.35)
    assert (config.loss.flow_warmup_epochs, config.loss.eps, config.model.levels) == (15, 1e-3, 8)
    assert config.flow.backend == "dis"


def test_config_yaml_with_set_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: small\noptim:\n  lr: 2e-5\ntrain:\n  epochs: 7\n")
    config = load_config(
        path,
        ["optim.lr=1e-4", "optim.betas=[0.8, 0.99]", "data.crop=null", "loss.cycle_deformation=false", "train.seed=3"],
    )
    assert config.model.preset == "small" and config.train.epochs == 7
    assert config.optim.lr == 1e-4 and config.optim.betas == (0.8, 0.99)
    assert config.data.crop is None and config.loss.cycle_deformation is False and config.train.seed == 3
    # YAML 1.1 reads "2e-5" as a string; a float field accepts it as the number.
    assert load_config(path).optim.lr == 2e-5
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.cycel=false", r"unknown key loss\.cycel.*known keys in loss"),
        ("train.epochs=abc", r"train\.epochs must be an integer"),
        ("train.amp=1", r"train\.amp must be true or false"),
        ("optim.betas=[0.9]", r"optim\.betas must be a list of 2"),
        ("modle.arch=unet", r"unknown config section 'modle'"),
        ("model.arch=resnet", r"model\.arch must be one of"),
        ("loss.deblur_loss=l2", r"loss\.deblur_loss must be one of"),
        ("model.arch=unet", r"loss\.pseudo_supervision=true needs a net that predicts a defocus map"),
        ("optim.lr", r"expected KEY=VALUE"),
        ("optim.reblur_lr=0", r"optim\.reblur_lr must be > 0"),
        ("optim.reblur_kernel_lr_scale=0", r"optim\.reblur_kernel_lr_scale must be a finite number > 0"),
        ("optim.reblur_kernel_lr_scale=nan", r"optim\.reblur_kernel_lr_scale must be a finite number > 0"),
        ("train.ema_decay=1", r"train\.ema_decay must be in \[0, 1\)"),
        ("train.ema_decay=nan", r"train\.ema_decay must be in \[0, 1\)"),
        ("optim.grad_clip=-1", r"optim\.grad_clip must be a finite number >= 0"),
        ("optim.grad_clip=inf", r"optim\.grad_clip must be a finite number >= 0"),
    ],
)
def test_config_errors_name_the_key(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_config_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", sorted(path.name for path in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.data.root is None  # the user points it at their data


def test_every_variant_is_a_valid_config():
    for overrides in VARIANTS.values():
        config = load_config(CONFIGS / "paper.yaml", overrides)
        if overrides.get("model.arch") == "unet":  # a Table 5 row: also on top of the ablation base
            assert load_config(CONFIGS / "ablation_unet.yaml", overrides).loss == config.loss


# ---------------------------------------------------------------- cli

def test_cli_help_lists_every_subcommand(capsys):
    from jdrl.cli import SUBCOMMANDS, main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("train", "eval", "deblur", "make-patches", "inspect-pairs", "synth", "demo", "ablate"):
        assert name in text and name in SUBCOMMANDS
    assert main([]) == 2


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "config": {"epoch": 1}})

    def crash(obj, stream, *args, **kwargs):
        stream.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "config": {"epoch": 2}})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.ones(3)) and state["config"] == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_load_checkpoint_names_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


# ---------------------------------------------------------------- training

def test_short_training_lowers_the_loss_and_writes_checkpoints(pairs, tmp_path):
    # The Table 5 base (UNet, Eq. 1), flow against I_hat from the first step so that every epoch
    # measures the same objective. At this learning rate (50x the paper's) the tiny JDRL net's
    # loss is erratic over so few steps and L_P's target drifts, so the descent is checked here.
    config = tiny_config(
        pairs,
        tmp_path / "run",
        **VARIANTS["unet_eq1"],
        **{"data.crop": None, "data.flip": False, "train.epochs": 4, "loss.flow_warmup_epochs": 0,
           "data.val_root": str(pairs), "data.val_split": "train"},
    )
    result = train(config)
    totals = [record["total"] for record in result.epoch_losses]
    deblur = [record["deblur"] for record in result.epoch_losses]
    assert len(totals) == 4 and all(math.isfinite(t) for t in totals)
    assert totals[-1] < 0.9 * totals[0] and deblur[-1] < deblur[0]
    assert result.steps == 16
    assert result.last_checkpoint == tmp_path / "run" / "last.pt"
    assert result.best_checkpoint == tmp_path / "run" / "best.pt" and result.best_metric is not None
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "train_log.jsonl").is_file()
    assert load_config(tmp_path / "run" / "config.yaml") == config

    state = load_checkpoint(result.last_checkpoint)
    assert {"model", "reblur", "optimizer", "scheduler", "epoch", "step", "rng", "config"} <= set(state)
    assert state["epoch"] == 4 and state["step"] == 16
    assert state["config"]["model"] == {"arch": "unet", "preset": "tiny", "levels": 8}
    net = load_deblur_net(result.last_checkpoint)
    image = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(net(image).sharp, result.net(image).sharp, rtol=0, atol=0)


def test_resume_equals_an_uninterrupted_run(pairs, tmp_path):
    overrides = {"train.deterministic": True, "train.epochs": 3, "train.max_steps_per_epoch": 2,
                 "data.val_root": str(pairs), "data.val_split": "train", "data.val_crop": 24}
    straight = train(tiny_config(pairs, tmp_path / "straight", **overrides))
    interrupted = tiny_config(pairs, tmp_path / "resumed", **{**overrides, "train.epochs": 1})
    train(interrupted)
    resumed = train(tiny_config(pairs, tmp_path / "resumed", **overrides), resume=tmp_path / "resumed" / "last.pt")

    assert without_timing(resumed.epoch_losses) == without_timing(straight.epoch_losses)
    assert resumed.val_metrics == straight.val_metrics and resumed.steps == straight.steps == 6
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key in ("model", "reblur", "optimizer", "scheduler", "rng"):
        assert same_state({key: a[key]}, {key: b[key]}), key
    assert torch.are_deterministic_algorithms_enabled() is False  # the run restores the process setting


def test_weight_average_checkpoints_hold_the_average_and_resume_exactly(pairs, tmp_path):
    """With train.ema_decay, validation, best.pt/last.pt's ``averaged_model`` (what load_deblur_net
    returns) and ``result.net`` are the average; ``model`` stays the trained weights; a resumed run
    equals an uninterrupted one."""
    from jdrl.flow import build_flow_estimator
    from jdrl.train import _build_datasets, _validate

    overrides = {"train.deterministic": True, "train.epochs": 3, "train.max_steps_per_epoch": 2, "train.ema_decay": 0.9,
                 "data.val_root": str(pairs), "data.val_split": "train", "data.val_crop": 24}
    config = tiny_config(pairs, tmp_path / "straight", **overrides)
    straight = train(config)
    train(tiny_config(pairs, tmp_path / "resumed", **{**overrides, "train.epochs": 1}))
    resumed = train(tiny_config(pairs, tmp_path / "resumed", **overrides), resume="auto")
    assert without_timing(resumed.epoch_losses) == without_timing(straight.epoch_losses)
    assert resumed.val_metrics == straight.val_metrics
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key in ("model", "averaged_model", "weight_average", "optimizer"):
        assert same_state({key: a[key]}, {key: b[key]}), key
    assert a["weight_average"] == {"decay": 0.9, "updates": 6}

    # The validations scored the average: re-validating each checkpoint's net gives the metrics
    # of its epoch (the last epoch's for last.pt, the best epoch's for best.pt).
    _, val_set = _build_datasets(config)
    flow = build_flow_estimator("dis")
    best = load_checkpoint(tmp_path / "straight" / "best.pt")
    for path, epoch in ((tmp_path / "straight" / "last.pt", 3), (tmp_path / "straight" / "best.pt", best["epoch"])):
        metrics, _ = _validate(load_deblur_net(path), val_set, flow, torch.device("cpu"), False)
        expected = next(m for m in straight.val_metrics if m["epoch"] == epoch)
        assert metrics == pytest.approx({k: v for k, v in expected.items() if k != "epoch"}, abs=1e-9), path.name
    assert not same_state(a["model"], a["averaged_model"])
    image = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_deblur_net(tmp_path / "straight" / "last.pt")(image).sharp,
                                   straight.net(image).sharp, rtol=0, atol=0)

    # Without the average the same run trains the same weights (the average only follows them), and
    # switching it on or off at a resume trains them too: the trained weights travel as ``model``.
    plain = train(tiny_config(pairs, tmp_path / "plain", **{**overrides, "train.ema_decay": 0.0}))
    assert without_timing(plain.epoch_losses) == without_timing(straight.epoch_losses)
    c = load_checkpoint(tmp_path / "plain" / "last.pt")
    assert same_state(c["model"], a["model"]) and "averaged_model" not in c
    for first, then in ((0.9, 0.0), (0.0, 0.9)):
        run = tmp_path / f"switch_{first}_{then}"
        train(tiny_config(pairs, run, **{**overrides, "train.epochs": 1, "train.ema_decay": first}))
        switched = train(tiny_config(pairs, run, **{**overrides, "train.ema_decay": then}), resume="auto")
        assert without_timing(switched.epoch_losses) == without_timing(straight.epoch_losses)
        state = load_checkpoint(run / "last.pt")
        assert same_state(state["model"], a["model"])
        # Switched on at epoch 2: the average starts from the resumed weights, 4 updates later.
        assert state.get("weight_average") == (None if then == 0 else {"decay": 0.9, "updates": 4})


def test_weight_average_follows_its_rule():
    """By hand: d_n = min(decay, (1 + n) / (10 + n)); with 0.9 the cap binds from n = 80 on."""
    from jdrl.weight_average import WeightAverage

    source = torch.nn.Linear(2, 1)
    average = WeightAverage(source, 0.9)
    expected = source.weight.detach().clone()
    for n in range(1, 150):
        with torch.no_grad():
            source.weight.add_(1.0)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * source.weight.detach()
        average.update(source)
    torch.testing.assert_close(average.net.weight, expected)
    assert average.updates == 149 and average.current_decay() == 0.9
    assert not average.net.weight.requires_grad
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(source, 1.0)


def test_reblur_lr_is_a_second_parameter_group(pairs, tmp_path):
    overrides = {"optim.reblur_lr": 1e-9, "loss.flow_warmup_epochs": 0, "train.max_steps_per_epoch": 2,
                 "train.epochs": 1}
    train(tiny_config(pairs, tmp_path, **overrides))
    first = load_checkpoint(tmp_path / "last.pt")
    assert [group["lr"] for group in first["optimizer"]["param_groups"]] == [1e-3, 1e-9]
    train(tiny_config(pairs, tmp_path, **{**overrides, "train.epochs": 2}), resume="auto")
    second = load_checkpoint(tmp_path / "last.pt")
    # Adam moves each weight by about lr per step: R (1e-9) stays put, F (1e-3) does not.
    reblur_moved = max((second["reblur"][k] - first["reblur"][k]).abs().max().item() for k in first["reblur"])
    deblur_moved = max((second["model"][k] - first["model"][k]).abs().max().item() for k in first["model"])
    assert reblur_moved < 1e-7 and deblur_moved > 1e-4
    # Without reblur_lr and F faster than the cap: R trains at REBLUR_LR_CAP in a group of its own.
    capped = tiny_config(pairs, tmp_path / "capped", **{**overrides, "optim.reblur_lr": None, "optim.lr": 2e-3})
    train(capped)
    groups = load_checkpoint(tmp_path / "capped" / "last.pt")["optimizer"]["param_groups"]
    assert [group["lr"] for group in groups] == [2e-3, REBLUR_LR_CAP] and REBLUR_LR_CAP == 1e-3
    # Without reblur_lr at lr <= the cap (the paper's 2e-5): one group, as before (older checkpoints resume).
    one = tiny_config(pairs, tmp_path / "one", **{**overrides, "optim.reblur_lr": None, "optim.lr": 2e-5})
    train(one)
    assert len(load_checkpoint(tmp_path / "one" / "last.pt")["optimizer"]["param_groups"]) == 1
    # Resuming it with reblur_lr set is an error that names the key, not a bare ValueError.
    with pytest.raises(ConfigError, match="optim.reblur_lr"):
        train(tiny_config(pairs, tmp_path / "one", **{**overrides, "train.epochs": 2, "optim.lr": 2e-5}), resume="auto")


def test_grad_clip_scales_only_the_deblurring_nets_large_gradients(pairs, tmp_path, monkeypatch):
    """optim.grad_clip caps the global norm of F's gradients at each step and leaves R's alone; a
    clip no step reaches changes nothing, and the log's grad_norm is F's norm before clipping."""
    overrides = {"loss.flow_warmup_epochs": 0, "train.max_steps_per_epoch": 3, "train.epochs": 1}
    seen: list[tuple[float, float]] = []
    step = torch.optim.Adam.step

    def recording_step(optimizer, *args, **kwargs):
        # F's and R's gradient norms as Adam receives them (after any clipping).
        trainer_net, reblur_net = recording_step.nets
        seen.append((float(torch.nn.utils.get_total_norm([p.grad for p in trainer_net.parameters() if p.grad is not None])),
                     float(torch.nn.utils.get_total_norm([p.grad for p in reblur_net.parameters() if p.grad is not None]))))
        return step(optimizer, *args, **kwargs)

    from jdrl import train as train_module

    build = train_module._build_optimizer

    def remember_nets(config, net, loss, step_module):
        recording_step.nets = (net, loss.reblur_net)
        return build(config, net, loss, step_module)

    monkeypatch.setattr(train_module, "_build_optimizer", remember_nets)
    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)

    def run(name, **more):
        seen.clear()
        result = train(tiny_config(pairs, tmp_path / name, **overrides, **more))
        return list(seen), result, load_checkpoint(tmp_path / name / "last.pt")

    plain, plain_result, plain_state = run("plain")
    assert len(plain) == 3 and all(f > 0 and r > 0 for f, r in plain)
    # The epoch's grad_norm is the mean of F's norms before clipping (here: as Adam received them).
    assert plain_result.epoch_losses[0]["grad_norm"] == pytest.approx(sum(f for f, _ in plain) / 3, rel=1e-5)
    unreached, _, unreached_state = run("unreached", **{"optim.grad_clip": 10 * max(f for f, _ in plain)})
    assert same_state(unreached_state["model"], plain_state["model"])
    clip = min(f for f, _ in plain) / 4
    clipped, clipped_result, clipped_state = run("clipped", **{"optim.grad_clip": clip})
    assert all(f == pytest.approx(clip, rel=1e-4) for f, _ in clipped)
    # The first step's gradients are the same as without the clip: R's reach Adam unscaled, and
    # the log reports F's norm before clipping.
    assert clipped[0][1] == pytest.approx(plain[0][1], rel=1e-5)
    assert clipped_result.epoch_losses[0]["grad_norm"] > 4 * clip
    assert not same_state(clipped_state["model"], plain_state["model"])


def test_reblur_kernel_lr_scale_gives_the_seeds_branch_a_group_of_its_own(pairs, tmp_path):
    overrides = {"optim.reblur_kernel_lr_scale": 1e-6, "loss.flow_warmup_epochs": 0, "train.max_steps_per_epoch": 2,
                 "train.epochs": 1, "optim.lr": 2e-3}
    train(tiny_config(pairs, tmp_path, **overrides))
    first = load_checkpoint(tmp_path / "last.pt")
    # F at lr, R at min(lr, REBLUR_LR_CAP), R_kpn at that times the scale.
    assert [group["lr"] for group in first["optimizer"]["param_groups"]] == pytest.approx([2e-3, 1e-3, 1e-9])
    train(tiny_config(pairs, tmp_path, **{**overrides, "train.epochs": 2}), resume="auto")
    second = load_checkpoint(tmp_path / "last.pt")
    moved = {k: (second["reblur"][k] - first["reblur"][k]).abs().max().item() for k in first["reblur"]}
    kernel_moved = max(value for key, value in moved.items() if key.startswith("kernel_net."))
    weight_moved = max(value for key, value in moved.items() if key.startswith("weight_net."))
    assert kernel_moved < 1e-8 and weight_moved > 1e-6


@pytest.mark.parametrize("rates", [
    # (optim overrides, R's groups' rates in the prefit, after it): R in groups of its own (R_kpn at
    # half R's rate), and one group shared with F (lr <= the cap, no reblur_lr).
    ({"optim.lr": 5e-4, "optim.reblur_lr": 1e-4, "optim.reblur_prefit_lr": 1e-3, "optim.reblur_kernel_lr_scale": 0.5},
     [5e-4 * 10, 1e-3, 5e-4], [5e-4, 1e-4, 5e-5]),
    ({"optim.lr": 1e-4, "optim.reblur_prefit_lr": 1e-3}, [1e-3], [1e-4]),
    ({"optim.lr": 5e-4, "optim.reblur_lr": 1e-4}, [5e-4, 1e-4], [5e-4, 1e-4]),  # unset: R's own rate
])
def test_reblur_prefit_steps_at_their_own_rate(pairs, tmp_path, monkeypatch, rates):
    """optim.reblur_prefit_lr: the prefit's steps run at that rate (R_kpn at its fraction of it),
    the epochs after it at R's own, and the checkpoint keeps R's own rates."""
    import jdrl.train as train_module

    overrides, in_prefit, after = rates
    seen = []
    real_build = train_module._build_optimizer

    def recording_build(*args, **kwargs):
        optimizer = real_build(*args, **kwargs)
        optimizer.register_step_pre_hook(lambda opt, *_: seen.append([group["lr"] for group in opt.param_groups]))
        return optimizer

    monkeypatch.setattr(train_module, "_build_optimizer", recording_build)
    config = tiny_config(pairs, tmp_path, **overrides, **{"train.epochs": 1, "train.max_steps_per_epoch": 2,
                                                          "loss.reblur_prefit_steps": 3, "loss.reblur_prefit_crop": 16})
    train(config)
    assert len(seen) == 3 + 2
    for rates_of_step in seen[:3]:
        assert rates_of_step == pytest.approx(in_prefit, rel=1e-12)
    for rates_of_step in seen[3:]:
        assert rates_of_step == pytest.approx(after, rel=1e-12)
    saved = load_checkpoint(tmp_path / "last.pt")["optimizer"]["param_groups"]
    assert [group["lr"] for group in saved] == pytest.approx(after, rel=1e-12)


def test_reblur_prefit_steps_at_their_own_rate_is_validated():
    for bad in (0, -1e-3, float("inf")):
        with pytest.raises(ConfigError, match="optim.reblur_prefit_lr"):
            load_config(None, {"optim.reblur_prefit_lr": bad})


def test_reblur_prefit_trains_r_alone_before_the_first_epoch(pairs, tmp_path):
    """loss.reblur_prefit_steps: R takes its steps on windows of the flow-aligned pairs before the
    first epoch, F is untouched and the epochs draw as without it; a resumed run does not prefit again."""
    import json

    overrides = {"train.epochs": 1, "train.max_steps_per_epoch": 2, "train.deterministic": True,
                 "loss.reblur_prefit_crop": 16}
    plain = train(tiny_config(pairs, tmp_path / "plain", **overrides))
    prefit = train(tiny_config(pairs, tmp_path / "prefit", **overrides, **{"loss.reblur_prefit_steps": 3}))
    assert plain.prefit_seconds == 0.0 and prefit.prefit_seconds > 0.0
    records = [json.loads(line) for line in (tmp_path / "prefit" / "train_log.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if r["kind"] == "prefit"]
    assert record["steps"] == 3 and math.isfinite(record["reblur_prefit_first"]) and math.isfinite(record["reblur_prefit_last"])
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("plain", "prefit"))
    # The epoch is the flow warm-up: F's loss does not depend on R then, so F ends the same to the
    # bit (no draw of the epochs moved), while R has taken 3 more steps.
    assert same_state(a["model"], b["model"]) and a["step"] == b["step"] == 2
    assert same_state({"rng": a["rng"]}, {"rng": b["rng"]})  # the process RNGs too: nothing drew from them
    assert not same_state(a["reblur"], b["reblur"])
    assert without_timing(plain.epoch_losses)[0]["deblur"] == without_timing(prefit.epoch_losses)[0]["deblur"]
    # Resumed: no second prefit.
    resumed = train(tiny_config(pairs, tmp_path / "prefit", **{**overrides, "loss.reblur_prefit_steps": 3,
                                                               "train.epochs": 2}), resume="auto")
    assert resumed.prefit_seconds == 0.0
    records = [json.loads(line) for line in (tmp_path / "prefit" / "train_log.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "prefit" for r in records) == 1
    # R's fit on a window (the whole side where the pair is smaller): only R gets a gradient.
    config = tiny_config(pairs, tmp_path / "x", **{"loss.reblur_prefit_crop": 32}).loss
    loss_module = JDRLLoss(config, lambda a, b: torch.zeros(a.shape[0], 2, *a.shape[2:]))
    seen = []
    original = loss_module.reblur_net.forward
    loss_module.reblur_net.forward = lambda sharp, blurry: seen.append(tuple(blurry.shape)) or original(sharp, blurry)
    value, terms = loss_module.reblur_prefit(torch.rand(1, 3, 40, 20), torch.rand(1, 3, 40, 20), torch.Generator().manual_seed(0))
    value.backward()
    assert seen == [(1, 3, 32, 20)] and set(terms) >= {"reblur_prefit"}
    assert all(p.grad is not None for p in loss_module.reblur_net.parameters())


def test_reblur_prefit_stops_on_a_non_finite_loss_naming_the_prefit(pairs, tmp_path, monkeypatch):
    original = JDRLLoss.reblur_prefit

    def poisoned(self, blurry, sharp, generator=None):
        loss, terms = original(self, blurry, sharp, generator)
        return loss * float("nan"), terms

    monkeypatch.setattr(JDRLLoss, "reblur_prefit", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 1 of the reblurring net's prefit \(loss.reblur_prefit_steps\)") as error:
        train(tiny_config(pairs, tmp_path, **{"loss.reblur_prefit_steps": 2, "loss.reblur_prefit_crop": 16}))
    assert "optim.reblur_lr" in str(error.value) and not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize(
    "override, message",
    [({"loss.reblur_prefit_steps": -1}, "loss.reblur_prefit_steps"),
     ({"loss.reblur_prefit_crop": 8}, "loss.reblur_prefit_crop")],
)
def test_reblur_prefit_settings_are_checked(pairs, tmp_path, override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        tiny_config(pairs, tmp_path, **override)


@pytest.mark.parametrize(
    "changed, message",
    [
        ({"loss.seed_bound": 4.0}, "loss.seed_bound: 6.0 -> 4.0"),
        ({"train.ema_decay": 0.99}, "train.ema_decay: 0.0 -> 0.99 (best.pt so far scored the trained weights)"),
        ({"optim.grad_clip": 0.5}, "optim.grad_clip: 0.0 -> 0.5"),
    ],
)
def test_resume_reports_settings_that_changed(pairs, tmp_path, capsys, changed, message):
    overrides = {"train.max_steps_per_epoch": 1, "train.epochs": 1}
    train(tiny_config(pairs, tmp_path, **overrides))
    capsys.readouterr()
    train(tiny_config(pairs, tmp_path, **{**overrides, "train.epochs": 2, **changed}), resume="auto")
    assert message in capsys.readouterr().err


def test_cli_train_and_resume_auto(pairs, tmp_path, capsys):
    from jdrl.cli import main

    args = ["train", "--set", f"data.root={pairs}", "--set", "model.preset=tiny", "--set", "data.crop=24",
            "--set", f"train.out_dir={tmp_path}", "--set", "train.max_steps_per_epoch=1", "--set", "train.device=cpu"]
    assert main([*args, "--set", "train.epochs=1"]) == 0
    assert main([*args, "--set", "train.epochs=2", "--resume", "auto"]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert main([*args, "--set", "train.epohcs=2"]) == 2  # a usage error
    assert "train.epohcs" in capsys.readouterr().err


def test_tensorboard_scalars_and_images_when_installed(pairs, tmp_path, monkeypatch):
    import sys
    import types

    written: dict[str, list] = {"scalars": [], "images": []}

    class FakeWriter:
        def __init__(self, log_dir):
            written["log_dir"] = log_dir

        def add_scalar(self, tag, value, step):
            written["scalars"].append(tag)

        def add_image(self, tag, image, step):
            written["images"].append((tag, tuple(image.shape)))

        def close(self):
            written["closed"] = True

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    config = tiny_config(pairs, tmp_path, **{"train.epochs": 1, "train.max_steps_per_epoch": 1, "loss.flow_warmup_epochs": 0,
                                             "data.val_root": str(pairs), "data.val_split": "train"})
    train(config)
    assert written["log_dir"] == str(tmp_path / "tensorboard") and written["closed"]
    assert {"train/total", "train/deblur", "train/reblur", "train/pseudo", "epoch/total", "val/psnr"} <= set(
        written["scalars"]
    )
    assert ("samples/deblurred", (3, 32, 32)) in written["images"]


def test_non_finite_loss_stops_with_named_step_and_keeps_last_checkpoint(pairs, tmp_path, monkeypatch):
    original = JDRLLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # step 3 = the first step of epoch 2
            out = out._replace(total=out.total * float("nan"))
        return out

    monkeypatch.setattr(JDRLLoss, "forward", poisoned)
    config = tiny_config(pairs, tmp_path, **{"train.max_steps_per_epoch": 2, "train.epochs": 3})
    with pytest.raises(NonFiniteLossError, match=r"step 3 \(epoch 2\): total=nan, deblur=.*reblur=.*pseudo=") as info:
        train(config)
    assert "last good checkpoint" in str(info.value) and info.value.step == 3
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    load_deblur_net(tmp_path / "last.pt")


# ---------------------------------------------------------------- DDP

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config: Config, results: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
         "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)}
    )
    torch.set_num_threads(1)
    result = train(config)
    torch.save(
        {"net": result.net.state_dict(), "last": result.last_checkpoint, "losses": result.epoch_losses},
        Path(results) / f"rank{rank}.pt",
    )


def test_ddp_two_cpu_processes(pairs, tmp_path):
    import torch.multiprocessing as mp

    # Two epochs of one step: the first is the flow warm-up, without the reblurring net when
    # loss.reblur_after_warmup is set, which DDP must tolerate.
    # R's prefit runs on every rank (it must neither hang nor desynchronize F; its broadcast of R is
    # not checked here: every rank draws the same windows).
    config = tiny_config(pairs, tmp_path / "run", **{"train.epochs": 2, "train.max_steps_per_epoch": 1,
                                                     "loss.reblur_after_warmup": True, "loss.reblur_prefit_steps": 2,
                                                     "loss.reblur_prefit_crop": 16})
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    # Gradients were averaged: both replicas hold the same weights, and rank 0's checkpoint has them.
    assert same_state(rank0["net"], rank1["net"])
    assert rank0["last"] == tmp_path / "run" / "last.pt" and rank1["last"] is None
    assert without_timing(rank0["losses"]) == without_timing(rank1["losses"])
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert same_state(state["model"], rank0["net"]) and state["step"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "last.pt", "train_log.jsonl"]


def test_resume_of_a_checkpoint_from_before_grad_clip(pairs, tmp_path, capsys):
    """A checkpoint without optim.grad_clip was trained unclipped: resuming it with 0 reports
    nothing, with a clip reports the change."""

    def drop_the_key():
        state = load_checkpoint(tmp_path / "last.pt")
        del state["config"]["optim"]["grad_clip"]
        save_checkpoint(tmp_path / "last.pt", state)

    overrides = {"train.max_steps_per_epoch": 1}
    train(tiny_config(pairs, tmp_path, **overrides, **{"train.epochs": 1}))
    drop_the_key()
    capsys.readouterr()
    train(tiny_config(pairs, tmp_path, **overrides, **{"train.epochs": 2}), resume="auto")
    assert "optim.grad_clip" not in capsys.readouterr().err
    drop_the_key()
    train(tiny_config(pairs, tmp_path, **overrides, **{"train.epochs": 3, "optim.grad_clip": 0.5}), resume="auto")
    assert "optim.grad_clip: 0.0 -> 0.5" in capsys.readouterr().err
