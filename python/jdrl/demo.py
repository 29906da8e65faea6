"""``jdrl demo``: the main job end to end on data that ships with the project, in minutes on a CPU.

1. Makes a small synthetic misaligned set (:func:`jdrl.synth.make_synthetic_dataset`: photos from
   scikit-image, spatially varying defocus, ``gt`` shifted by 2 px and zoomed by 1%), with the
   aligned sharp images kept aside for evaluation.
2. Trains the ``small`` JDRL network with the reblurring-guided loss (Eq. 2, ``VARIANTS["eq2"]``).
3. Trains the same network, from the same initial weights, on the same pairs for the same number
   of steps with a plain L1 loss (``VARIANTS["l1"]`` without its switch to the UNet), and with the
   flow-deformed loss alone, "#4 w/o reblurring" (``VARIANTS["no_reblur"]``, same network): the
   row that shows what the reblurring net adds.
4. Evaluates the three and the blurry input on the test pairs against ``gt_aligned`` and with the
   paper's flow-aligned protocol (:func:`jdrl.ablation.evaluate_synthetic`), and scores ours'
   defocus maps against the true blur radius (:mod:`jdrl.defocus`: the reblurring net's implied
   radius, and F_B's map mapped to a radius; Spearman / Pearson on textured pixels). Each network
   is evaluated with its ``best.pt``: the weights with the best flow-aligned PSNR on four
   validation pairs (other crops of the training photos, never the test photos), because a short
   run at a high learning rate can end on a bad epoch. It writes into OUT:

   - ``grid.png``: one row per test image (the first four): blurry | L1 | #4 | ours | sharp (aligned) | predicted
     defocus map (ours, first principal component, :func:`jdrl.inference.defocus_map_to_scalar`) |
     R's implied blur radius (ours) | the true blur radius the data was made with (the two radius
     maps on one colour scale, 0 to the image's largest true radius);
   - ``metrics.md`` and ``metrics.json``: the table (and per-image values, settings, timings,
     ``psnr_vs_gt_aligned`` per row, ``defocus_spearman`` and the other correlations of ours), and
     ours against #4 pair by pair (``ours_minus_no_reblur_psnr_gt``: the mean difference, its
     standard error over the pairs and over the photos they are cut from, the pairs ours wins, the
     mean difference per photo), since the two are often a few tenths of a dB apart;
   - ``runs/ours``, ``runs/l1``, ``runs/no_reblur``: the trainer's checkpoints and logs; ``data/``
     and ``val/``: the pairs.

The budget is wall-clock (``--minutes``, for the three trainings' epochs together; ours' reblurring
net prefit, about 3 minutes on 2 cores, comes on top): each network first
trains one epoch, which measures its speed on this machine; then all continue (resumed from their
checkpoints) in lockstep chunks of half the epochs that still fit, re-measuring their speeds after
each chunk (on a shared machine they change), until not one more epoch of all fits. ``--epochs``
fixes the count instead. The reblurring net learns the blur from the flow-aligned sharp targets:
alone for ``DEMO_REBLUR_PREFIT_STEPS`` steps on 64 px windows before the first epoch
(``loss.reblur_prefit_steps``) at 1e-3 (``DEMO_REBLUR_PREFIT_LR``, ``optim.reblur_prefit_lr``), then
at 1e-4 (``DEMO_REBLUR_LR``, ``optim.reblur_lr``; the networks at ``--lr``) during the warm-up
(``loss.reblur_pretrain``) and after it (``loss.reblur_anchor``). ``--set KEY=VALUE`` overrides a
config key for every training, ``--set-ours`` for ours only (the reblurring net's options, which #4
and L1 refuse; every method's config is built before the first training, so a refusal costs no
training). ``--quick`` is a seconds-long smoke run (tiny network, 48 px images, 2 steps) for tests.

Example::

    jdrl demo --out runs/demo         # about 13 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from jdrl.ablation import (
    METRIC_KEYS,
    SMALL_SCALE_DATA,
    AblationError,
    Budget,
    SyntheticEvaluation,
    evaluate_synthetic,
    flush_denormals,
    same_network_overrides,
    set_threads,
    variant_config,
    warmup_share_of,
)
from jdrl.atomic import atomic_write
from jdrl.losses import VARIANTS

__all__ = ["DEMO_CONTROLLED_KEYS", "DEMO_REBLUR_LR", "DEMO_REBLUR_PREFIT_LR", "DEMO_REBLUR_PREFIT_STEPS", "DemoResult", "DemoSettings", "check_demo_overrides", "ours_overrides", "ours_prefit_steps", "ours_reblur_lr", "ours_reblur_prefit_lr", "register", "run", "run_demo", "write_grid"]

# The trainings, on one network: the reblurring-guided loss (Eq. 2), the plain L1 baseline and the
# flow-deformed loss without the reblurring module (Table 5 #4).
# The reblurring net's rates in "ours": 1e-3 for its prefit steps, 1e-4 in the epochs after them.
# With the seed penalty R learns the blur at 1e-3, and before the prefit existed R at 1e-3 gave R a
# better map and ours a higher PSNR than 1e-4 in this demo (benchmarks/RESULTS.md, "R at 1e-3 with
# the seed penalty" and "R's rate in the demo"). After a prefit at 1e-3, R going on at 1e-3 swung its
# map by up to 0.1 in Spearman from one epoch to the next (0.72-0.84 at seed 1, ending at 0.73),
# while at 1e-4 it stayed within 0.80-0.84, rising on the whole (0.83 at the end; one seed traced
# epoch by epoch); over five seeds R's map ended at 0.83-0.89 and ours' PSNR moved by -0.02 to +0.11
# dB (RESULTS.md, "R's rate after the prefit").
DEMO_REBLUR_LR = 1e-4
DEMO_REBLUR_PREFIT_LR = 1e-3
# R's steps alone before the first epoch, on 64 px windows of the flow-aligned training pairs
# (loss.reblur_prefit_steps): with them R's map reached Spearman 0.83-0.84 on the test pairs of
# seeds 0 and 1 (without: 0.61-0.64), ours stayed above #4, and they cost ours about 4.5 min on one
# core (benchmarks/RESULTS.md, "R's steps").
DEMO_REBLUR_PREFIT_STEPS = 1344
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "ours": ("ours: reblurring-guided, Eq. 2",
             {**VARIANTS["eq2"], "optim.reblur_lr": DEMO_REBLUR_LR, "optim.reblur_prefit_lr": DEMO_REBLUR_PREFIT_LR}),
    "l1": ("L1 on the misaligned pairs", same_network_overrides("l1")),
    "no_reblur": ("#4 w/o reblurring", same_network_overrides("no_reblur")),
}

# Config keys the demo sets itself (each run's folder, data, budget, seed, device, validation and
# network): a `--set` of one of them would break the comparison or the resumed chunks, so it is
# refused and the flag that controls it named instead.
DEMO_CONTROLLED_KEYS: dict[str, str] = {
    "data.root": "use --out", "data.split": "use --out", "data.val_root": "use --out",
    "data.val_split": "use --out", "train.out_dir": "use --out", "train.epochs": "use --epochs or --minutes",
    "train.max_steps_per_epoch": "use --epochs", "train.val_every": "it validates after every epoch",
    "train.seed": "use --seed", "train.device": "use --device", "optim.lr": "use --lr",
    "loss.flow_warmup_epochs": "the warm-up is the paper's share of the epochs",
}


def ours_reblur_lr(settings: DemoSettings) -> float:
    """The rate ours' reblurring net trains at: ``DEMO_REBLUR_LR``, or what ``--set
    optim.reblur_lr`` gives (a YAML value: ``1e-4`` arrives as a string, ``null`` as None, which
    means ``optim.reblur_lr``'s own default, ``min(lr, REBLUR_LR_CAP)``); ``--set-ours`` wins over ``--set``."""
    from jdrl.config import OptimConfig

    value = ours_overrides(settings).get("optim.reblur_lr", DEMO_REBLUR_LR)
    return OptimConfig(lr=settings.lr, reblur_lr=None if value is None else float(value)).effective_reblur_lr()


def ours_reblur_prefit_lr(settings: DemoSettings) -> float:
    """The rate of ours' reblurring net's prefit steps: ``DEMO_REBLUR_PREFIT_LR``, or what ``--set`` /
    ``--set-ours optim.reblur_prefit_lr`` gives (null: the rate it trains at afterwards,
    :func:`ours_reblur_lr`)."""
    from jdrl.config import OptimConfig

    value = ours_overrides(settings).get("optim.reblur_prefit_lr", DEMO_REBLUR_PREFIT_LR)
    return OptimConfig(lr=settings.lr, reblur_lr=ours_reblur_lr(settings),
                       reblur_prefit_lr=None if value is None else float(value)).effective_reblur_prefit_lr()


def ours_prefit_steps(settings: DemoSettings) -> int:
    """The steps ours' reblurring net takes alone before the first epoch: ``settings.reblur_prefit_steps``,
    or what ``--set`` / ``--set-ours loss.reblur_prefit_steps`` gives."""
    return int(ours_overrides(settings).get("loss.reblur_prefit_steps", settings.reblur_prefit_steps))


def ours_overrides(settings: DemoSettings) -> dict[str, Any]:
    """The overrides ours trains with beyond its method's own: ``--set`` (every training), then
    ``--set-ours`` (ours only; it wins where both name a key)."""
    return {**settings.overrides, **settings.ours_overrides}


def check_demo_overrides(overrides: dict[str, Any], flag: str = "--set") -> None:
    """Refuse ``flag`` (``--set`` or ``--set-ours``) keys the demo controls itself
    (:data:`DEMO_CONTROLLED_KEYS`, and the network's ``model.*``), naming the flag to use instead."""
    for key in overrides:
        if key in DEMO_CONTROLLED_KEYS:
            raise AblationError(f"{flag} {key}: the demo sets this itself; {DEMO_CONTROLLED_KEYS[key]}")
        if key.startswith("model."):
            raise AblationError(f"{flag} {key}: the demo trains the JDRL `small` network; use jdrl train for another")


GRID_COLUMNS = (
    "blurry", "L1", "#4 w/o reblur", "ours (Eq. 2)", "sharp (aligned)", "B_hat PCA (ours)", "R radius (ours)",
    "true radius",
)
# Tiles are enlarged (nearest neighbour) to at least this many pixels, so small crops stay legible.
GRID_MIN_TILE = 256
# The grid shows the first test pairs only; the table scores all of them.
GRID_ROWS = 4
GRID_HEADER = 30


@dataclass(frozen=True)
class DemoSettings:
    """What the demo makes and trains. ``minutes``: wall-clock budget of the three trainings' epochs
    together, ours' reblurring net prefit not counted (ignored when ``epochs`` is set). ``lr``: constant Adam learning rate of the deblurring nets
    (the reblurring net's is ``DEMO_REBLUR_LR``, ``DEMO_REBLUR_PREFIT_LR`` in its prefit, unless
    ``overrides`` sets ``optim.reblur_lr`` / ``optim.reblur_prefit_lr``)."""

    n_train: int = 16
    # 32 test pairs: the per-pair difference of ours and #4 spreads by 0.2-0.9 dB (standard
    # deviation), so on the 4 pairs the demo once had, the standard error of their mean difference
    # (0.1-0.4 dB) was as large as the difference itself (benchmarks/RESULTS.md, "Ours against #4 on
    # 64 test pairs").
    n_test: int = 32
    n_val: int = 4
    size: int = 128
    shift: float = 2.0
    zoom: float = 0.01
    max_radius: float = SMALL_SCALE_DATA["max_radius"]
    scale: tuple[float, float] = SMALL_SCALE_DATA["scale"]
    preset: str = "small"
    minutes: float = 10.0
    epochs: int | None = None
    steps_per_epoch: int | None = None
    lr: float = 5e-4
    # Ours' loss.reblur_prefit_steps (a `--set` of that key wins).
    reblur_prefit_steps: int = DEMO_REBLUR_PREFIT_STEPS
    seed: int = 0
    device: str = "auto"
    # Dotted config overrides (as ``--set`` gives) for every training, after each method's own:
    # e.g. {"loss.reblur_anchor": False, "loss.logit_penalty": 0, "loss.reblur_fit_mask": True} to
    # train "ours" with Eq. 2's reblurring net (on I_hat, I_B), the defaults until 2026-12-01.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Overrides for ours only (``--set-ours``), after ``overrides``: the options of the reblurring
    # net, which #4 and L1 do not have (their configs refuse loss.flow_refine, which needs it), e.g.
    # {"loss.flow_reference": "blurry", "loss.flow_refine": True}.
    ours_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoSettings:
        """A smoke run: tiny network, two 48 px training pairs, one epoch of two steps (and two
        prefit steps of ours' reblurring net)."""
        values = {"n_train": 2, "n_test": 2, "n_val": 1, "size": 48, "preset": "tiny", "epochs": 1, "steps_per_epoch": 2,
                  "reblur_prefit_steps": 2}
        return cls(**{**values, **overrides})


@dataclass
class DemoResult:
    """Paths of what the demo wrote, the metric means per row, and timings (seconds)."""

    out_dir: Path
    grid: Path
    table_markdown: Path
    table_json: Path
    means: dict[str, dict[str, float]]
    epochs: int
    steps: int
    seconds: dict[str, float] = field(default_factory=dict)
    checkpoints: dict[str, str | None] = field(default_factory=dict)


def _log(text: str) -> None:
    print(f"[jdrl demo] {text}", file=sys.stderr, flush=True)


def _fresh_run_dir(path: Path) -> None:
    """Remove a previous demo's training run (only a folder the trainer made: it has config.yaml)."""
    if path.is_dir() and (path / "config.yaml").is_file():
        shutil.rmtree(path)


@dataclass
class _Trainings:
    """The runs as they progress: where they write, their last TrainResult, epochs done and
    wall-clock seconds spent (setup, ours' reblurring net prefit, epochs, validation and checkpoints
    included)."""

    data_root: Path
    val_root: Path
    runs: Path
    settings: DemoSettings
    warmup_epochs: int = 1
    results: dict[str, Any] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=lambda: {name: 0 for name in METHODS})
    seconds: dict[str, float] = field(default_factory=lambda: {name: 0.0 for name in METHODS})

    def config(self, name: str, epochs: int):
        """The :class:`jdrl.config.Config` that trains ``name`` up to ``epochs`` epochs."""
        settings = self.settings
        budget = Budget(
            epochs=epochs, steps_per_epoch=settings.steps_per_epoch, lr=settings.lr, warmup_epochs=self.warmup_epochs
        )
        overrides = {
            **METHODS[name][1],
            **({"loss.reblur_prefit_steps": settings.reblur_prefit_steps} if name == "ours" else {}),
            **(ours_overrides(settings) if name == "ours" else settings.overrides),
            # best.pt is picked on validation pairs (never the test pairs): a short, high-learning-rate
            # run can have a bad last epoch.
            "data.val_root": str(self.val_root),
            "data.val_split": "train",
            "train.val_every": 1,
        }
        return variant_config(
            overrides,
            self.data_root,
            self.runs / name,
            budget,
            seed=settings.seed,
            preset=settings.preset,
            device=settings.device,
        )

    def check_configs(self) -> None:
        """Build every method's config before the first training, so that an override one of them
        refuses stops the demo at once, not after the trainings before it."""
        from jdrl.config import ConfigError

        for name, (label, _) in METHODS.items():
            try:
                self.config(name, 1)
            except ConfigError as error:
                hint = "" if name == "ours" else "; an option of ours only goes in --set-ours"
                raise ConfigError(f"{label}: {error}{hint}") from error

    def advance(self, name: str, epochs: int) -> float:
        """Train ``name`` up to ``epochs`` epochs in total (resuming its last checkpoint); -> seconds
        per epoch of this call."""
        from jdrl.train import train

        done = self.epochs[name]
        config = self.config(name, epochs)
        began = time.perf_counter()
        resume = self.runs / name / "last.pt" if done > 0 else None
        self.results[name] = train(config, resume=resume)
        spent = time.perf_counter() - began
        self.epochs[name] = epochs
        self.seconds[name] += spent
        # Per epoch: without the reblurring net's prefit, which runs once, before the first epoch.
        return (spent - self.results[name].prefit_seconds) / max(1, epochs - done)


