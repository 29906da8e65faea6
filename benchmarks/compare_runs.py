"""What one method adds over another, seed by seed, from the JSON files of ``method_at_scale.py``.

One row of ``method_at_scale.py`` is one checkpoint scored on the test pairs, and two checkpoints of
the same run 250 steps apart can differ by more than two methods do (the weights swing by tenths of
a dB from row to row). So a comparison reads means over spans of rows, over the rows that both runs
scored, and over seeds. This script pairs the runs of method A with those of method B by position
(``--a ours_s2.json ours_s3.json --b no_reblur_s2.json no_reblur_s3.json``: seed 2 with seed 2,
seed 3 with seed 3), checks that each pair compares like with like (the same seed, test pairs and
input score, the same chunking and warm-up), and prints for each pair and span the mean gain over
the input of A and of B and their difference, how many rows A is above B, and when each run first
reaches ``--threshold`` dB; then the mean difference over the pairs with its standard error (the
spread between seeds, over the square root of their number) and, over the last span, the
difference by photo.

Scores: ``--score ema_gain`` (the default) reads the weight average of each row, ``gain`` the
weights themselves (both are gains in dB over the blurry input against ``gt_aligned``).

Example (the runs of "Ours against #4 with the same flow" in benchmarks/RESULTS.md)::

    python benchmarks/compare_runs.py --a runs/oldR_S2.json runs/oldR_S3.json \\
        --b runs/no_reb_IB_S2.json runs/no_reb_IB_S3.json --spans 1750-3000,3250-5500,5750-8000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

SCORES = ("ema_gain", "gain")
# Settings two runs must share to be compared (each is an entry of the JSON's "args"). The test
# folder's path is not one of them: a `jdrl synth` set made again by the same command in another
# folder is the same test set (the scratch folders of earlier runs do not survive the machine).
# The test pairs are compared by what the runs scored on them instead: the input's PSNR, overall
# and by photo.
SHARED_ARGS = ("seed", "test_pairs", "every", "preset", "lr")


def load_run(path: Path, score: str) -> dict[str, Any]:
    """A method_at_scale.py JSON file, with its rows keyed by step; errors name the file."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file (a --json file of benchmarks/method_at_scale.py)")
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(run, dict) or not isinstance(run.get("rows"), list) or not isinstance(run.get("args"), dict):
        raise ValueError(f"{path}: not a JSON file of benchmarks/method_at_scale.py (no 'args' and 'rows')")
    if not run["rows"]:
        raise ValueError(f"{path}: holds no rows yet")
    for row in run["rows"]:
        if row.get(score) is None:
            raise ValueError(f"{path}: the row at step {row.get('step')} has no {score!r} "
                             f"({'run without train.ema_decay; use --score gain' if score == 'ema_gain' else 'not a row of this script'})")
    run["by_step"] = {int(row["step"]): row for row in run["rows"]}
    run["path"] = path
    return run


