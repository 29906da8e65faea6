"""How misalignment of the training pairs hurts naive training, and what the reblurring-guided loss keeps.

The same network (the UNet of the paper's ablation, ``small`` preset) is trained with a plain L1
loss (``jdrl.losses.VARIANTS["l1"]``) and with the reblurring-guided loss of Eq. 1
(``VARIANTS["unet_eq1"]``: flow-deformed cycle loss, calibration mask, reblurring module) on
synthetic pairs whose sharp target is

- shifted by 0, 1, 2 or 4 px (no zoom), or
- zoomed by 0.5%, 1% or 2% (no shift).

``jdrl.synth.make_synthetic_dataset`` with one seed gives the same blurry images and the same
``gt_aligned`` at every setting (checked here); only ``gt`` moves. So every run is evaluated on the
very same test pairs against ``gt_aligned`` (PSNR/SSIM), and the flow-aligned metrics of the paper
are reported beside. Every run has the same budget, seed and learning rate.

Outputs: ``OUT/misalignment.md`` and ``OUT/misalignment.json`` (table, settings, machine facts), and
the plot (``--plot``, default ``benchmarks/misalignment.png``): PSNR against gt_aligned versus the
misalignment, for both losses, with the blurry input as a reference line. Each (setting, loss) run
is cached in ``OUT/SETTING/results`` (see ``jdrl.ablation``), so an interrupted study resumes.

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

# (name, shift in px, zoom as a fraction); "aligned" is the zero point of both series.
SETTINGS: tuple[tuple[str, float, float], ...] = (
    ("aligned", 0.0, 0.0),
    ("shift1", 1.0, 0.0),
    ("shift2", 2.0, 0.0),
    ("shift4", 4.0, 0.0),
    ("zoom0.5", 0.0, 0.005),
    ("zoom1", 0.0, 0.01),
    ("zoom2", 0.0, 0.02),
)
LOSSES: dict[str, str] = {"l1": "L1", "unet_eq1": "reblurring-guided (Eq. 1)"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_datasets(out_dir: Path, args: argparse.Namespace) -> dict[str, Path]:
    """One synthetic set per setting (reused when its meta.json matches); checks that the blurry
    and gt_aligned images are identical across settings."""
    roots = {}
    for name, shift, zoom in SETTINGS:
        root = out_dir / name / "data"
        expected = {"seed": args.data_seed, "size": args.size, "shift": [shift, shift], "zoom": [zoom, zoom],
                    "counts": {"train": args.train, "test": args.test}, **synth_defaults_meta()}
        meta_path = root / "meta.json"
        if not (meta_path.is_file() and all(json.loads(meta_path.read_text()).get(k) == v for k, v in expected.items())):
            make_synthetic_dataset(root, args.train, args.test, size=args.size, shift=shift, zoom=zoom,
                                   max_radius=SMALL_SCALE_DATA["max_radius"], scale=SMALL_SCALE_DATA["scale"],
                                   seed=args.data_seed, overwrite=True)
        roots[name] = root
    reference = roots[SETTINGS[0][0]]
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

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    series = (
        ("shift of gt (px)", [("aligned", 0.0), ("shift1", 1.0), ("shift2", 2.0), ("shift4", 4.0)]),
        ("zoom of gt (%)", [("aligned", 0.0), ("zoom0.5", 0.5), ("zoom1", 1.0), ("zoom2", 2.0)]),
    )
    for axis, (xlabel, points) in zip(axes, series, strict=True):
        xs = [x for _, x in points]
        for loss, label, marker in (("l1", "L1", "o"), ("unet_eq1", "reblurring-guided (Eq. 1)", "s")):
            axis.plot(xs, [table[name][loss]["psnr_gt"] for name, _ in points], marker=marker, label=label)
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
    for name, shift, zoom in SETTINGS:
        records = run_ablation(roots[name], args.out / name, list(LOSSES), budget, seeds=[args.seed],
                               preset=args.preset, device=args.device,
                               log=lambda text, name=name: print(f"[{name}] {text}", flush=True))
        table[name] = {"shift": shift, "zoom": zoom}
        for record in records:
            table[name][record["variant"]] = {**record["means"], "steps": record["steps"],
                                              "train_seconds": record["train_seconds"]}

    header = ("| misalignment of gt | L1: PSNR / SSIM vs gt_aligned | ours: PSNR / SSIM vs gt_aligned | ours - L1 (dB) "
              "| L1: PSNR flow-aligned | ours: PSNR flow-aligned |")
    lines = [header, "|---|---|---|---|---|---|",
             f"| (blurry input) | {blurry['psnr_gt']:.2f} / {blurry['ssim_gt']:.4f} | | | {blurry['psnr_flow']:.2f} | |"]
    for name, shift, zoom in SETTINGS:
        row = table[name]
        label = "none" if shift == 0 and zoom == 0 else (f"shift {shift:g} px" if shift else f"zoom {100 * zoom:g}%")
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