def _train_all(data_root: Path, val_root: Path, runs: Path, settings: DemoSettings) -> _Trainings:
    """Train every ``METHODS`` entry for the same number of epochs, within ``settings.minutes``
    unless ``settings.epochs`` fixes the count."""
    for name in METHODS:
        _fresh_run_dir(runs / name)
    trainings = _Trainings(data_root, val_root, runs, settings)
    trainings.check_configs()
    if settings.epochs is not None:
        trainings.warmup_epochs = warmup_share_of(settings.epochs)
        for index, name in enumerate(METHODS, start=1):
            _log(f"training {index}/{len(METHODS)}: {method_label(name, settings)}, {settings.epochs} epoch(s)")
            trainings.advance(name, settings.epochs)
        return trainings

    # Wall-clock budget. One epoch of each measures this machine's speed. Then all train in
    # lockstep chunks, each half of the epochs that still fit, re-measuring their speeds after each
    # chunk (on a shared machine they change), until not one more epoch of all fits. Ours' reblurring
    # net prefit (before its first epoch) comes on top of the budget: a fixed cost, paid once, that
    # would otherwise take epochs from all three networks (with 1344 prefit steps in the budget, the
    # 10 minutes fit 11 epochs instead of 16 on our 2-core VM; benchmarks/RESULTS.md).
    deadline = time.perf_counter() + settings.minutes * 60.0
    per_epoch = {}
    for index, name in enumerate(METHODS, start=1):
        _log(f"training {index}/{len(METHODS)}: {method_label(name, settings)}, first epoch (measures this machine's speed)")
        per_epoch[name] = trainings.advance(name, 1)
        prefit = trainings.results[name].prefit_seconds
        if prefit > 0:
            deadline += prefit
            _log(f"the prefit of the reblurring net ({name}) took {prefit:.0f} s, outside the {settings.minutes:g} min budget")
    expected = 1 + max(0, math.floor((deadline - time.perf_counter()) / sum(per_epoch.values())))
    trainings.warmup_epochs = warmup_share_of(expected)
    _log(
        "one epoch takes " + " + ".join(f"{per_epoch[name]:.0f} s ({name})" for name in METHODS)
        + f": about {expected} epochs each fit in {settings.minutes:g} min"
    )
    while True:
        affordable = math.floor((deadline - time.perf_counter()) / sum(per_epoch.values()))
        if affordable < 1:
            break
        done = trainings.epochs["ours"]
        target = done + max(1, math.ceil(affordable / 2))
        for name in METHODS:
            _log(f"training {method_label(name, settings)}: epochs {done + 1}-{target}")
            per_epoch[name] = trainings.advance(name, target)
    return trainings


