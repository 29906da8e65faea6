"""Train one of the demo's methods for longer and on more pairs, scored as aligned_ceiling.py scores.

``jdrl demo`` trains each method for a few hundred steps on 16 pairs; ``aligned_ceiling.py`` shows
what the same net reaches in thousands of steps when its targets are perfectly aligned. This
script fills the gap between them: it trains one method of the demo (``--method ours``: Eq. 2 with
the demo's reblurring rate and prefit; ``no_reblur``: #4 w/o reblurring; ``l1``: plain L1 on the
misaligned ``gt``) with the real trainer (:func:`jdrl.train.train`, the config the demo gives that
method) on the misaligned pairs of a ``jdrl synth`` folder, and every ``--every`` steps scores PSNR
against ``gt_aligned`` on the test pairs, split by photo and also without each image's mean
colour error, as ``aligned_ceiling.py`` does. With
``--set train.ema_decay=D`` each row scores both the weights and their moving average. At the
same budget (pairs, steps, rate, clip), a row of this script beside the ceiling's row says roughly
what the misalignment costs the method: the two differ also in how they draw pairs (shuffled
epochs here, draws with replacement there), in the initial weights of one seed number, and in
the flow warm-up that only this script has. ``ours`` beside ``no_reblur`` at the same settings and
seed differ only in their loss: that pair says what the reblurring adds.

The training runs in chunks of ``--every`` steps, one epoch each (``train.max_steps_per_epoch``),
each chunk resuming the last one's ``last.pt`` in ``--out`` (as the demo advances its trainings),
so a run stopped early keeps its checkpoint and its rows. So ``--every`` shapes the training, not
only its scoring: each chunk is a new shuffled pass cut to ``--every`` pairs (the training set must
hold that many steps' worth), and the flow warm-up is the paper's share of the *chunks*, as in the
demo (:func:`jdrl.ablation.warmup_share_of`: 3000 steps in chunks of 250 warm up for 250 steps, in
chunks of 1000 for 1000, and a single chunk has none). The script prints the warm-up it uses.
The net is never scored at step 0: the trainer builds it.

``--extend`` continues a finished run of this script to a larger ``--steps``: the same ``--out`` and
``--json`` and the same settings, which it checks against the JSON. Its learning rate is constant
after the warm-up, so the chunks it adds are the chunks a longer run would have trained, with one
difference: the warm-up stays the first run's share, not the share of the longer run (3000 steps
extended to 8000 warm up for 250 steps; a fresh 8000-step run in chunks of 250 would warm up for
500). It checks the settings against the JSON and the config against the checkpoint's (a default
may have changed since; a loss option the checkpoint predates counts as what it meant then, as
``jdrl.defocus.checkpoint_loss_config`` reads it), and the JSON records each extension (``extended_from``: from which step,
to which, at how many threads, with which warm-up). A run that never left its warm-up
(``--warmup-steps`` as long as the run: the flow against the blurry input throughout) may be
extended with a longer ``--warmup-steps``. A run stopped between two chunks continues the same
way; one stopped while scoring cannot, as its checkpoint is a chunk ahead of its rows.

Example, against the ceiling's run E (benchmarks/RESULTS.md)::

    jdrl synth runs/train2048 --train 2048 --test 1 --size 128 --max-radius 7 --scale 0.3:0.6 --seed 8
    jdrl synth runs/test64 --train 0 --test 64 --size 128 --max-radius 7 --scale 0.3:0.6 --seed 100
    PYTHONPATH=python:. python benchmarks/method_at_scale.py --method ours --train-data runs/train2048 \\
        --test-data runs/test64 --test-pairs 32 --steps 3000 --every 250 --out runs/ours_scale \\
        --set optim.grad_clip=0.02 --set train.ema_decay=0.999 --json runs/ours_scale.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from aligned_ceiling import Pairs, gains, offset_free_gain, psnr_scores
from common import write_json

# Keys this script sets itself: a --set of one would break the chunks or the comparison.
CONTROLLED = {
    "data.root": "use --train-data", "data.split": "it trains on train/", "data.val_root": "rows are scored on --test-data",
    "train.out_dir": "use --out", "train.epochs": "use --steps and --every", "train.max_steps_per_epoch": "use --every",
    "train.seed": "use --seed", "train.device": "it trains on the CPU", "optim.lr": "use --lr",
    "loss.flow_warmup_epochs": "use --warmup-steps",
}


def method_overrides(method: str, sets: dict[str, Any]) -> dict[str, Any]:
    """The config overrides the demo trains ``method`` with (ours with its reblurring net's
    prefit), then ``sets``."""
    from jdrl.demo import DEMO_REBLUR_PREFIT_STEPS, METHODS

    prefit = {"loss.reblur_prefit_steps": DEMO_REBLUR_PREFIT_STEPS} if method == "ours" else {}
    return {**METHODS[method][1], **prefit, **sets}


def _score(row: dict[str, Any], key: str, net: torch.nn.Module, pairs: Pairs,
           input_scores: dict[bool, tuple[float, dict[str, float]]]) -> str:
    """Score ``net`` into ``row`` under ``{key}psnr``, ``{key}gain``, ... as aligned_ceiling.py's rows
    (also without the colour offset); ``input_scores``: the input's :func:`psnr_scores`; -> the row's text."""
    scores = psnr_scores(net, pairs)
    value, by_photo = scores[False]
    row[f"{key}psnr"], row[f"{key}gain"] = value, value - input_scores[False][0]
    row[f"{key}gain_by_photo"] = gains(by_photo, input_scores[False][1])
    line = f"{value:.3f} dB ({row[f'{key}gain']:+.3f}; " + ", ".join(f"{photo} {gain:+.2f}" for photo, gain in row[f"{key}gain_by_photo"].items()) + ")"
    return line + offset_free_gain(row, key, scores[True], input_scores[True])


def _recorded_args(args: argparse.Namespace) -> dict[str, Any]:
    """``args`` as the JSON records them (paths as text)."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


