"""Score finished ``jdrl demo`` runs again, on a larger synthetic test set: is ours above #4?

The demo ranks its three trainings on its own test pairs (4 until 2026-12-01, 32 since). Ours and
#4 are often a few tenths of a dB apart, and their per-pair difference has a standard deviation of
0.2-0.9 dB (eight demos scored on 64 pairs, benchmarks/RESULTS.md), so 4 pairs could not order
them. This script runs each demo's chosen weights (``runs/NAME/best.pt``, the checkpoint the demo
evaluates; ``last.pt`` where the demo kept no best) on the pairs of ``--data`` (made by
``jdrl synth``, ``--split`` test by default) and prints, per demo:

- PSNR against ``gt_aligned`` of the blurry input, L1, #4 and ours, averaged over the pairs;
- ``ours - #4``: the mean of the per-pair differences and its standard error (the pairs' standard
  deviation over sqrt(pairs)), against ``gt_aligned`` and flow-aligned (DIS, as the demo);
- ``over photos``: the standard error from the per-photo means instead. The pairs are crops of a
  few photos (four for the bundled test split), and crops of one photo are not independent: this
  is the error to read, and ``by photo`` the mean difference on each photo
  (``jdrl.metrics.paired_difference``, as the demo's own line under its table);
- ``ours wins``: on how many pairs ours is above #4 against ``gt_aligned``;
- ``R's map``: the Spearman correlation (textured pixels) of ours' R's implied radius with the
  true radius, pooled over the pairs, as the demo's ``defocus_spearman``.

A second table gives each row's PSNR photo by photo beside the input's: on the bundled test photos
every network of the demo has made moon, a flat grey photo scored at 34-41 dB, worse than the
blurry input (benchmarks/RESULTS.md), and that photo decides the sign of ours - #4.

The test pairs must come from photos none of the demo's trainings saw: the script compares the
photo names in both ``meta.json`` files and refuses an overlap (by name only: the same photo under
another name is not caught). ``jdrl synth`` keeps the bundled
photos chelsea, coffee, gravel and moon for its test split at every seed, so a test set made with
another seed and the demo's settings is new crops, blur maps and misalignments of those photos::

    jdrl synth runs/test64 --train 0 --test 64 --size 128 --max-radius 7 --scale 0.3:0.6 --seed 100
    PYTHONPATH=python:. python benchmarks/demo_rescore.py runs/demo_s0 runs/demo_s1 --data runs/test64

Settings of the test set that differ from a demo's data (blur, misalignment, size) are printed
beside its row: the scores are then out of the demo's distribution.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


# The demo's rows, in its table's order: run folder name -> column title.
METHODS = {"l1": "L1", "no_reblur": "#4", "ours": "ours"}
# meta.json entries that make two synthetic sets the same distribution (not the seed or the counts).
DISTRIBUTION_KEYS = (
    "size", "shift", "zoom", "max_radius", "psf", "noise", "scale", "parallax", "nonrigid", "exposure",
    "white_balance", "gamma", "occluders", "source",
)


def read_meta(root: Path, what: str) -> dict:
    """``root/meta.json`` (written by ``jdrl synth``), or a SystemExit naming ``what``."""
    path = root / "meta.json"
    if not path.is_file():
        raise SystemExit(f"{what}: {path} does not exist (a synthetic set made by `jdrl synth` has one)")
    return json.loads(path.read_text())


def chosen_checkpoint(demo: Path, name: str) -> Path:
    """The weights the demo evaluated for ``name``: best on validation, else the last."""
    for file_name in ("best.pt", "last.pt"):
        path = demo / "runs" / name / file_name
        if path.is_file():
            return path
    raise SystemExit(f"{demo}: no runs/{name}/best.pt or last.pt (is it a folder `jdrl demo` wrote?)")


def check_demo(demo: Path, data: Path, split: str, test_photos: dict[str, str]) -> tuple[dict, dict[str, Path]]:
    """Refuse a demo whose training photos the test pairs (``test_photos``: pair name -> photo)
    come from; -> (the demo's ``meta.json``, its checkpoint per method)."""
    from jdrl.synth import pair_sources

    demo_meta = read_meta(demo / "data", f"{demo} (the demo's data)")
    seen = set(pair_sources(demo / "data", "train").values()) | set(demo_meta.get("sources", {}).get("train", []))
    shared = sorted(set(test_photos.values()) & seen)
    if shared:
        raise SystemExit(
            f"--data {data}: its {split} pairs come from photos the demo {demo} trained on ({', '.join(shared)}); "
            "make a test set whose photos the demo never saw (see this script's docstring)"
        )
    return demo_meta, {name: chosen_checkpoint(demo, name) for name in METHODS}


def rescore(
    demo: Path, demo_meta: dict, checkpoints: dict[str, Path], data: Path, split: str, flow_estimator,
    test_meta: dict, test_photos: dict[str, str],
) -> dict:
    """One demo's row: per method the means and per-pair metrics on ``data/split``, and the
    comparison of ours with #4, photo by photo (see the module's docstring)."""
    from jdrl.ablation import evaluate_synthetic
    from jdrl.checkpoint import CheckpointError, load_deblur_net
    from jdrl.defocus import load_reblur_net
    from jdrl.metrics import paired_difference

    row: dict = {"demo": str(demo), "methods": {}, "differs": {}}
    for key in DISTRIBUTION_KEYS:
        if demo_meta.get(key) != test_meta.get(key):
            row["differs"][key] = {"demo": demo_meta.get(key), "test": test_meta.get(key)}
    for name, checkpoint in checkpoints.items():
        try:
            net, reblur = load_deblur_net(checkpoint), load_reblur_net(checkpoint)
        except CheckpointError as error:
            raise SystemExit(f"{checkpoint}: {error}") from None
        # R from the same checkpoint, so ours' R is scored as the demo scores it (None for L1 and #4).
        evaluation = evaluate_synthetic(net, data, split=split, flow_estimator=flow_estimator, reblur=reblur)
        row["methods"][name] = {
            "checkpoint": str(checkpoint),
            "means": evaluation.means,
            "per_image": evaluation.per_image,
            "defocus": evaluation.defocus,
        }
    ours, baseline = (row["methods"][name]["per_image"] for name in ("ours", "no_reblur"))
    groups = [test_photos.get(pair["name"], pair["name"]) for pair in ours]
    for key in ("psnr_gt", "psnr_flow"):
        row[f"ours_minus_no_reblur_{key}"] = paired_difference(
            [p[key] for p in ours], [p[key] for p in baseline], groups
        )
    defocus = row["methods"]["ours"]["defocus"] or {}
    row["r_map_spearman"] = defocus.get("reblur", {}).get("spearman")
    row["psnr_gt_by_photo"] = {name: psnr_by_photo(method["per_image"], test_photos) for name, method in row["methods"].items()}
    return row


def psnr_by_photo(per_image: list[dict], test_photos: dict[str, str]) -> dict[str, float]:
    """Photo -> the mean PSNR against ``gt_aligned`` over its pairs (``jdrl.synth.photo_means``)."""
    from jdrl.synth import photo_means

    return photo_means({pair["name"]: pair["psnr_gt"] for pair in per_image}, test_photos)


def markdown(rows: list[dict], blurry: dict, blurry_by_photo: dict[str, float], pairs: int) -> str:
    """The tables the script prints: the means and ours against #4, then each row by photo."""

    def error(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    titles = " | ".join(f"{title} PSNR" for title in METHODS.values())
    lines = [
        f"{pairs} test pairs; PSNR vs gt_aligned; ours - #4 as mean +- standard error over the pairs, then over "
        "the photos they are cut from (crops of one photo are not independent: read the second).",
        "",
        f"| demo | input PSNR | {titles} | ours - #4 | +- over photos | by photo | ours - #4, flow-aligned "
        "| ours wins | R's map Spearman | data differs in |",
        "|---|---|" + "---|" * len(METHODS) + "---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row["demo"], f"{blurry['psnr_gt']:.3f}"]
        cells += [f"{row['methods'][name]['means']['psnr_gt']:.3f}" for name in METHODS]
        versus = row["ours_minus_no_reblur_psnr_gt"]
        cells.append(f"{versus['mean']:+.3f} +- {error(versus['standard_error'])}")
        cells.append(error(versus["group_standard_error"]))
        cells.append(", ".join(f"{photo} {value:+.2f}" for photo, value in versus["by_group"].items()))
        flow = row["ours_minus_no_reblur_psnr_flow"]
        cells.append(f"{flow['mean']:+.3f} +- {error(flow['standard_error'])} ({error(flow['group_standard_error'])})")
        cells.append(f"{versus['wins']}/{pairs}")
        cells.append("-" if row["r_map_spearman"] is None else f"{row['r_map_spearman']:.3f}")
        cells.append(", ".join(row["differs"]) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "PSNR vs gt_aligned by photo (the mean over its pairs); a network below the input has made that photo worse.",
        "",
        "| demo | photo | input | " + " | ".join(METHODS.values()) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for row in rows:
        for photo, value in blurry_by_photo.items():
            cells = [row["demo"], photo, f"{value:.3f}"]
            cells += [f"{row['psnr_gt_by_photo'][name][photo]:.3f}" for name in METHODS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demos", nargs="+", type=Path, help="folders `jdrl demo --out` wrote (runs/, data/)")
    parser.add_argument("--data", type=Path, required=True,
                        help="synthetic test set (made by `jdrl synth`) from photos the demos never trained on")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="split of --data to score (default test)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number, per pair, here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from jdrl.ablation import AblationError, evaluate_synthetic
    from jdrl.flow import build_flow_estimator
    from jdrl.synth import pair_sources

    test_meta = read_meta(args.data, "--data")
    test_photos = pair_sources(args.data, args.split)
    flow_estimator = build_flow_estimator("dis")
    try:
        # Every demo is checked before any is scored: a bad last one fails at once, not after minutes.
        checked = {demo: check_demo(demo, args.data, args.split, test_photos) for demo in args.demos}
        blurry = evaluate_synthetic(None, args.data, split=args.split, flow_estimator=flow_estimator)
        rows = [rescore(demo, *checked[demo], args.data, args.split, flow_estimator, test_meta, test_photos)
                for demo in args.demos]
    except AblationError as error:
        raise SystemExit(f"--data {args.data}: {error}") from None
    blurry_by_photo = psnr_by_photo(blurry.per_image, test_photos)
    print(markdown(rows, blurry.means, blurry_by_photo, len(blurry.per_image)))
    if args.json is not None:
        payload = {
            "data": str(args.data), "split": args.split, "blurry": blurry.means,
            "blurry_psnr_gt_by_photo": blurry_by_photo, "demos": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