def _chosen_net(result) -> tuple[Any, int | None]:
    """The best-on-validation weights (and their epoch), else the last ones."""
    from jdrl.checkpoint import load_deblur_net

    if result.best_checkpoint is not None:
        device = next(result.net.parameters()).device
        return load_deblur_net(result.best_checkpoint, map_location=device).eval(), result.best_epoch
    return result.net, None


# --------------------------------------------------------------------------------------------
# Grid and table


def _overrides_line(title: str, overrides: dict[str, Any]) -> str:
    """``title: `key=value`, ....`` and a newline for metrics.md, or nothing without overrides."""
    if not overrides:
        return ""
    return f"{title}: " + ", ".join(f"`{key}={value}`" for key, value in overrides.items()) + ".\n"


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 RGB."""
    return np.ascontiguousarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))


def _label(tile: np.ndarray, text: str, corner: str = "bottom") -> None:
    """Write ``text`` into ``tile`` (RGB uint8, in place), white with a dark outline to read on any image."""
    height = tile.shape[0]
    origin = (4, height - 6) if corner == "bottom" else (4, 16)
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, thickness, cv2.LINE_AA)


def write_grid(
    path: Path,
    data_root: Path,
    evaluations: dict[str, SyntheticEvaluation],
    split: str = "test",
    columns: tuple[str, ...] = GRID_COLUMNS,
) -> Path:
    """The before/after grid (see the module docstring); ``evaluations`` needs ``"ours"``, ``"l1"``
    and ``"no_reblur"`` made with ``keep_images=True``. Each output tile shows its PSNR against
    ``gt_aligned``; the radius tiles show the largest radius of the colour scale. ``columns``: the
    header's titles (``GRID_COLUMNS``)."""
    from jdrl.defocus import radius_to_colour
    from jdrl.imageio import read_image, write_image_array
    from jdrl.inference import colorize_defocus, defocus_map_to_scalar

    split_root = data_root / split
    rows = []
    for index, row in enumerate(evaluations["ours"].per_image[:GRID_ROWS]):
        name = row["name"]
        blurry = read_image(split_root / "blur" / f"{name}.png")
        sharp_aligned = read_image(split_root / "gt_aligned" / f"{name}.png")
        height, width = blurry.shape[1:]
        factor = max(1, math.ceil(GRID_MIN_TILE / max(height, width)))
        ours = evaluations["ours"].images[index]
        l1 = evaluations["l1"].images[index]
        no_reblur = evaluations["no_reblur"].images[index]
        defocus_map = ours["defocus_map"]
        if defocus_map is not None:
            defocus_tile = colorize_defocus(defocus_map_to_scalar(defocus_map))
        else:
            defocus_tile = np.zeros((height, width, 3), dtype=np.uint8)
        radius_path = split_root / "radius" / f"{name}.npy"
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        true_radius = np.load(radius_path) if radius_path.is_file() else None
        # One colour scale for R's map and the true one: 0 to the largest true radius.
        top = max(1.0, float(true_radius.max())) if true_radius is not None else 7.0
        true_tile = radius_to_colour(true_radius, top) if true_radius is not None else blank
        reblur_radius = (ours.get("radius") or {}).get("reblur")
        reblur_tile = radius_to_colour(reblur_radius, top) if reblur_radius is not None else blank
        tiles = [
            (_to_uint8(blurry), f"{evaluations['blurry'].per_image[index]['psnr_gt']:.2f} dB"),
            (_to_uint8(l1["pred"]), f"{evaluations['l1'].per_image[index]['psnr_gt']:.2f} dB"),
            (_to_uint8(no_reblur["pred"]), f"{evaluations['no_reblur'].per_image[index]['psnr_gt']:.2f} dB"),
            (_to_uint8(ours["pred"]), f"{row['psnr_gt']:.2f} dB"),
            (_to_uint8(sharp_aligned), name),
            (defocus_tile, ""),
            (reblur_tile, f"0-{top:.1f} px" if reblur_radius is not None else ""),
            (true_tile, f"0-{top:.1f} px" if true_radius is not None else ""),
        ]
        enlarged = []
        for tile, caption in tiles:
            tile = cv2.resize(tile, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
            if caption:
                _label(tile, caption)
            enlarged.append(tile)
        rows.append(np.concatenate(enlarged, axis=1))
    body = np.concatenate(rows, axis=0)
    tile_width = body.shape[1] // len(columns)
    header = np.full((GRID_HEADER, body.shape[1], 3), 255, dtype=np.uint8)
    for column, title in enumerate(columns):
        cv2.putText(
            header, title, (column * tile_width + 6, GRID_HEADER - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
            cv2.LINE_AA,
        )
    grid = np.concatenate([header, body], axis=0)
    write_image_array(path, grid)
    return path


ROW_LABELS = {
    "blurry": "blurry input",
    "l1": "L1 on misaligned pairs (same network, same steps)",
    "no_reblur": "#4 w/o reblurring (flow-deformed loss alone, same network, same steps)",
    "ours": "ours: reblurring-guided loss, Eq. 2",
}

DEFOCUS_LABELS = {
    "reblur": "reblurring net R: implied radius",
    "predicted_map": "F_B's defocus map as a radius",
}


def format_defocus(defocus: dict[str, dict[str, float]] | None) -> str:
    """Markdown table of the correlations with the true radius map (empty without any)."""
    if not defocus:
        return ""
    lines = [
        "| ours: map vs true blur radius | Spearman (textured) | Pearson (textured) | Spearman (all) | Pearson (all) |",
        "|---|---|---|---|---|",
    ]
    for source, values in defocus.items():
        cells = [f"{values[key]:.3f}" for key in ("spearman", "pearson", "spearman_all", "pearson_all")]
        lines.append(f"| {DEFOCUS_LABELS.get(source, source)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Ours' row when its overrides leave out L_P (`--set-ours loss.pseudo_supervision=false`): Eq. 1.
OURS_EQ1_LABEL = "ours without L_P: reblurring-guided loss, Eq. 1"


def ours_leaves_out_l_p(settings: DemoSettings) -> bool:
    """Whether ours' overrides turn off the pseudo supervision of F_B (``loss.pseudo_supervision:
    false``, or its weight ``loss.beta: 0``): ours then trains Eq. 1."""
    overrides = ours_overrides(settings)
    return overrides.get("loss.pseudo_supervision", True) is False or overrides.get("loss.beta") == 0


def row_labels(settings: DemoSettings) -> dict[str, str]:
    """``ROW_LABELS``, with ours' row naming Eq. 1 when its overrides leave out L_P."""
    labels = dict(ROW_LABELS)
    if ours_leaves_out_l_p(settings):
        labels["ours"] = OURS_EQ1_LABEL
    return labels


def method_label(name: str, settings: DemoSettings) -> str:
    """The progress log's name of a training (``METHODS``), Eq. 1 for ours when it leaves out L_P."""
    label = METHODS[name][0]
    return label.replace("Eq. 2", "Eq. 1") if name == "ours" and ours_leaves_out_l_p(settings) else label


def grid_columns(settings: DemoSettings) -> tuple[str, ...]:
    """The grid's column titles (``GRID_COLUMNS``), ours' column Eq. 1 when it leaves out L_P."""
    eq1 = ours_leaves_out_l_p(settings)
    return tuple("ours (Eq. 1)" if eq1 and title == "ours (Eq. 2)" else title for title in GRID_COLUMNS)


def format_metrics(means: dict[str, dict[str, float]], labels: dict[str, str] = ROW_LABELS) -> str:
    """Markdown table: one row per entry of ``labels`` (``ROW_LABELS``), the ``METRIC_KEYS`` as columns."""
    header = "| | PSNR vs gt_aligned | SSIM vs gt_aligned | PSNR flow-aligned | SSIM flow-aligned | PSNR unaligned | SSIM unaligned |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for key, label in labels.items():
        values = means[key]
        cells = [f"{values[k]:.2f}" if k.startswith("psnr") else f"{values[k]:.4f}" for k in METRIC_KEYS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as stream:
        stream.write(text)


# --------------------------------------------------------------------------------------------
# The demo


def format_versus(versus: dict[str, Any]) -> str:
    """The line under the demo's table: ours - #4 (``jdrl.metrics.paired_difference`` with the
    photos as groups), its standard errors, the pairs ours wins and its mean on each photo."""

    def error(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    by_photo = versus.get("by_group", {})
    return (
        f"Ours - #4, PSNR vs gt_aligned pair by pair: {versus['mean']:+.2f} dB on average (standard error "
        f"{error(versus['standard_error'])} dB over the {versus['pairs']} pairs, "
        f"{error(versus.get('group_standard_error'))} dB over the {len(by_photo)} photos they are cut from); "
        f"ours is above #4 on {versus['wins']} of {versus['pairs']} pairs. By photo: "
        + ", ".join(f"{photo} {difference:+.2f}" for photo, difference in by_photo.items())
        + " dB."
    )


def run_demo(out_dir: str | os.PathLike, settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Make the data, train both losses, evaluate, write grid and tables into ``out_dir``."""
    from jdrl.defocus import load_reblur_net
    from jdrl.flow import build_flow_estimator
    from jdrl.metrics import paired_difference
    from jdrl.synth import make_synthetic_dataset, pair_sources

    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_root, val_root = out_dir / "data", out_dir / "val"
    _log(
        f"making {settings.n_train} training + {settings.n_test} test pairs of {settings.size} px in {data_root} "
        f"(gt shifted {settings.shift:g} px, zoomed {100 * settings.zoom:g}%, with jdrl synth's default parallax, "
        f"occluders, non-rigid warp and colour change), and {settings.n_val} validation "
        f"pairs in {val_root}"
    )
    synth_options = {
        "size": settings.size,
        "shift": settings.shift,
        "zoom": settings.zoom,
        "max_radius": settings.max_radius,
        "scale": settings.scale,
        "overwrite": True,
    }
    make_synthetic_dataset(data_root, settings.n_train, settings.n_test, seed=settings.seed, **synth_options)
    # Validation pairs: other crops of the training photos (another seed), never the test photos.
    make_synthetic_dataset(val_root, settings.n_val, 0, seed=settings.seed + 1, **synth_options)
    made = time.perf_counter()
    trainings = _train_all(data_root, val_root / "train", out_dir / "runs", settings)
    trained = time.perf_counter()

    _log("evaluating on the test pairs")
    flow_estimator = build_flow_estimator("dis")
    evaluations = {"blurry": evaluate_synthetic(None, data_root, flow_estimator=flow_estimator)}
    chosen_epochs: dict[str, int | None] = {}
    checkpoints: dict[str, str | None] = {}
    for name, result in trainings.results.items():
        net, chosen_epochs[name] = _chosen_net(result)
        checkpoints[name] = str(result.best_checkpoint or result.last_checkpoint)
        device = next(net.parameters()).device
        # R from the same checkpoint as the evaluated deblurring net (None without a reblurring net).
        reblur = load_reblur_net(checkpoints[name], map_location=device)
        evaluations[name] = evaluate_synthetic(
            net, data_root, flow_estimator=flow_estimator, keep_images=True, device=device, reblur=reblur
        )
    labels = row_labels(settings)
    grid = write_grid(out_dir / "grid.png", data_root, evaluations, columns=grid_columns(settings))
    finished = time.perf_counter()

    epochs = trainings.epochs["ours"]
    steps = trainings.results["ours"].steps
    means = {name: evaluation.means for name, evaluation in evaluations.items()}
    seconds = {
        "data": made - began,
        **{f"train_{name}": trainings.seconds[name] for name in METHODS},
        "evaluate": finished - trained,
        "total": finished - began,
    }
    defocus = evaluations["ours"].defocus or {}
    chosen = ", ".join(
        f"{name} after epoch {epoch}" if epoch is not None else f"{name}: last epoch"
        for name, epoch in chosen_epochs.items()
    )
    table = format_metrics(means, labels)
    # Ours against #4 pair by pair, and photo by photo (the pairs are crops of a few photos): how
    # sure the table's order of the two is.
    photos = pair_sources(data_root, "test")
    versus = paired_difference(
        [row["psnr_gt"] for row in evaluations["ours"].per_image],
        [row["psnr_gt"] for row in evaluations["no_reblur"].per_image],
        [photos.get(row["name"], row["name"]) for row in evaluations["ours"].per_image],
    )
    markdown = out_dir / "metrics.md"
    _write_text(
        markdown,
        f"# jdrl demo: {settings.n_test} synthetic test pairs ({settings.size} px)\n\n"
        f"Network: JDRL `{settings.preset}` preset. Each was trained {epochs} epoch(s) = {steps} steps "
        f"(batch 1) at lr {settings.lr:g} (ours' reblurring net at {ours_reblur_lr(settings):g}, after "
        f"{ours_prefit_steps(settings)} steps alone at {ours_reblur_prefit_lr(settings):g} on windows of the flow-aligned pairs) "
        f"on {settings.n_train} pairs whose sharp target is shifted "
        f"{settings.shift:g} px and zoomed {100 * settings.zoom:g}%, from the same initial weights; each row uses "
        f"its weights with the best flow-aligned PSNR on {settings.n_val} validation pairs ({chosen}).\n"
        + _overrides_line("Config overrides for every training", settings.overrides)
        + _overrides_line("Config overrides for ours only", settings.ours_overrides)
        + "PSNR/SSIM vs gt_aligned: against the sharp image in the blurry image's geometry (synthetic data only). "
        "Flow-aligned: the misaligned gt warped onto the prediction by DIS optical flow (the paper's protocol). "
        "Unaligned: the misaligned gt as it is.\n\n"
        + table
        + f"\n{format_versus(versus)}\n"
        + (
            "\nDefocus maps of ours against the true blur radius of the test pairs (pooled, border of m - 1 = 7 px "
            "left out; textured: the upper half of each image by smoothed Sobel magnitude of gt_aligned):\n\n"
            + format_defocus(defocus)
            if defocus
            else ""
        )
        + f"\nTime: {seconds['total']:.0f} s in total ("
        + ", ".join(f"{seconds['train_' + name]:.0f} s training {name}" for name in METHODS)
        + ").\n",
    )
    table_json = out_dir / "metrics.json"
    payload = {
        "settings": {key: (list(value) if isinstance(value, tuple) else value) for key, value in vars(settings).items()},
        "epochs": epochs,
        "steps": steps,
        "chosen_epochs": chosen_epochs,
        "seconds": seconds,
        "means": means,
        "psnr_vs_gt_aligned": {name: values["psnr_gt"] for name, values in means.items()},
        "ours_minus_no_reblur_psnr_gt": versus,
        "defocus_spearman": (defocus.get("reblur") or {}).get("spearman"),
        "defocus": defocus,
        "per_image": {name: evaluation.per_image for name, evaluation in evaluations.items()},
        "rows": labels,
        "checkpoints": checkpoints,
        "validation": {name: result.val_metrics for name, result in trainings.results.items()},
    }
    _write_text(table_json, json.dumps(payload, indent=2) + "\n")
    return DemoResult(out_dir, grid, markdown, table_json, means, epochs, steps, seconds, checkpoints)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="small end-to-end run: synthesize, train, evaluate",
        description=(
            "Make a small synthetic misaligned set from scikit-image's photos, train the small JDRL network "
            "with the reblurring-guided loss (Eq. 2), with a plain L1 loss and with the flow-deformed loss alone "
            "(#4 w/o reblurring) for the same steps, and write "
            "an image grid and a metrics table. About 10 minutes on a 2-core CPU with the defaults."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="output folder (default runs/demo)")
    parser.add_argument("--minutes", type=float, default=10.0, metavar="N",
                        help="wall-clock budget of the three trainings' epochs together, ours' reblurring net "
                             "prefit not counted (default 10)")
    parser.add_argument("--epochs", type=int, default=None, metavar="E",
                        help="train each network exactly E epochs instead (one epoch = one step per training pair)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds-long smoke run: tiny network, 48 px, 2 steps (and 2 prefit steps of ours' reblurring net)")
    parser.add_argument("--size", type=int, default=None, metavar="PX", help="side of the synthetic images (default 128)")
    parser.add_argument("--train", type=int, default=None, metavar="N", help="training pairs (default 16)")
    parser.add_argument("--test", type=int, default=None, metavar="M", help="test pairs (default 32; the grid shows the first 4)")
    parser.add_argument("--lr", type=float, default=None, help="constant Adam learning rate (default 5e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the training (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch and OpenCV (default: all cores)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every training, VALUE read as YAML (repeatable), "
                             "e.g. --set loss.seed_penalty=0")
    parser.add_argument("--set-ours", dest="ours_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for ours only, after --set (repeatable): the reblurring net's options, "
                             "which #4 and L1 do not have, e.g. --set-ours loss.flow_reference=blurry "
                             "--set-ours loss.flow_refine=true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``jdrl demo``: 0 on success, 2 on a bad argument."""
    from jdrl.config import ConfigError, parse_override
    from jdrl.synth import SynthError

    overrides: dict[str, Any] = {"seed": args.seed, "device": args.device}
    for key, value in (("size", args.size), ("n_train", args.train), ("n_test", args.test), ("lr", args.lr),
                       ("epochs", args.epochs)):
        if value is not None:
            overrides[key] = value
    if not args.quick:
        overrides["minutes"] = args.minutes
    try:
        if args.minutes <= 0:
            raise AblationError(f"--minutes must be positive, got {args.minutes}")
        if args.epochs is not None and args.epochs < 1:
            raise AblationError(f"--epochs must be >= 1, got {args.epochs}")
        for flag, name in (("--set", "overrides"), ("--set-ours", "ours_overrides")):
            overrides[name] = {".".join(key): value for key, value in (parse_override(text) for text in getattr(args, name))}
            check_demo_overrides(overrides[name], flag)
        set_threads(args.threads)
        flush_denormals()
        settings = DemoSettings.quick(**overrides) if args.quick else DemoSettings(**overrides)
        result = run_demo(args.out, settings)
    except (AblationError, ConfigError, SynthError) as error:
        print(f"jdrl demo: error: {error}", file=sys.stderr)
        return 2
    print(result.table_markdown.read_text())
    print(f"image grid:    {result.grid}")
    print(f"metrics table: {result.table_markdown} (and {result.table_json.name})")
    print(f"checkpoint:    {result.checkpoints['ours']} (jdrl deblur IMAGES --checkpoint CKPT --out DIR --defocus-map)")
    print(f"took {result.seconds['total'] / 60:.1f} min")
    return 0