# Arguments an extension may change: the others must be the first run's.
# (--set is compared as the overrides it gives; --warmup-steps only where the warm-up never ended.)
EXTENSION_MAY_CHANGE = ("steps", "threads", "extend", "overrides", "warmup_steps")


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists, paths as text)."""
    return json.loads(json.dumps(value, default=str))


def _differences(mine: dict, theirs: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def _same_config(recorded: Any, overrides: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether the overrides a run recorded and today's give one config: the same run in other words,
    as when a default of the method moved since and a ``--set`` puts it back (``optim.reblur_lr=1e-3
    --set optim.reblur_prefit_lr=null`` for ours before 2026-12-03 afternoon)."""
    from jdrl.ablation import Budget, variant_config
    from jdrl.config import ConfigError

    if not isinstance(recorded, dict):
        return False
    budget = Budget(epochs=1, steps_per_epoch=args.every, lr=args.lr)
    try:
        configs = [variant_config(values, args.train_data, args.out, budget, seed=args.seed, preset=args.preset, device="cpu")
                   for values in (recorded, overrides)]
    except ConfigError:
        return False
    return _plain(configs[0].to_dict()) == _plain(configs[1].to_dict())


def extension_of(args: argparse.Namespace, overrides: dict[str, Any]) -> dict:
    """The JSON of the run that ``--extend`` continues, checked against ``args``, the method's
    ``overrides`` and the config its checkpoint trained with; raises ValueError naming what does
    not match."""
    from jdrl.ablation import Budget, variant_config
    from jdrl.checkpoint import load_checkpoint
    from jdrl.defocus import checkpoint_loss_config

    if args.json is None:
        raise ValueError("--extend needs --json: the file the first run wrote")
    if not args.json.is_file():
        raise ValueError(f"--json {args.json}: not a file; --extend continues the run whose rows it holds")
    try:
        result = json.loads(args.json.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--json {args.json}: not a JSON file of this script ({error})") from None
    recorded, given = result.get("args", {}), _recorded_args(args)
    for key, value in given.items():
        if key not in EXTENSION_MAY_CHANGE and recorded.get(key) != value:
            raise ValueError(f"--extend: --{key.replace('_', '-')} is {value!r}, the run in {args.json} had {recorded.get(key)!r}")
    if result.get("overrides") != _plain(overrides) and not _same_config(result.get("overrides"), overrides, args):
        raise ValueError(f"--extend: the method's overrides are now {overrides}, the run in {args.json} had {result.get('overrides')} "
                         "(a default of the method that moved since can be put back with --set)")
    if not result.get("rows"):
        raise ValueError(f"--extend: {args.json} holds no rows")
    done = result["rows"][-1]["step"]
    if not (args.out / "last.pt").is_file():
        raise ValueError(f"--extend: --out {args.out} holds no last.pt")
    state = load_checkpoint(args.out / "last.pt")
    if state["step"] != done:
        raise ValueError(f"--extend: --out {args.out}/last.pt is at step {state['step']}, {args.json}'s last row at {done} "
                         "(a run stopped while scoring a chunk cannot be continued: start a new one)")
    if args.steps <= done:
        raise ValueError(f"--extend: --steps {args.steps} must be more than the run's {done}")
    # The same settings as the command line and the JSON say are not enough: a default may have
    # changed since. The next chunk's config must be the checkpoint's, but for its epoch count.
    # The warm-up stays the run's, unless the run never left it (--warmup-steps as long as the run,
    # the flow against I_B throughout): then --warmup-steps may make it longer.
    warmup = result["warmup_steps"]
    if args.warmup_steps is not None and args.warmup_steps != warmup:
        if warmup < done or args.warmup_steps < done:
            raise ValueError(f"--extend: --warmup-steps {args.warmup_steps}: the run's warm-up was {warmup} steps; "
                             "only a run still in its warm-up may have it lengthened")
        warmup = args.warmup_steps
    budget = Budget(epochs=done // args.every + 1, steps_per_epoch=args.every, lr=args.lr, warmup_epochs=warmup // args.every)
    config = variant_config(overrides, args.train_data, args.out, budget, seed=args.seed, preset=args.preset, device="cpu")
    ignored = {"train.epochs"} | ({"loss.flow_warmup_epochs"} if warmup != result["warmup_steps"] else set())
    # The loss a checkpoint trained with: keys it predates take the values of their time (not today's
    # defaults), as jdrl.defocus reads them.
    trained = {**_plain(state["config"]), "loss": _plain(dataclasses.asdict(checkpoint_loss_config(state)))}
    changed = [key for key in _differences(_plain(config.to_dict()), trained) if key not in ignored]
    if changed:
        raise ValueError(f"--extend: the config would differ from the one {args.out}/last.pt trained with in {', '.join(changed)}")
    if warmup == 0:
        print("--extend: the run has no flow warm-up (a single chunk), and the extension will have none either", flush=True)
    result["warmup_steps"] = warmup
    return result


def train_and_score(args: argparse.Namespace, overrides: dict[str, Any], extended: dict | None = None) -> dict:
    """Train and score chunk by chunk with the config ``overrides`` (:func:`method_overrides`);
    ``extended``: the JSON of the run that ``--extend`` continues."""
    from jdrl.ablation import Budget, variant_config, warmup_share_of
    from jdrl.checkpoint import load_checkpoint
    from jdrl.train import train

    test = Pairs.read(args.test_data, "test", args.test_pairs, "--test-data")
    chunks = args.steps // args.every
    input_scores = psnr_scores(None, test)
    if extended is None:
        warmup = warmup_share_of(chunks) * args.every if args.warmup_steps is None else args.warmup_steps
        result = {"args": _recorded_args(args), "overrides": overrides, "warmup_steps": warmup,
                  "test_pairs": len(test), "input_psnr": input_scores[False][0], "input_psnr_by_photo": input_scores[False][1], "rows": []}
        first_chunk, seconds_before = 1, 0.0
    else:
        result = extended
        if abs(result["input_psnr"] - input_scores[False][0]) > 1e-9:
            raise ValueError(f"--extend: the input scores {input_scores[False][0]:.6f} dB on the test pairs, "
                             f"{result['input_psnr']:.6f} dB in the run's JSON: other test pairs")
        done = result["rows"][-1]["step"]
        # From which step, to which, at how many threads (the rows' seconds add up across them).
        result.setdefault("extended_from", []).append(
            {"step": done, "to_steps": args.steps, "threads": args.threads, "warmup_steps": result["warmup_steps"]})
        result["args"]["steps"] = args.steps
        first_chunk, seconds_before = done // args.every + 1, result["rows"][-1]["seconds"]
    warmup_chunks = result["warmup_steps"] // args.every

    def budget_of(epochs: int) -> Budget:
        """The budget of the first ``epochs`` chunks: the warm-up is always the (first) run's share."""
        return Budget(epochs=epochs, steps_per_epoch=args.every, lr=args.lr, warmup_epochs=warmup_chunks)

    print(f"{args.method}: {args.steps} steps in chunks of {args.every}, the first {result['warmup_steps']} of them the flow warm-up"
          + (f", from step {(first_chunk - 1) * args.every} on" if extended else "") + f"; input {input_scores[False][0]:.3f} dB", flush=True)
    began = time.perf_counter()
    for chunk in range(first_chunk, chunks + 1):
        config = variant_config(overrides, args.train_data, args.out, budget_of(chunk), seed=args.seed, preset=args.preset, device="cpu")
        trained = train(config, resume=args.out / "last.pt" if chunk > 1 else None)
        if trained.steps != chunk * args.every:  # main() checked the set is large enough; never silently short
            raise RuntimeError(f"chunk {chunk} ended at step {trained.steps}, not {chunk * args.every}")
        row: dict[str, Any] = {"step": trained.steps, "losses": trained.epoch_losses[-1]}
        # trained.net is the weight average where the run keeps one (train.ema_decay), else the weights.
        state = load_checkpoint(args.out / "last.pt")
        with torch.no_grad():
            if state.get("averaged_model"):
                weights = copy.deepcopy(trained.net)
                weights.load_state_dict(state["model"])
                line = (f"weights {_score(row, '', weights.eval(), test, input_scores)}, "
                        f"average {_score(row, 'ema_', trained.net, test, input_scores)}")
            else:
                line = _score(row, "", trained.net, test, input_scores)
        row["seconds"] = seconds_before + time.perf_counter() - began
        result["rows"].append(row)
        print(f"step {row['step']:5d}: {line}, {row['seconds']:.0f} s", flush=True)
        if args.json is not None:
            write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> int:
    from jdrl.ablation import Budget, variant_config
    from jdrl.config import ConfigError, parse_override
    from jdrl.demo import METHODS
    from jdrl.models.restormer import RESTORMER_PRESETS
    from jdrl.process_env import flush_denormals, set_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=list(METHODS), required=True, help="which of the demo's trainings")
    parser.add_argument("--train-data", type=Path, required=True, help="`jdrl synth` folder whose train/ (misaligned gt) the net learns from")
    parser.add_argument("--test-data", type=Path, required=True, help="`jdrl synth` folder whose test/ is scored against gt_aligned")
    parser.add_argument("--test-pairs", type=int, default=None, help="score the first N test pairs (default all)")
    parser.add_argument("--out", type=Path, required=True, help="the run's folder (checkpoints, train_log.jsonl); must not hold a run")
    parser.add_argument("--preset", choices=sorted(RESTORMER_PRESETS), default="small", help="network size (default small, the demo's)")
    parser.add_argument("--lr", type=float, default=5e-4, help="constant Adam learning rate of F (default 5e-4, the demo's)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps, a multiple of --every (default 1000)")
    parser.add_argument("--every", type=int, default=250,
                        help="score every N steps (default 250); each N steps are one epoch, and the warm-up is the paper's share of those chunks")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps of the flow warm-up (flow against the blurry input, no reblurring loss), a multiple of --every; "
                             "default the paper's share of the chunks; --steps: the whole run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch and OpenCV (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override after the method's own, VALUE read as YAML (repeatable), e.g. --set optim.grad_clip=0.02")
    parser.add_argument("--json", type=Path, default=None, help="also write the settings, the input's PSNR and the rows here (after every row)")
    parser.add_argument("--extend", action="store_true",
                        help="continue the finished run in --out (its --json, the same settings) to the larger --steps")
    args = parser.parse_args(argv)
    if args.test_pairs is not None and args.test_pairs < 1:
        parser.error(f"--test-pairs must be >= 1, got {args.test_pairs}")
    for name in ("every", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.steps < args.every or args.steps % args.every:
        parser.error(f"--steps must be a positive multiple of --every ({args.every}), got {args.steps}")
    if args.warmup_steps is not None and not (0 <= args.warmup_steps <= args.steps and args.warmup_steps % args.every == 0):
        parser.error(f"--warmup-steps must be a multiple of --every ({args.every}) from 0 to --steps ({args.steps}), got {args.warmup_steps}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if (args.out / "last.pt").exists() and not args.extend:
        parser.error(f"--out {args.out}: holds a run already (last.pt); give a new folder, or --extend it")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: folder {args.json.parent} does not exist")
    sets: dict[str, Any] = {}
    for text in args.overrides:
        try:
            keys, value = parse_override(text)
        except ConfigError as error:
            parser.error(str(error))
        key = ".".join(keys)
        # A whole section (--set 'train={epochs: 3}') would replace the keys below it too.
        controlled = [name for name in CONTROLLED if name == key or name.startswith(key + ".")]
        if controlled or keys[0] == "model" or len(keys) < 2:
            reason = CONTROLLED[controlled[0]] if controlled else "use --preset" if keys[0] == "model" else "set one key, SECTION.KEY"
            parser.error(f"--set {key}: this script sets it itself or it is not one key; {reason}")
        sets[key] = value
    overrides = method_overrides(args.method, sets)
    try:  # a bad value of a --set key, named before any data is read
        config = variant_config(overrides, args.train_data, args.out,
                                Budget(epochs=1, steps_per_epoch=args.every, lr=args.lr))
    except ConfigError as error:
        parser.error(str(error))
    # The trainer reads train/blur and train/gt itself (gt_aligned is only needed of --test-data);
    # each chunk is one epoch, so the set must hold --every steps.
    pairs = len(list((args.train_data / "train" / "blur").glob("*.png")))
    if not pairs:
        parser.error(f"--train-data {args.train_data}: no train/blur/*.png (make it with `jdrl synth`)")
    if math.ceil(pairs / config.train.batch_size) < args.every:
        parser.error(f"--every {args.every}: --train-data holds {pairs} training pairs, {math.ceil(pairs / config.train.batch_size)} "
                     "steps per epoch at most; each chunk of --every steps is one epoch")
    extended = None
    if args.extend:
        try:
            extended = extension_of(args, overrides)
        except ValueError as error:
            parser.error(str(error))
    set_threads(args.threads)
    flush_denormals()  # as the training commands do: saturated softmaxes underflow into slow subnormal floats
    train_and_score(args, overrides, extended)
    return 0


if __name__ == "__main__":
    sys.exit(main())
