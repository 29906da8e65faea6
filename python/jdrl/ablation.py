"""The paper's ablation (Table 5) at small scale on synthetic misaligned pairs (``jdrl ablate``).

Each variant is a set of config overrides from :data:`jdrl.losses.VARIANTS` (never redefined
here), trained by :func:`jdrl.train.train` with one budget and seed on a synthetic set made by
:func:`jdrl.synth.make_synthetic_dataset`, then evaluated on its test split in two ways:

- against ``gt_aligned`` (the sharp image in the blurry image's geometry), which synthetic data has
  and real data lacks: ``psnr_gt`` / ``ssim_gt``. This is the number that says whether a loss
  learned to deblur *without* copying the misalignment of the training targets;
- the paper's protocol for misaligned test pairs (:func:`jdrl.metrics.aligned_metrics`): the
  misaligned ``gt`` warped onto the prediction by optical flow (``psnr_flow`` / ``ssim_flow``),
  and ``gt`` as it is (``psnr_unaligned`` / ``ssim_unaligned``).

The blurry input is measured the same way, as the floor every variant must beat. For the variants
with a reblurring net, the "R radius Spearman" column is the Spearman correlation (textured pixels)
between R's implied blur radius on the test pairs (R run on the prediction and the blurry input)
and the true radius map (:mod:`jdrl.defocus`); each result file holds the other correlations.

Every (variant, seed) run keeps its result in ``OUT/results/VARIANT_seedS.json``; a rerun with the
same settings (data, budget, and the model, loss and optimizer settings it resolved to, defaults
included) reuses it, so an interrupted ablation resumes where it stopped, and a later call
with ``--seeds 1 --variants l1,unet_eq1`` adds a second seed to some rows. The report
(``OUT/ablation.md`` and ``OUT/ablation.json``) is built from every result in that folder that
was made with the current budget and data.

The training budget is ``--epochs`` passes over the training pairs (batch 1, so one step per
pair), at a constant learning rate (``--lr``), with the flow warm-up (paper section 4.1: ``T``
epochs of flow against the blurry input) kept at the paper's share of the run, ``T = 15/200``
of the epochs, at least one.

Example (``benchmarks/RESULTS.md`` lists the exact commands behind its tables; Table 5's seven
UNet rows at 30 epochs take about 13 minutes on one core)::

    jdrl ablate --out runs/ablation30 --epochs 30 --threads 1 \
        --variants l1,no_cycle,no_mask,no_reblur,no_kpn,no_wpn,unet_eq1

The JDRL network (``eq1``, ``eq2``) diverged at the default lr 1e-3 with Eq. 2; train it at
``--lr 5e-4`` (see RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jdrl.atomic import atomic_write
from jdrl.losses import VARIANTS
from jdrl.process_env import flush_denormals, set_threads  # re-exported: demo and benchmarks import them here
from jdrl.errors import UsageError

__all__ = [
    "METRIC_KEYS",
    "PAPER_TABLE5",
    "SMALL_SCALE_DATA",
    "TABLE5_VARIANTS",
    "VARIANT_LABELS",
    "AblationError",
    "Budget",
    "SyntheticEvaluation",
    "command_line",
    "evaluate_synthetic",
    "flush_denormals",
    "format_table",
    "register",
    "run",
    "run_ablation",
    "same_network_overrides",
    "set_threads",
    "summarize",
    "train_and_evaluate",
    "variant_config",
    "warmup_share_of",
    "write_report",
]

# The rows of the paper's Table 5 in its order, then the full method with the defocus prior.
TABLE5_VARIANTS: tuple[str, ...] = ("l1", "no_cycle", "no_mask", "no_reblur", "no_kpn", "no_wpn", "unet_eq1", "eq2")

# Table rows: Table 5's, then the JDRL network without and with the defocus prior (Table 1's pair).
REPORT_ORDER: tuple[str, ...] = (*TABLE5_VARIANTS[:-1], "eq1", "eq2")

VARIANT_LABELS: dict[str, str] = {
    "l1": "#1 w/ L1 loss",
    "no_cycle": "#2 w/o cycle deformation",
    "no_mask": "#3 w/o calibration mask",
    "no_reblur": "#4 w/o reblurring module",
    "no_kpn": "#5 w/o R_kpn",
    "no_wpn": "#6 w/o R_wpn",
    "unet_eq1": "Ours (Eq. 1), UNet",
    "eq1": "JDRL net, Eq. 1",
    "eq2": "JDRL net, Eq. 2 (defocus prior)",
}

# Table 5 of the paper (SDD test set, UNet, 200 epochs): PSNR, SSIM, LPIPS.
PAPER_TABLE5: dict[str, tuple[float, float, float]] = {
    "l1": (24.62, 0.758, 0.344),
    "no_cycle": (24.80, 0.758, 0.347),
    "no_mask": (25.78, 0.780, 0.309),
    "no_reblur": (25.58, 0.777, 0.311),
    "no_kpn": (25.68, 0.778, 0.311),
    "no_wpn": (25.74, 0.778, 0.332),
    "unet_eq1": (25.94, 0.791, 0.289),
}

# What evaluate_synthetic measures, in table order.
METRIC_KEYS: tuple[str, ...] = ("psnr_gt", "ssim_gt", "psnr_flow", "ssim_flow", "psnr_unaligned", "ssim_unaligned")

# The synthetic data of the small-scale experiments (128 px crops). With jdrl.synth's defaults
# (made for 256 px crops: blur radius <= 5 px, photos scaled by 0.5-1) a 128 px crop is so mildly
# blurred (PSNR 35.7 dB against gt_aligned) that minutes of training change it by hundredths of a
# dB. Scaling the photos by 0.3-0.6 puts more detail in a crop and radii up to 7 px (the largest
# level of the m = 8 reblurring kernels) give 30.4 dB, closer to real defocus pairs.
SMALL_SCALE_DATA: dict[str, Any] = {"max_radius": 7.0, "scale": (0.3, 0.6)}

# The paper's warm-up share: T = 15 of 200 epochs (section 4.1).
PAPER_WARMUP_SHARE = 15 / 200


class AblationError(UsageError, ValueError):
    """A bad argument or an unusable data folder; the message names it."""


@dataclass(frozen=True)
class Budget:
    """How long and how each variant trains; the same for every variant of one ablation.

    epochs: passes over the training pairs (one step per pair: batch 1).
    steps_per_epoch: cut each pass short (None: every training pair).
    crop: side of the random training crops (None: whole images).
    lr: Adam learning rate, constant over the run. Budgets of minutes need far more than the
        paper's 2e-5 (tuned for about a million steps); 1e-3 trained the UNet at least as well as
        3e-4 on aligned pairs, where the plain L1 baseline is the right loss, so it does not favour
        the reblurring-guided variants.
    warmup_epochs: epochs of flow against the blurry input, without the reblurring loss when
        ``loss.reblur_after_warmup`` (the default) holds (None: :func:`warmup_share_of` the epochs).
    """

    epochs: int
    steps_per_epoch: int | None = None
    crop: int | None = None
    lr: float = 1e-3
    warmup_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise AblationError(f"epochs must be >= 1, got {self.epochs}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise AblationError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.crop is not None and self.crop < 8:
            raise AblationError(f"crop must be >= 8 px or None, got {self.crop}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise AblationError(f"lr must be a positive number, got {self.lr}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise AblationError(f"warmup_epochs must be >= 0 or None, got {self.warmup_epochs}")

    def flow_warmup_epochs(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return warmup_share_of(self.epochs)


def warmup_share_of(epochs: int) -> int:
    """The paper's share of warm-up epochs (15 of 200), at least 1, and shorter than the run: the
    reblurring loss joins after the warm-up, so a one-epoch run has none (or R would never train)."""
    return min(max(1, round(epochs * PAPER_WARMUP_SHARE)), max(0, epochs - 1))


def same_network_overrides(name: str) -> dict[str, Any]:
    """``VARIANTS[name]`` without its ``model.*`` keys: the variant's loss on whatever network the
    caller chose (the demo trains the L1 baseline on the JDRL network, not on Table 5's UNet)."""
    if name not in VARIANTS:
        raise AblationError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return {key: value for key, value in VARIANTS[name].items() if not key.startswith("model.")}


def variant_config(
    overrides: dict[str, Any],
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    budget: Budget,
    *,
    seed: int = 0,
    preset: str = "small",
    device: str = "auto",
):
    """The :class:`jdrl.config.Config` that trains ``overrides`` (e.g. ``VARIANTS["no_mask"]``) on
    ``data_root/train`` with ``budget``.

    Everything not set here or in ``overrides`` keeps the paper's value (``configs/paper.yaml``).
    No validation set: the last weights are evaluated (a test set must not pick checkpoints).
    """
    from jdrl.config import apply_overrides, config_from_dict

    base: dict[str, Any] = {
        "model.preset": preset,
        "data.root": str(data_root),
        "data.split": "train",
        "data.crop": budget.crop,
        "data.workers": 0,
        "data.val_root": None,
        "optim.lr": budget.lr,
        # StepLR never steps within the budget: a constant learning rate.
        "optim.lr_step": 1_000_000,
        "loss.flow_warmup_epochs": budget.flow_warmup_epochs(),
        "train.epochs": budget.epochs,
        "train.max_steps_per_epoch": budget.steps_per_epoch,
        "train.seed": seed,
        "train.out_dir": str(out_dir),
        "train.device": device,
        "train.log_every": 1_000_000,
    }
    return config_from_dict(apply_overrides({}, {**base, **overrides}))


# --------------------------------------------------------------------------------------------
# Evaluation on synthetic pairs


@dataclass
class SyntheticEvaluation:
    """``means``: metric -> mean over the test pairs; ``per_image``: one dict per pair (with
    ``name``); ``images``: per pair ``{"pred": (3, H, W), "defocus_map": (S, H, W) or None,
    "radius": {source: (H, W)}}`` when asked for; ``defocus``: per radius source (``"reblur"``,
    ``"predicted_map"``) the correlations of :func:`jdrl.defocus.defocus_correlations` against the
    true radius maps, when the data has them and the net gives a map (else None)."""

    means: dict[str, float]
    per_image: list[dict[str, Any]]
    images: list[dict[str, Any]] | None = None
    defocus: dict[str, dict[str, float]] | None = None


def _test_names(split_root: Path) -> list[str]:
    for folder in ("blur", "gt", "gt_aligned"):
        if not (split_root / folder).is_dir():
            raise AblationError(
                f"{split_root / folder} does not exist: evaluation needs synthetic pairs with gt_aligned/ "
                "(made by `jdrl synth` / jdrl.synth.make_synthetic_dataset)"
            )
    names = sorted(p.stem for p in (split_root / "blur").iterdir() if p.suffix == ".png")
    if not names:
        raise AblationError(f"{split_root / 'blur'} holds no .png images")
    return names


def _pair_metrics(pred: torch.Tensor, sharp: torch.Tensor, sharp_aligned: torch.Tensor, flow_estimator) -> dict[str, float]:
    """``pred``, ``sharp``, ``sharp_aligned``: ``(1, 3, H, W)``; -> the METRIC_KEYS of one pair."""
    from jdrl.metrics import aligned_metrics, psnr, ssim

    pred = pred.clamp(0, 1)
    flow_based = aligned_metrics(pred, sharp, flow_estimator)
    return {
        "psnr_gt": psnr(pred, sharp_aligned).item(),
        "ssim_gt": ssim(pred, sharp_aligned).item(),
        "psnr_flow": flow_based["psnr"],
        "ssim_flow": flow_based["ssim"],
        "psnr_unaligned": flow_based["psnr_unaligned"],
        "ssim_unaligned": flow_based["ssim_unaligned"],
    }


@torch.no_grad()
def evaluate_synthetic(
    net: nn.Module | None,
    data_root: str | os.PathLike,
    *,
    split: str = "test",
    flow_estimator=None,
    keep_images: bool = False,
    device: str | torch.device = "cpu",
    reblur: tuple[nn.Module, Any] | None = None,
) -> SyntheticEvaluation:
    """Measure ``net`` (None: the blurry input itself) on ``data_root/split`` (see module docstring).

    ``flow_estimator``: for the flow-aligned metrics (default: DIS). The net runs in eval mode on
    whole images (the synthetic images are small), on ``device``. ``reblur``: the trained
    reblurring net and its loss settings (:func:`jdrl.defocus.load_reblur_net`), whose implied
    radius is scored against the data's ``radius/`` maps beside the net's own defocus map.
    """
    import numpy as np

    from jdrl.defocus import defocus_correlations, defocus_radii
    from jdrl.flow import build_flow_estimator
    from jdrl.imageio import read_image

    split_root = Path(data_root) / split
    names = _test_names(split_root)
    flow_estimator = flow_estimator if flow_estimator is not None else build_flow_estimator("dis")
    if net is not None:
        net.eval()
    per_image: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    with_radius = net is not None and all((split_root / "radius" / f"{name}.npy").is_file() for name in names)
    maps: dict[str, list] = {"true": [], "sharp": []}
    for name in names:
        blurry = read_image(split_root / "blur" / f"{name}.png").unsqueeze(0)
        sharp = read_image(split_root / "gt" / f"{name}.png").unsqueeze(0)
        sharp_aligned = read_image(split_root / "gt_aligned" / f"{name}.png").unsqueeze(0)
        defocus_map = None
        radii: dict[str, torch.Tensor] = {}
        if net is None:
            pred = blurry
        else:
            output = net(blurry.to(device))
            pred = output.sharp.float().cpu()
            if output.defocus_map is not None:
                defocus_map = output.defocus_map.float().cpu()[0]
            if with_radius:
                # R sees what it saw in training: the raw estimate, or (anchored) the aligned gt.
                radii = defocus_radii(
                    blurry, pred, None if defocus_map is None else defocus_map[None], reblur, sharp, flow_estimator
                )
                for source, radius in radii.items():
                    maps.setdefault(source, []).append(radius)
                maps["true"].append(np.load(split_root / "radius" / f"{name}.npy"))
                maps["sharp"].append(sharp_aligned[0])
        per_image.append({"name": name, **_pair_metrics(pred, sharp, sharp_aligned, flow_estimator)})
        if keep_images:
            images.append({"pred": pred[0].clamp(0, 1), "defocus_map": defocus_map, "radius": radii})
    means = {key: sum(row[key] for row in per_image) / len(per_image) for key in METRIC_KEYS}
    levels = reblur[0].levels if reblur is not None else 8
    defocus = {
        source: defocus_correlations(values, maps["true"], maps["sharp"], border=levels - 1)
        for source, values in maps.items()
        if source not in ("true", "sharp")
    } or None
    return SyntheticEvaluation(means, per_image, images if keep_images else None, defocus)


# --------------------------------------------------------------------------------------------
# Running the variants


def _result_path(out_dir: Path, variant: str, seed: int) -> Path:
    return out_dir / "results" / f"{variant}_seed{seed}.json"


def _write_json(path: Path, payload: Any) -> None:
    with atomic_write(path, "w") as stream:
        stream.write(json.dumps(payload, indent=2) + "\n")


def _settings(data_root: Path, budget: Budget, preset: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What makes two results comparable: the data and the budget (not the seed or the variant)."""
    meta_path = data_root / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    data = {key: meta.get(key) for key in ("seed", "size", "shift", "zoom", "max_radius", "scale", "psf", "noise", "counts")}
    settings = {"data_root": str(data_root.resolve()), "data": data, "budget": asdict(budget), "preset": preset}
    if extra:
        settings["extra_overrides"] = dict(extra)
    return settings


def _trained_with(config) -> dict[str, Any]:
    """The model, loss and optimizer sections of a variant's resolved config, as JSON gives them
    back: a stored result trained with other values (e.g. before a default changed) is not reused."""
    plain = config.to_dict()
    return json.loads(json.dumps({name: plain[name] for name in ("model", "loss", "optim")}))


def train_and_evaluate(
    variant: str,
    overrides: dict[str, Any],
    data_root: Path,
    run_dir: Path,
    budget: Budget,
    *,
    seed: int,
    preset: str,
    device: str,
    flow_estimator=None,
) -> dict[str, Any]:
    """Train one variant, evaluate it on the test split; -> a result record (no images)."""
    from jdrl.train import train

    config = variant_config(overrides, data_root, run_dir, budget, seed=seed, preset=preset, device=device)
    started = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - started
    net_device = next(result.net.parameters()).device
    reblur = None
    if result.last_checkpoint is not None and config.loss.reblurring:
        from jdrl.defocus import load_reblur_net

        reblur = load_reblur_net(result.last_checkpoint, map_location=net_device)
    evaluation = evaluate_synthetic(
        result.net, data_root, flow_estimator=flow_estimator, device=net_device, reblur=reblur
    )
    return {
        "variant": variant,
        "seed": seed,
        "overrides": overrides,
        "arch": config.model.arch,
        "preset": config.model.preset,
        "steps": result.steps,
        "train_seconds": train_seconds,
        "final_loss": result.epoch_losses[-1] if result.epoch_losses else {},
        "means": evaluation.means,
        "per_image": evaluation.per_image,
        "defocus": evaluation.defocus,
    }


def run_ablation(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    variants: list[str] | tuple[str, ...] = TABLE5_VARIANTS,
    budget: Budget = Budget(epochs=20),
    *,
    seeds: list[int] | tuple[int, ...] = (0,),
    preset: str = "small",
    device: str = "auto",
    overwrite: bool = False,
    extra_overrides: dict[str, Any] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Train and evaluate every ``variant`` x ``seed``; -> the result records, in that order.

    ``extra_overrides`` (dotted config keys, as ``--set`` gives) apply to every variant after its
    own. Results already in ``out_dir/results`` made with the same settings (data, budget, preset,
    extra overrides) and the same resolved model, loss and optimizer settings (so a change of the
    code's defaults retrains) are reused unless ``overwrite``. Training runs go to
    ``out_dir/runs/VARIANT_seedS``.
    """
    from jdrl.flow import build_flow_estimator

    data_root, out_dir = Path(data_root), Path(out_dir)
    _test_names(data_root / "test")
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise AblationError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    extra_overrides = dict(extra_overrides or {})
    # Every variant's config is built (and checked) before the first one trains for minutes.
    trained_with = {
        variant: _trained_with(
            variant_config({**VARIANTS[variant], **extra_overrides}, data_root, out_dir, budget, preset=preset, device=device)
        )
        for variant in variants
    }
    settings = _settings(data_root, budget, preset, extra_overrides)
    flow_estimator = build_flow_estimator("dis")
    records = []
    total = len(variants) * len(seeds)
    for index, (variant, seed) in enumerate(((v, s) for v in variants for s in seeds), start=1):
        path = _result_path(out_dir, variant, seed)
        if path.is_file() and not overwrite:
            stored = json.loads(path.read_text())
            if stored.get("settings") == settings and stored.get("trained_with") == trained_with[variant]:
                log(f"[{index}/{total}] {variant} seed {seed}: reusing {path}")
                records.append(stored)
                continue
        log(f"[{index}/{total}] training {variant} (seed {seed}): {VARIANTS[variant] or 'the full method (Eq. 2)'}")
        record = train_and_evaluate(
            variant,
            {**VARIANTS[variant], **extra_overrides},
            data_root,
            out_dir / "runs" / f"{variant}_seed{seed}",
            budget,
            seed=seed,
            preset=preset,
            device=device,
            flow_estimator=flow_estimator,
        )
        record["settings"] = settings
        record["trained_with"] = trained_with[variant]
        _write_json(path, record)
        means = record["means"]
        log(
            f"[{index}/{total}] {variant} seed {seed}: {record['steps']} steps in {record['train_seconds']:.0f} s, "
            f"PSNR/SSIM vs gt_aligned {means['psnr_gt']:.2f}/{means['ssim_gt']:.4f}, "
            f"flow-aligned {means['psnr_flow']:.2f}/{means['ssim_flow']:.4f}"
        )
        records.append(record)
    return records


# --------------------------------------------------------------------------------------------
# Report


def _collect(out_dir: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stored result in ``out_dir/results`` made with ``settings``."""
    folder = out_dir / "results"
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("settings") == settings:
            records.append(record)
    return records


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _defocus_spearman(runs: list[dict[str, Any]]) -> float | None:
    """Mean over seeds of the Spearman correlation (textured pixels) between R's implied radius and
    the true radius map; None for rows without a reblurring net (or results stored before it)."""
    values = [((run.get("defocus") or {}).get("reblur") or {}).get("spearman") for run in runs]
    values = [value for value in values if value is not None]
    return _mean(values) if values else None


def summarize(records: list[dict[str, Any]], order: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per variant: metric means over its seeds, and the per-seed values."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_variant.setdefault(record["variant"], []).append(record)
    names = [name for name in order if name in by_variant] + sorted(set(by_variant) - set(order))
    rows = []
    for name in names:
        runs = sorted(by_variant[name], key=lambda record: record["seed"])
        rows.append(
            {
                "variant": name,
                "label": VARIANT_LABELS.get(name, name),
                "arch": runs[0]["arch"],
                "seeds": [record["seed"] for record in runs],
                "steps": runs[0]["steps"],
                "train_seconds": _mean([record["train_seconds"] for record in runs]),
                "means": {key: _mean([record["means"][key] for record in runs]) for key in METRIC_KEYS},
                "per_seed": {key: [record["means"][key] for record in runs] for key in METRIC_KEYS},
                "defocus_spearman": _defocus_spearman(runs),
                "paper": PAPER_TABLE5.get(name),
            }
        )
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    """A metric's mean over the seeds; with several seeds their own values follow (the noise level)."""
    digits = 2 if key.startswith("psnr") else 4
    text = f"{row['means'][key]:.{digits}f}"
    values = row["per_seed"][key]
    if len(values) > 1:
        text += " (" + " / ".join(f"{v:.{digits}f}" for v in values) + ")"
    return text


def format_table(rows: list[dict[str, Any]], blurry: dict[str, float] | None = None, paper_column: bool = True) -> str:
    """Markdown table of ``summarize`` rows (and the blurry input's metrics first)."""
    header = ["variant", "net"]
    if paper_column:
        header.append("paper PSNR/SSIM (SDD)")
    header += [
        "PSNR vs gt_aligned",
        "SSIM vs gt_aligned",
        "PSNR flow-aligned",
        "SSIM flow-aligned",
        "PSNR unaligned",
        "R radius Spearman",
        "steps",
        "train s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if blurry is not None:
        cells = ["blurry input", "-"] + (["-"] if paper_column else [])
        cells += [f"{blurry[k]:.2f}" if k.startswith("psnr") else f"{blurry[k]:.4f}" for k in METRIC_KEYS[:5]]
        cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for row in rows:
        cells = [row["label"], f"{row['arch']}"]
        if paper_column:
            cells.append(f"{row['paper'][0]:.2f}/{row['paper'][1]:.3f}" if row["paper"] else "-")
        cells += [_cell(row, key) for key in METRIC_KEYS[:5]]
        spearman = row.get("defocus_spearman")
        cells.append("-" if spearman is None else f"{spearman:.3f}")
        cells += [str(row["steps"]), f"{row['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | os.PathLike,
    rows: list[dict[str, Any]],
    blurry: dict[str, float],
    settings: dict[str, Any],
    command: str,
    stem: str = "ablation",
) -> tuple[Path, Path]:
    """Write ``OUT/STEM.md`` (table and settings) and ``OUT/STEM.json``; -> their paths."""
    out_dir = Path(out_dir)
    markdown = out_dir / f"{stem}.md"
    payload = {"command": command, "settings": settings, "blurry": blurry, "rows": rows}
    _write_json(out_dir / f"{stem}.json", payload)
    text = (
        f"Command: `{command}`\n\n"
        f"Budget: {json.dumps(settings['budget'])}; preset {settings['preset']}; data {json.dumps(settings['data'])}\n\n"
        + (f"Overrides for every variant: {json.dumps(settings['extra_overrides'])}\n\n" if settings.get("extra_overrides") else "")
        + format_table(rows, blurry)
    )
    with atomic_write(markdown, "w") as stream:
        stream.write(text)
    return markdown, out_dir / f"{stem}.json"


# --------------------------------------------------------------------------------------------
# Command line


def _name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return names


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in _name_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_data_arguments(parser: argparse.ArgumentParser, train: int, test: int, size: int) -> None:
    """The synthetic-data options shared by ``jdrl ablate`` and the benchmarks."""
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="existing synthetic data (train/, test/ with gt_aligned/); default: make it in OUT/data")
    parser.add_argument("--train", type=int, default=train, metavar="N", help=f"training pairs to make (default {train})")
    parser.add_argument("--test", type=int, default=test, metavar="M", help=f"test pairs to make (default {test})")
    parser.add_argument("--size", type=int, default=size, metavar="PX", help=f"side of the synthetic images (default {size})")
    parser.add_argument("--data-seed", type=int, default=0, metavar="SEED", help="seed of the synthetic data (default 0)")
    parser.add_argument("--max-radius", type=float, default=SMALL_SCALE_DATA["max_radius"], metavar="PX",
                        help=f"largest defocus radius of the synthetic blur (default {SMALL_SCALE_DATA['max_radius']:g})")
    parser.add_argument("--scale", type=float, nargs=2, default=SMALL_SCALE_DATA["scale"], metavar=("LOW", "HIGH"),
                        help="down-scaling of the photos before cropping (default %(default)s)")


def add_budget_arguments(parser: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    parser.add_argument("--epochs", type=int, default=epochs, metavar="E",
                        help=f"passes over the training pairs per variant, one step per pair (default {epochs})")
    parser.add_argument("--steps-per-epoch", type=int, default=None, metavar="S",
                        help="cut each pass to S steps (default: all training pairs)")
    parser.add_argument("--crop", type=int, default=None, metavar="PX", help="random training crops (default: whole images)")
    parser.add_argument("--lr", type=float, default=lr, help=f"constant Adam learning rate (default {lr:g})")
    parser.add_argument("--preset", choices=("small", "tiny", "paper"), default="small", help="network size (default small)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch and OpenCV (default: their defaults, all cores)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ablate`` subcommand."""
    parser = subparsers.add_parser(
        "ablate",
        help="train and evaluate the paper's ablation variants (Table 5) on synthetic misaligned pairs",
        description=(
            "Train the variants of the paper's Table 5 (jdrl.losses.VARIANTS) with one budget and seed on "
            "synthetic misaligned pairs and report PSNR/SSIM against the aligned sharp image and the "
            "flow-aligned metrics. Results are cached per variant and seed in OUT/results."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), metavar="DIR",
                        help="output folder (default runs/ablation)")
    parser.add_argument("--variants", type=_name_list, default=list(TABLE5_VARIANTS), metavar="A,B,...",
                        help=f"variants to train (default: {','.join(TABLE5_VARIANTS)}; known: {','.join(VARIANTS)})")
    parser.add_argument("--seeds", type=_int_list, default=[0], metavar="S,...", help="training seeds (default 0)")
    add_data_arguments(parser, train=16, test=8, size=128)
    parser.add_argument("--shift", type=float, default=2.0, metavar="PX", help="shift of gt in pixels (default 2)")
    parser.add_argument("--zoom", type=float, default=0.01, metavar="Z", help="zoom of gt, 0.01 = 1%% (default 0.01)")
    add_budget_arguments(parser, epochs=20, lr=1e-3)
    parser.add_argument("--overwrite", action="store_true", help="retrain variants whose results are stored")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every variant, VALUE read as YAML (repeatable), "
                             "e.g. --set loss.seed_bound=0; a stored result is reused only for the same "
                             "overrides and resolved settings (one result per variant and seed: another set "
                             "replaces it)")
    parser.set_defaults(func=run)


def command_line() -> str:
    """This process's command as a user would type it (for the report)."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("jdrl", "cli.py", "__main__.py"):
        return shlex.join(["jdrl", *sys.argv[1:]])
    return shlex.join(["python", sys.argv[0], *sys.argv[1:]]) if sys.argv else "(unknown)"


def make_or_check_data(args: argparse.Namespace, out_dir: Path, shift: float, zoom: float) -> Path:
    """``args.data`` when given, else synthetic data in ``out_dir`` (made once, reused if its
    meta.json matches)."""
    from jdrl.synth import make_synthetic_dataset, synth_defaults_meta

    if args.data is not None:
        _test_names(args.data / "test")
        return args.data
    scale = [float(v) for v in args.scale]
    expected = {"seed": args.data_seed, "size": args.size, "shift": [shift, shift], "zoom": [zoom, zoom],
                "max_radius": args.max_radius, "scale": scale, "counts": {"train": args.train, "test": args.test},
                **synth_defaults_meta()}
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(key) == value for key, value in expected.items()):
            return out_dir
    make_synthetic_dataset(out_dir, args.train, args.test, size=args.size, shift=shift, zoom=zoom,
                           max_radius=args.max_radius, scale=tuple(scale), seed=args.data_seed, overwrite=True)
    return out_dir


def budget_from_args(args: argparse.Namespace) -> Budget:
    return Budget(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, crop=args.crop, lr=args.lr)


def run(args: argparse.Namespace) -> int:
    """``jdrl ablate``: 0 on success, 2 on a bad argument or data folder."""
    from jdrl.config import ConfigError, parse_override
    from jdrl.data import DatasetError
    from jdrl.synth import SynthError

    command = command_line()
    try:
        set_threads(args.threads)
        flush_denormals()
        budget = budget_from_args(args)
        extra = {".".join(key): value for key, value in (parse_override(text) for text in args.overrides)}
        data_root = make_or_check_data(args, args.out / "data", args.shift, args.zoom)
        run_ablation(data_root, args.out, args.variants, budget, seeds=args.seeds, preset=args.preset,
                     device=args.device, overwrite=args.overwrite, extra_overrides=extra)
        settings = _settings(data_root, budget, args.preset, extra)
        rows = summarize(_collect(args.out, settings), order=REPORT_ORDER)
        blurry = evaluate_synthetic(None, data_root).means
        markdown, _ = write_report(args.out, rows, blurry, settings, command)
    except (AblationError, ConfigError, DatasetError, SynthError) as error:
        print(f"jdrl ablate: error: {error}", file=sys.stderr)
        return 2
    print(markdown.read_text())
    print(f"written: {markdown} and {markdown.with_suffix('.json')}")
    return 0
