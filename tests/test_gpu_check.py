"""benchmarks/gpu_check.sh without a GPU (clear refusal, dry run) and its summary.json writer on synthetic inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_summary  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="{errors}" failures="{failures}" skipped="{skipped}" tests="{tests}" time="1.0">
</testsuite></testsuites>"""


def write_run(folder: Path) -> None:
    """What a gpu_check.sh run leaves behind: env, steps, two JUnit reports, both benchmarks' JSON."""
    (folder / "env.json").write_text(
        json.dumps(
            {"card": "NVIDIA H200", "capability": "9.0", "driver": "580.1", "torch": "2.14.1+cu130",
             "cuda": "13.0", "python": "3.10.12", "commit": "abc1234", "date_utc": "2026-11-30 12:00:00 UTC"}
        )
    )
    (folder / "steps.tsv").write_text(
        "deps\tSKIPPED\t0\t0\nbuild\tPASS\t0\t95\ntest_cuda\tFAIL\t1\t40\nsanitizer_memcheck\tTIMEOUT\t124\t60\n"
        "bench_ops\tPASS\t0\t80\n"
    )
    (folder / "test_cuda.xml").write_text(JUNIT.format(tests=120, failures=2, errors=1, skipped=3))
    (folder / "test_cuda_compile.xml").write_text(JUNIT.format(tests=2, failures=0, errors=0, skipped=0))
    case = {"op": "reblur", "impl": "jdrl_ext", "mode": "fwd", "batch": 8, "height": 512, "width": 512, "dtype": "float32"}
    (folder / "bench_ops_cuda.json").write_text(
        json.dumps(
            {
                "machine": {"cuda_copy_bandwidth_gb_per_s": 4012.5},
                "results": [
                    {"case": case, "result": {"status": "ok", "median_s": 0.00025, "bandwidth_fraction_of_copy": 0.41}},
                    {"case": {**case, "impl": "materialized"}, "result": {"status": "ok", "median_s": 0.004}},
                    {"case": {**case, "op": "isotropic_kernels", "batch": 1}, "result": {"status": "time"}},
                ],
            }
        )
    )
    (folder / "bench_train_cuda.json").write_text(
        json.dumps(
            {"results": [
                {"case": {"arch": "jdrl", "preset": "small", "batch": 1, "height": 256, "width": 256, "levels": 8},
                 "result": {"status": "ok", "plain_step_median_s": 0.0421, "parts_median_s": {}}},
                {"case": {"arch": "jdrl", "preset": "paper", "batch": 1, "height": 256, "width": 256, "levels": 8},
                 "result": {"status": "time"}},
            ]}
        )
    )


def test_summary_from_a_synthetic_run(tmp_path, capsys):
    write_run(tmp_path)
    assert gpu_summary.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["card"], summary["torch"], summary["cuda"], summary["commit"]) == (
        "NVIDIA H200", "2.14.1+cu130", "13.0", "abc1234"
    )
    assert summary["tests"]["test_cuda"] == {"passed": 114, "failed": 2, "errors": 1, "skipped": 3}
    assert summary["tests_total"] == {"passed": 116, "failed": 2, "errors": 1, "skipped": 3}
    assert summary["failed_steps"] == ["test_cuda", "sanitizer_memcheck"] and summary["ok"] is False
    assert summary["copy_bandwidth_gb_per_s"] == 4012.5
    assert summary["ops"] == [
        {"op": "reblur", "impl": "jdrl_ext", "mode": "fwd", "shape": "8x3x512x512", "dtype": "float32",
         "median_ms": 0.25, "bandwidth_fraction_of_copy": 0.41},
        {"op": "reblur", "impl": "materialized", "mode": "fwd", "shape": "8x3x512x512", "dtype": "float32",
         "median_ms": 4.0, "bandwidth_fraction_of_copy": None},
    ]
    assert summary["train"][0]["step_median_s"] == 0.0421 and summary["train"][1] == {
        "arch": "jdrl", "preset": "paper", "batch": 1, "height": 256, "width": 256, "status": "time"
    }
    printed = capsys.readouterr().out
    assert "41.0% of copy" in printed and "FAILED: test_cuda, sanitizer_memcheck" in printed


def test_summary_of_an_empty_folder_is_not_ok(tmp_path):
    summary = gpu_summary.build_summary(tmp_path)
    assert summary["ok"] is False and summary["card"] == "unknown" and summary["ops"] == [] and summary["steps"] == []


def test_summary_all_passed(tmp_path):
    (tmp_path / "steps.tsv").write_text("build\tPASS\t0\t90\nsanitizer\tSKIPPED\t0\t0\n")
    assert gpu_summary.build_summary(tmp_path)["ok"] is True


def run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, "JDRL_GIT_COMMIT": "test", **env}
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=environment, timeout=180
    )


def test_script_syntax():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_script_refuses_without_a_gpu_and_changes_nothing(tmp_path):
    libraries = sorted((ROOT / "jdrl_ext").glob("_C*.so"))
    result = run_script(tmp_path)
    assert result.returncode == 2
    assert "sees no CUDA device" in result.stderr and "GPU_CHECK_DRY_RUN=1" in result.stderr
    assert sorted((ROOT / "jdrl_ext").glob("_C*.so")) == libraries  # the in-place library is left alone


def test_script_dry_run_prints_the_plan_and_writes_a_summary(tmp_path):
    libraries = sorted((ROOT / "jdrl_ext").glob("_C*.so"))
    result = run_script(tmp_path, GPU_CHECK_DRY_RUN="1")
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("build", "test_cuda", "test_cuda_compile", "profile_reblur", "bench_ops", "bench_train"):
        assert f"== {step} (timeout" in result.stdout
    # The compile tests come after the other CUDA tests, the profile and benchmarks after the sanitizer.
    assert result.stdout.index("== test_cuda (") < result.stdout.index("== test_cuda_compile (")
    assert result.stdout.index("== sanitizer") < result.stdout.index("== profile_reblur (")
    assert result.stdout.index("== profile_reblur (") < result.stdout.index("== bench_ops (")
    assert "pip install" not in result.stdout or "torch" not in result.stdout.split("pip install")[1].split("\n")[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["ok"] is False and summary["commit"] == "test"
    assert sorted((ROOT / "jdrl_ext").glob("_C*.so")) == libraries


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_profile_reblur_refuses_bad_arguments_and_a_machine_without_a_gpu():
    """benchmarks/profile_reblur.py: a size that is not WIDTHxHEIGHT or a count under 1 is a usage
    error naming the argument; without a CUDA device it says so and exits 2."""
    script = ROOT / "benchmarks" / "profile_reblur.py"
    for bad, named in ((["--sizes", "512"], "--sizes"), (["--sizes", "0x4"], "--sizes"), (["--calls", "0"], "--calls")):
        result = subprocess.run([sys.executable, str(script), *bad], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert named in result.stderr
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal cannot be seen")
    result = subprocess.run([sys.executable, str(script), "--sizes", "64x48"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