def check_pair(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two runs compare only the methods if they share the seed, the test pairs and the chunking."""
    for key in SHARED_ARGS:
        if a["args"].get(key) != b["args"].get(key):
            raise ValueError(f"{a['path']} and {b['path']} differ in {key} ({a['args'].get(key)!r} against "
                             f"{b['args'].get(key)!r}): pair the runs of the same seed and settings, in the same order")
    if not math.isclose(a["input_psnr"], b["input_psnr"], abs_tol=1e-9):
        raise ValueError(f"{a['path']} and {b['path']} scored different inputs ({a['input_psnr']:.4f} against "
                         f"{b['input_psnr']:.4f} dB): not the same test pairs")
    by_photo_a, by_photo_b = a.get("input_psnr_by_photo") or {}, b.get("input_psnr_by_photo") or {}
    for photo in sorted(set(by_photo_a) & set(by_photo_b)):
        if not math.isclose(by_photo_a[photo], by_photo_b[photo], abs_tol=1e-9):
            raise ValueError(f"{a['path']} and {b['path']} scored different inputs of {photo} ({by_photo_a[photo]:.4f} "
                             f"against {by_photo_b[photo]:.4f} dB): not the same test pairs")
    if a.get("warmup_steps") != b.get("warmup_steps"):
        raise ValueError(f"{a['path']} and {b['path']} warmed the flow up for different steps "
                         f"({a.get('warmup_steps')} against {b.get('warmup_steps')})")


def parse_spans(text: str) -> list[tuple[int, int]]:
    """``"1750-3000,3250-5500"`` -> ``[(1750, 3000), (3250, 5500)]`` (steps, both ends included)."""
    spans = []
    for item in text.split(","):
        try:
            low, high = (int(part) for part in item.strip().split("-"))
        except ValueError:
            raise ValueError(f"--spans: {item.strip()!r} is not FIRST-LAST in steps, such as 1750-3000") from None
        if low > high:
            raise ValueError(f"--spans: {item.strip()!r} ends before it starts")
        spans.append((low, high))
    return spans


def compare_pair(a: dict[str, Any], b: dict[str, Any], spans: list[tuple[int, int]], score: str,
                 threshold: float) -> dict[str, Any]:
    """Span means of A, B and A - B over the steps both scored, rows where A is above B from the
    first span's start, and each run's first step at or above ``threshold``."""
    shared = sorted(set(a["by_step"]) & set(b["by_step"]))
    result: dict[str, Any] = {"a": str(a["path"]), "b": str(b["path"]), "seed": a["args"].get("seed"), "spans": []}
    for low, high in spans:
        steps = [step for step in shared if low <= step <= high]
        if not steps:
            raise ValueError(f"no step in {low}-{high} was scored by both {a['path']} and {b['path']} "
                             f"(shared steps {shared[0]}..{shared[-1]})" if shared else
                             f"{a['path']} and {b['path']} share no scored step")
        mean_a = statistics.fmean(a["by_step"][step][score] for step in steps)
        mean_b = statistics.fmean(b["by_step"][step][score] for step in steps)
        photos = sorted(set(a["by_step"][steps[0]][f"{score}_by_photo"]) & set(b["by_step"][steps[0]][f"{score}_by_photo"]))
        by_photo = {photo: statistics.fmean(a["by_step"][step][f"{score}_by_photo"][photo]
                                            - b["by_step"][step][f"{score}_by_photo"][photo] for step in steps)
                    for photo in photos}
        result["spans"].append({"span": [low, high], "rows": len(steps), "a": mean_a, "b": mean_b,
                                "difference": mean_a - mean_b, "difference_by_photo": by_photo})
    compared = [step for step in shared if step >= spans[0][0]]
    differences = [a["by_step"][step][score] - b["by_step"][step][score] for step in compared]
    result["rows_compared"] = len(compared)
    result["rows_a_above"] = sum(difference > 0 for difference in differences)
    result["row_difference_range"] = [min(differences), max(differences)] if differences else None

    def first_at(run: dict[str, Any]) -> int | None:
        return next((step for step in sorted(run["by_step"]) if run["by_step"][step][score] >= threshold), None)

    for name, run in (("a", a), ("b", b)):
        result[f"first_at_threshold_{name}"] = first_at(run)
        result[f"best_{name}"] = max(row[score] for row in run["by_step"].values())
        result[f"last_step_{name}"] = max(run["by_step"])
    return result


def summarize(pairs: list[dict[str, Any]], spans: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Per span: the mean of A - B over the pairs, and its standard error from the spread between them."""
    summary = []
    for index, (low, high) in enumerate(spans):
        differences = [pair["spans"][index]["difference"] for pair in pairs]
        error = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else None
        summary.append({"span": [low, high], "mean_difference": statistics.fmean(differences), "standard_error": error,
                        "pairs_a_ahead": sum(difference > 0 for difference in differences), "pairs": len(differences)})
    return summary


def report(pairs: list[dict[str, Any]], summary: list[dict[str, Any]], score: str, threshold: float) -> str:
    """The tables, in markdown."""
    spans = [f"{low}-{high}" for low, high in (span["span"] for span in summary)]
    lines = [f"Gain over the input ({score}, dB) as A / B / A - B, means over the rows both runs scored:", "",
             "| seed | " + " | ".join(spans) + f" | rows A above, from {summary[0]['span'][0]} (A - B, least..most) | first at +{threshold:g} A / B (best) |",
             "|---|" + "---|" * (len(spans) + 2)]
    def row_range(pair: dict[str, Any]) -> str:
        low_high = pair["row_difference_range"]
        return f" ({low_high[0]:+.2f}..{low_high[1]:+.2f})" if low_high is not None else ""

    for pair in pairs:
        cells = [f"{span['a']:+.2f} / {span['b']:+.2f} / **{span['difference']:+.2f}** ({span['rows']} rows)"
                 for span in pair["spans"]]

        def reached(name: str) -> str:
            step = pair[f"first_at_threshold_{name}"]
            return (f"{step}" if step is not None else f"not by {pair[f'last_step_{name}']}") + f" ({pair[f'best_{name}']:+.2f})"

        lines.append(f"| {pair['seed']} | " + " | ".join(cells)
                     + f" | {pair['rows_a_above']}/{pair['rows_compared']}{row_range(pair)} | {reached('a')} / {reached('b')} |")
    lines += ["", "| over the seeds | " + " | ".join(spans) + " |", "|---|" + "---|" * len(spans)]
    cells = [f"{span['mean_difference']:+.3f}" + (f" ± {span['standard_error']:.3f}" if span["standard_error"] is not None else "")
             + f", A ahead at {span['pairs_a_ahead']}/{span['pairs']}" for span in summary]
    lines.append("| A - B, mean ± standard error | " + " | ".join(cells) + " |")
    last = len(summary) - 1
    photos = sorted(set.intersection(*(set(pair["spans"][last]["difference_by_photo"]) for pair in pairs)))
    if photos:
        lines += ["", f"A - B by photo over {spans[last]}:", "",
                  "| seed | " + " | ".join(photos) + " |", "|---|" + "---|" * len(photos)]
        for pair in pairs:
            lines.append(f"| {pair['seed']} | "
                         + " | ".join(f"{pair['spans'][last]['difference_by_photo'][photo]:+.2f}" for photo in photos) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, nargs="+", required=True, help="method A's runs (--json files), one per seed")
    parser.add_argument("--b", type=Path, nargs="+", required=True, help="method B's runs, the same seeds in the same order")
    parser.add_argument("--spans", default="1750-3000,3250-5500,5750-8000",
                        help="spans of steps to average over, FIRST-LAST,... (both ends included)")
    parser.add_argument("--score", default="ema_gain", choices=SCORES, help="the weight average (ema_gain) or the weights (gain)")
    parser.add_argument("--threshold", type=float, default=1.5, help="report when each run first reaches this gain (dB)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    try:
        if len(args.a) != len(args.b):
            raise ValueError(f"--a has {len(args.a)} runs and --b {len(args.b)}: give one of each per seed")
        spans = parse_spans(args.spans)
        pairs = []
        for path_a, path_b in zip(args.a, args.b):
            a, b = load_run(path_a, args.score), load_run(path_b, args.score)
            check_pair(a, b)
            pairs.append(compare_pair(a, b, spans, args.score, args.threshold))
    except ValueError as error:
        print(f"compare_runs: {error}", file=sys.stderr)
        return 2
    summary = summarize(pairs, spans)
    print(report(pairs, summary, args.score, args.threshold))
    if args.json is not None:
        # Atomically, as common.write_json does (not imported here: it would import torch for nothing).
        temporary = args.json.with_suffix(args.json.suffix + ".tmp")
        temporary.write_text(json.dumps({"score": args.score, "threshold": args.threshold, "pairs": pairs,
                                         "summary": summary}, indent=1) + "\n")
        os.replace(temporary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
