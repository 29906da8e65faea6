"""summary.json of a benchmarks/gpu_check.sh run, from the files its steps left in its folder.

    python benchmarks/gpu_summary.py DIR

Reads (each optional: a step that did not run leaves its file out, and the summary says so):
- ``DIR/env.json``: the card, torch and CUDA versions, commit, date (gpu_check's environment step);
- ``DIR/steps.tsv``: one line per step, ``name<TAB>status<TAB>exit code<TAB>seconds``;
- ``DIR/*.xml``: pytest's JUnit reports, one per test step: the test counts;
- ``DIR/bench_ops_cuda.json``: bench_ops.py's results: per op, mode, shape and dtype the median time
  and the bandwidth as a fraction of the measured copy bandwidth;
- ``DIR/bench_train_cuda.json``: bench_train.py's results: seconds per training step.
Writes ``DIR/summary.json`` and prints a short text version. Python 3.10+, standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(path: Path) -> list[dict[str, Any]]:
    steps = []
    if not path.exists():
        return steps
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) != 4:
            continue
        name, status, code, seconds = fields
        steps.append({"name": name, "status": status, "exit_code": int(code), "seconds": int(seconds)})
    return steps


def test_counts(path: Path) -> dict[str, int]:
    """passed / failed / errors / skipped of one JUnit XML report (pytest --junitxml)."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, 0))
    return {
        "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
        "failed": total["failures"],
        "errors": total["errors"],
        "skipped": total["skipped"],
    }


def op_results(bench_ops: dict[str, Any] | None) -> tuple[list[dict[str, Any]], float | None]:
    """One row per case that ran: op, implementation, mode, BxCxHxW, dtype, median ms, bandwidth fraction."""
    if not bench_ops:
        return [], None
    copy = bench_ops.get("machine", {}).get("cuda_copy_bandwidth_gb_per_s")
    rows = []
    for record in bench_ops.get("results", []):
        case, result = record.get("case", {}), record.get("result", {})
        if result.get("status") != "ok":
            continue
        channels = 8 if case.get("op") == "isotropic_kernels" else 3
        rows.append(
            {
                "op": case.get("op"),
                "impl": case.get("impl"),
                "mode": case.get("mode"),
                "shape": f"{case.get('batch')}x{channels}x{case.get('height')}x{case.get('width')}",
                "dtype": case.get("dtype"),
                "median_ms": round(1e3 * result["median_s"], 4),
                "bandwidth_fraction_of_copy": (
                    round(result["bandwidth_fraction_of_copy"], 4) if "bandwidth_fraction_of_copy" in result else None
                ),
            }
        )
    return rows, copy


def train_results(bench_train: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for record in (bench_train or {}).get("results", []):
        case, result = record.get("case", {}), record.get("result", {})
        row = {key: case.get(key) for key in ("arch", "preset", "batch", "height", "width") if key in case}
        row["status"] = result.get("status")
        if result.get("status") == "ok":
            row["step_median_s"] = round(result["plain_step_median_s"], 4)
        rows.append(row)
    return rows


def build_summary(folder: Path) -> dict[str, Any]:
    env = read_json(folder / "env.json") or {}
    steps = read_steps(folder / "steps.tsv")
    tests = {path.stem: test_counts(path) for path in sorted(folder.glob("*.xml"))}
    ops, copy = op_results(read_json(folder / "bench_ops_cuda.json"))
    # DRY: a step that GPU_CHECK_DRY_RUN=1 only printed; neither a pass nor a failure.
    failed_steps = [step["name"] for step in steps if step["status"] not in ("PASS", "SKIPPED", "DRY")]
    dry_run = any(step["status"] == "DRY" for step in steps)
    return {
        "card": env.get("card", "unknown"),
        "capability": env.get("capability"),
        "driver": env.get("driver"),
        "torch": env.get("torch", "unknown"),
        "cuda": env.get("cuda", "unknown"),
        "python": env.get("python"),
        "commit": env.get("commit", "unknown"),
        "date_utc": env.get("date_utc"),
        "ok": bool(steps) and not failed_steps and not dry_run,
        "dry_run": dry_run,
        "failed_steps": failed_steps,
        "steps": steps,
        "tests": tests,
        "tests_total": {key: sum(t[key] for t in tests.values()) for key in ("passed", "failed", "errors", "skipped")},
        "copy_bandwidth_gb_per_s": copy,
        "ops": ops,
        "train": train_results(read_json(folder / "bench_train_cuda.json")),
    }


def text(summary: dict[str, Any]) -> str:
    lines = [
        f"card {summary['card']} | torch {summary['torch']} | CUDA {summary['cuda']} | commit {summary['commit']} "
        f"| {summary['date_utc']}",
        "steps: " + ", ".join(f"{s['name']} {s['status']} ({s['seconds']}s)" for s in summary["steps"]),
        "tests: " + ", ".join(f"{k} {v}" for k, v in summary["tests_total"].items()),
    ]
    if summary["copy_bandwidth_gb_per_s"]:
        lines.append(f"copy bandwidth {summary['copy_bandwidth_gb_per_s']} GB/s")
    for row in summary["ops"]:
        if row["impl"] == "jdrl_ext":
            fraction = row["bandwidth_fraction_of_copy"]
            lines.append(
                f"  {row['op']:<18} {row['mode']:<7} {row['shape']:<14} {row['dtype']:<9} {row['median_ms']:>9.3f} ms"
                + (f"  {100 * fraction:5.1f}% of copy" if fraction is not None else "")
            )
    if summary["dry_run"]:
        lines.append("DRY RUN: the steps were printed, not run")
    else:
        lines.append("OK" if summary["ok"] else f"FAILED: {', '.join(summary['failed_steps']) or 'no steps ran'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write summary.json of a gpu_check.sh run.")
    parser.add_argument("folder", type=Path, help="the folder gpu_check.sh wrote its logs to")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"no folder {args.folder}")
    summary = build_summary(args.folder)
    (args.folder / "summary.json").write_text(json.dumps(summary, indent=1))
    print(text(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
