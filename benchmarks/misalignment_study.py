"""How misalignment hurts naive training, and what the reblurring-guided loss keeps.

The same network (the UNet of the paper's ablation, ``small`` preset) is trained with a plain L1
loss (``jdrl.losses.VARIANTS["l1"]``) and with the reblurring-guided loss of Eq. 1
(``VARIANTS["unet_eq1"]``: flow-deformed cycle loss, calibration mask, reblurring module) on
synthetic pairs whose sharp target is

- aligned (no misalignment of any kind: the zero point of every series),
- shifted by 1, 2 or 4 px, or zoomed by 0.5%, 1% or 2% (a global motion optical flow follows),
- seen with a depth-dependent parallax of up to 1.5, 3 or 6 px (near and far points move opposite
  ways and occluders uncover background that the blurry image does not show: what flow cannot
  follow everywhere),
- misaligned as ``jdrl synth``'s defaults make it ("camera-like": shift 2 px, zoom 1%, parallax
  3 px, a non-rigid warp of 1 px and a small exposure / colour change; the data of ``jdrl demo``
  and ``jdrl ablate``).

Each series changes one kind of misalignment and leaves the others off. ``jdrl.synth``
draws the blurry image before the misalignment, so one seed gives the same blurry images and the
same ``gt_aligned`` in every setting (checked here); only ``gt`` moves. So every run is evaluated
on the very same test pairs against ``gt_aligned`` (PSNR/SSIM), and the flow-aligned metrics of
the paper are reported beside. Every run has the same budget, seed and learning rate.

Outputs: ``OUT/misalignment.md`` and ``OUT/misalignment.json`` (table, settings, machine facts), and
the plot (``--plot``, default ``benchmarks/misalignment.png``): PSNR against gt_aligned versus the
misalignment, one panel per series, for both losses, with the blurry input as a reference line.
Each (setting, loss) run is cached in ``OUT/SETTING/results`` (see ``jdrl.ablation``), so an
interrupted study resumes.

Example (the command behind the table in ``benchmarks/RESULTS.md``)::

    PYTHONPATH=python:. python benchmarks/misalignment_study.py --out runs/misalignment --epochs 10 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import facts_header, machine_facts
from jdrl.ablation import (
    SMALL_SCALE_DATA,
    Budget,
    command_line,
    evaluate_synthetic,
    flush_denormals,
    run_ablation,
    set_threads,
)
from jdrl.synth import make_synthetic_dataset, synth_defaults_meta

# Every kind of misalignment jdrl.synth makes, off: the "aligned" setting and the base of each series.
# (Its occluders stay: they are part of both images, and only parallax makes them uncover anything.)
NO_MISALIGNMENT: dict[str, float] = {
    "shift": 0.0, "zoom": 0.0, "parallax": 0.0, "nonrigid": 0.0, "exposure": 0.0, "white_balance": 0.0, "gamma": 0.0,
}
# One series per kind of misalignment: (axis label, row label of x, {setting name: (x on the axis, synth params)}).
SERIES: tuple[tuple[str, str, dict[str, tuple[float, dict[str, float]]]], ...] = (
    ("shift of gt (px)", "shift {:g} px", {f"shift{x:g}": (x, {"shift": x}) for x in (1.0, 2.0, 4.0)}),
    ("zoom of gt (%)", "zoom {:g}%", {f"zoom{x:g}": (x, {"zoom": x / 100}) for x in (0.5, 1.0, 2.0)}),
    ("largest parallax of gt (px)", "parallax up to {:g} px",
     {f"parallax{x:g}": (x, {"parallax": x}) for x in (1.5, 3.0, 6.0)}),
)
# jdrl synth's defaults: shift 2 px, zoom 1%, parallax 3 px, non-rigid 1 px, exposure/colour change.
CAMERA_LIKE = {"shift": 2.0, "zoom": 0.01}
SETTINGS: dict[str, dict[str, float]] = {
    "aligned": dict(NO_MISALIGNMENT),
    **{name: {**NO_MISALIGNMENT, **params} for _, _, points in SERIES for name, (_, params) in points.items()},
    "camera_like": dict(CAMERA_LIKE),
}
LABELS: dict[str, str] = {
    "aligned": "none",
    **{name: row_label.format(x) for _, row_label, points in SERIES for name, (x, _) in points.items()},
    "camera_like": "camera-like (jdrl synth defaults)",
}
LOSSES: dict[str, str] = {"l1": "L1", "unet_eq1": "reblurring-guided (Eq. 1)"}
# The file in each setting's data folder that says what it was made with (reused only if it matches).
SETTING_FILE = "study_setting.json"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_datasets(out_dir: Path, args: argparse.Namespace) -> dict[str, Path]:
    """One synthetic set per setting (reused when it was made with the same parameters); checks
    that the blurry and gt_aligned images are identical across settings."""
    roots = {}
    for name, params in SETTINGS.items():
        root = out_dir / name / "data"
        made_with = {"seed": args.data_seed, "size": args.size, "train": args.train, "test": args.test,
                     "max_radius": SMALL_SCALE_DATA["max_radius"], "scale": list(SMALL_SCALE_DATA["scale"]),
                     "misalignment": params, "defaults_of_the_rest": synth_defaults_meta()}
        record = root / SETTING_FILE
        if not (record.is_file() and json.loads(record.read_text()) == made_with):
            make_synthetic_dataset(root, args.train, args.test, size=args.size,
                                   max_radius=SMALL_SCALE_DATA["max_radius"], scale=SMALL_SCALE_DATA["scale"],
                                   seed=args.data_seed, overwrite=True, **params)
            record.write_text(json.dumps(made_with, indent=2) + "\n")
        roots[name] = root
    reference = roots["aligned"]
    for name, root in roots.items():
        for split in ("train", "test"):
            for folder in ("blur", "gt_aligned"):
                for image in sorted((reference / split / folder).glob("*.png")):
                    if _digest(image) != _digest(root / split / folder / image.name):
                        raise RuntimeError(
                            f"{root / split / folder / image.name} differs from {image}: the settings must share "
                            "their blurry and aligned sharp images (same seed, only gt may move)"
                        )
    return roots


def plot(path: Path, table: dict[str, dict[str, Any]], blurry_psnr: float, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SERIES), figsize=(5 * len(SERIES), 4), sharey=True)
    for axis, (xlabel, _, points) in zip(axes, SERIES, strict=True):
        xs = [0.0] + [x for x, _ in points.values()]
        names = ["aligned", *points]
        for loss, label, marker in (("l1", "L1", "o"), ("unet_eq1", "reblurring-guided (Eq. 1)", "s")):
            axis.plot(xs, [table[name][loss]["psnr_gt"] for name in names], marker=marker, label=label)
        axis.axhline(blurry_psnr, color="gray", linestyle="--", label="blurry input")
        axis.set_xlabel(xlabel)
        axis.set_xticks(xs)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR vs gt_aligned (dB)")
    axes[0].legend(loc="lower left", fontsize=8)
    figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/misalignment"), help="output folder")
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "misalignment.png",
                        help="where the plot goes (default benchmarks/misalignment.png)")
    parser.add_argument("--train", type=int, default=16, help="training pairs (default 16)")
    parser.add_argument("--test", type=int, default=8, help="test pairs (default 8)")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic images (default 128)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training pairs per run (default 10)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="cut each pass short (default: all pairs)")
    parser.add_argument("--lr", type=float, default=1e-3, help="constant Adam learning rate (default 1e-3)")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "paper"), help="UNet size (default small)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    flush_denormals()
    facts = machine_facts(torch.device(args.device if args.device != "auto" else "cpu"), torch.get_num_threads())
    print(facts_header(facts), flush=True)
    started = time.perf_counter()
    roots = make_datasets(args.out, args)
    budget = Budget(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr)
    print(f"data: {args.train} train + {args.test} test pairs, {args.size}x{args.size} float32 RGB; budget {budget}",
          flush=True)
    blurry = evaluate_synthetic(None, roots["aligned"]).means

    table: dict[str, dict[str, Any]] = {}
    for name, params in SETTINGS.items():
        records = run_ablation(roots[name], args.out / name, list(LOSSES), budget, seeds=[args.seed],
                               preset=args.preset, device=args.device,
                               log=lambda text, name=name: print(f"[{name}] {text}", flush=True))
        table[name] = {"misalignment": params}
        for record in records:
            table[name][record["variant"]] = {**record["means"], "steps": record["steps"],
                                              "train_seconds": record["train_seconds"]}

    header = ("| misalignment of gt | L1: PSNR / SSIM vs gt_aligned | ours: PSNR / SSIM vs gt_aligned | ours - L1 (dB) "
              "| L1: PSNR flow-aligned | ours: PSNR flow-aligned |")
    lines = [header, "|---|---|---|---|---|---|",
             f"| (blurry input) | {blurry['psnr_gt']:.2f} / {blurry['ssim_gt']:.4f} | | | {blurry['psnr_flow']:.2f} | |"]
    for name in SETTINGS:
        row = table[name]
        label = LABELS[name]
        l1, ours = row["l1"], row["unet_eq1"]
        lines.append(
            f"| {label} | {l1['psnr_gt']:.2f} / {l1['ssim_gt']:.4f} | {ours['psnr_gt']:.2f} / {ours['ssim_gt']:.4f} "
            f"| {ours['psnr_gt'] - l1['psnr_gt']:+.2f} | {l1['psnr_flow']:.2f} | {ours['psnr_flow']:.2f} |"
        )
    markdown = "\n".join(lines) + "\n"
    elapsed = time.perf_counter() - started
    steps = table["aligned"]["l1"]["steps"]
    caption = (f"UNet {args.preset}, {steps} steps (lr {args.lr:g}), {args.train} train / {args.test} test "
               f"synthetic pairs of {args.size} px, seed {args.seed}")
    plot(args.plot, table, blurry["psnr_gt"], caption)
    command = command_line()
    report = (f"Command: `{command}`\n\n{facts_header(facts)}\n\n{caption}; total {elapsed / 60:.1f} min\n\n"
              + markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "misalignment.md").write_text(report)
    (args.out / "misalignment.json").write_text(json.dumps(
        {"command": command, "facts": facts, "budget": asdict(budget),
         "blurry": blurry, "table": table, "seconds": elapsed}, indent=2, default=str) + "\n")
    print(report)
    print(f"written: {args.out / 'misalignment.md'}, {args.out / 'misalignment.json'}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
