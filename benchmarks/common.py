"""Helpers shared by bench_ops.py and bench_train.py.

Machine facts for the report (CPU model, GPU name, torch version, git commit, load), the memory
that is free for a case, runs in a fresh process (for peak-RSS deltas on the CPU and a hard time
limit), timing on the CPU (``torch.utils.benchmark``) and on CUDA (events), and formatting.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# --- command-line parsing -----------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (as display resolutions are written: ``4096x2160`` is 2160 rows of 4096
    pixels) -> ``(height, width)``."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise ValueError(f"a size must be WIDTHxHEIGHT such as 512x512 or 4096x2160, got {text!r}") from error
    if width < 1 or height < 1:
        raise ValueError(f"a size must be positive, got {text!r}")
    return height, width


def parse_list(text: str, allowed: Sequence[str] | None = None, name: str = "value") -> list[str]:
    """Comma-separated names; with ``allowed``, an unknown name is an error that lists the choices."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--{name} needs at least one entry")
    if allowed is not None:
        for item in items:
            if item not in allowed:
                raise ValueError(f"--{name}: unknown {item!r}; choose from {', '.join(allowed)}")
    return items


# --- machine facts --------------------------------------------------------------------------------------


def git_commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when the working tree has uncommitted changes.

    ``JDRL_GIT_COMMIT`` in the environment wins: a copy of the tree without ``.git`` (a GPU
    machine) can still name the commit it was made from.
    """
    if os.environ.get("JDRL_GIT_COMMIT"):
        return os.environ["JDRL_GIT_COMMIT"]
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def machine_facts(device: torch.device, threads: int) -> dict[str, Any]:
    """What a reader needs to compare numbers across runs."""
    facts: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads,
        "load_average_1_5_15min": load_average(),
        "memory_available_gb": round(available_memory_bytes(torch.device("cpu")) / 1e9, 1),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts.update(
            {
                "gpu_name": properties.name,
                "gpu_capability": f"{properties.major}.{properties.minor}",
                "gpu_memory_gb": round(properties.total_memory / 1e9, 1),
                "gpu_multiprocessors": properties.multi_processor_count,
                "cuda_runtime": torch.version.cuda,
            }
        )
    return facts


def facts_header(facts: dict[str, Any]) -> str:
    """Two or three lines that go above every table."""
    lines = [
        f"date {facts['date_utc']} | commit {facts['git_commit']} | torch {facts['torch']} | python {facts['python']}",
        (
            f"CPU {facts['cpu_model']} ({facts['cpu_cores_usable']} usable cores) | torch.set_num_threads({facts['torch_threads']}) "
            f"| load average {facts['load_average_1_5_15min']} | RAM available {facts['memory_available_gb']} GB"
        ),
    ]
    if "gpu_name" in facts:
        lines.append(
            f"GPU {facts['gpu_name']} (sm {facts['gpu_capability']}, {facts['gpu_memory_gb']} GB, "
            f"{facts['gpu_multiprocessors']} SMs) | CUDA runtime {facts['cuda_runtime']}"
        )
    return "\n".join(lines)


def available_memory_bytes(device: torch.device) -> int:
    """Memory a case may use now: free device memory on CUDA, ``MemAvailable`` on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


# --- fresh processes ------------------------------------------------------------------------------------

_CONTEXT: multiprocessing.context.BaseContext | None = None


def _fresh_process_context() -> multiprocessing.context.BaseContext:
    """A forkserver that has imported the benchmark script (and so torch and jdrl_ext) once.

    Each case then runs in a child forked from it: a process whose peak RSS starts near the import
    footprint (so ``ru_maxrss`` deltas belong to the case) and whose OpenMP pool was never started
    (forking after OpenMP has run can deadlock), at a fraction of the 1.3 s a fresh interpreter
    costs here.
    """
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["__main__", "torch"])
    return _CONTEXT


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the present RSS (Linux >= 4.0: ``5`` into ``/proc/self/clear_refs``).

    Without it, the temporaries of making the inputs (a softmax over 225 planes, say) would stay
    the high-water mark and hide the call's own peak. ``ru_maxrss`` follows the reset.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def limit_address_space(allowed_extra_bytes: int) -> None:
    """Cap this process's virtual memory at its present size plus ``allowed_extra_bytes``.

    A case that needs more then fails inside torch's allocator with a RuntimeError we report,
    instead of waking the kernel's OOM killer on a machine that other people share.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                current = int(line.split()[1]) * 1024
                break
        else:
            return
    limit = current + max(allowed_extra_bytes, 0)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _child_entry(target: Callable[..., dict], args: tuple, connection) -> None:
    try:
        result = target(*args)
    except BaseException as error:  # noqa: BLE001  (report anything, MemoryError included, to the parent)
        result = {"status": "error", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    try:
        connection.send(result)
    finally:
        connection.close()


def run_in_fresh_process(target: Callable[..., dict], args: tuple, timeout_s: float) -> tuple[dict, float]:
    """Run ``target(*args) -> dict`` in a fresh child; returns its dict and the wall time.

    Past ``timeout_s`` the child is killed and the dict is ``{"status": "timeout"}``; a child that
    dies without answering (e.g. killed for memory) gives ``{"status": "died", "exitcode": ...}``.
    ``target`` must be a module-level function of the running script or of an imported module.
    """
    context = _fresh_process_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_entry, args=(target, args, sender), daemon=True)
    started = time.perf_counter()
    process.start()
    sender.close()
    result: dict | None = None
    if receiver.poll(timeout_s):
        try:
            result = receiver.recv()
        except EOFError:
            result = None
    elapsed = time.perf_counter() - started
    if result is None:
        if process.is_alive():
            process.kill()
            process.join()
            return {"status": "timeout", "elapsed_s": elapsed}, elapsed
        process.join()
        return {"status": "died", "exitcode": process.exitcode}, elapsed
    process.join(timeout=30)
    if process.is_alive():
        process.kill()
        process.join()
    return result, elapsed


# --- timing ---------------------------------------------------------------------------------------------


def time_cpu(
    fn: Callable[[], Any],
    first_call_s: float,
    min_run_time: float,
    max_slow_repeats: int,
    threads: int,
    budget_s: float = math.inf,
) -> dict:
    """Median seconds of ``fn()`` on the CPU, after at least one warm-up call (``first_call_s``).

    Fast calls go through ``torch.utils.benchmark.Timer.blocked_autorange`` (blocks of calls until
    ``min_run_time`` has passed; the median over blocks). Calls slower than a third of
    ``min_run_time`` are timed one by one with ``perf_counter``: ``max_slow_repeats`` times, fewer
    (at least once) where that would pass ``budget_s`` seconds for the whole case, warm-up
    included; calls over 10 s (slow baselines: the ratio matters, not the third digit) once.
    """
    if first_call_s * 3 <= min_run_time:
        from torch.utils import benchmark

        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
        return {
            "median_s": measurement.median,
            "runs": len(measurement.times),
            "calls_per_run": measurement.number_per_run,
            "method": "torch.utils.benchmark blocked_autorange",
        }
    times = []
    affordable = int((budget_s - first_call_s) // first_call_s) if math.isfinite(budget_s) else max_slow_repeats
    repeats = 1 if first_call_s > 10 else max(1, min(max_slow_repeats, affordable))
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "runs": len(times), "calls_per_run": 1, "method": "perf_counter"}


def time_cuda(fns: Sequence[Callable[[], Any]], min_run_time: float, min_calls: int = 5, max_calls: int = 2000) -> dict:
    """Median seconds of one call on CUDA, by events around each call.

    ``fns`` are the same computation on different input sets; calls rotate among them so that
    small inputs are not timed from the L2 cache. Warm-up first (module load, autotuning, caching
    allocator growth), then enough calls to fill ``min_run_time`` (at least ``min_calls``).
    """
    warm_started = time.perf_counter()
    calls = 0
    while calls < len(fns) or (time.perf_counter() - warm_started < 0.05 and calls < 20):
        fns[calls % len(fns)]()
        calls += 1
        torch.cuda.synchronize()
    per_call = (time.perf_counter() - warm_started) / calls
    count = int(min(max_calls, max(min_calls, math.ceil(min_run_time / max(per_call, 1e-6)))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    torch.cuda.synchronize()
    for index in range(count):
        starts[index].record()
        fns[index % len(fns)]()
        ends[index].record()
    torch.cuda.synchronize()
    times = [start.elapsed_time(end) / 1000.0 for start, end in zip(starts, ends)]
    return {
        "median_s": statistics.median(times),
        "runs": count,
        "calls_per_run": 1,
        "spread_s": [min(times), max(times)],
        "method": "cuda events",
        "input_sets": len(fns),
    }


def cuda_copy_bandwidth(device: torch.device, gib: float = 1.0) -> dict:
    """Measured device-to-device copy bandwidth (bytes read + bytes written per second).

    A ``gib``-GiB float32 tensor is copied into another with ``copy_``; the median of 20 copies.
    """
    elements = int(gib * (1 << 30) // 4)
    free, _total = torch.cuda.mem_get_info(device)
    while elements * 8 > free * 0.5 and elements > (1 << 20):
        elements //= 2
    source = torch.rand(elements, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    seconds = statistics.median(times)
    moved = 2 * elements * 4
    del source, target
    torch.cuda.empty_cache()
    return {"bytes_per_s": moved / seconds, "tensor_bytes": elements * 4, "median_s": seconds}


# --- formatting and output ------------------------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def format_bytes(count: float | None) -> str:
    if count is None:
        return "-"
    sign = "-" if count < 0 else ""
    count = abs(count)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{sign}{count / size:.2f} {unit}" if unit == "GB" else f"{sign}{count / size:.1f} {unit}"
    return f"{sign}{count:.0f} B"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width table; columns as wide as their widest cell."""
    widths = [len(name) for name in header]
    for row in rows:
        for index, cell in enumerate(row[: len(widths)]):
            widths[index] = max(widths[index], len(cell))
    lines = ["  ".join(name.ljust(width) for name, width in zip(header, widths))]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        cells = list(row) + [""] * (len(header) - len(row))
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Write atomically (a partial run still leaves a readable file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "w") as stream:
        json.dump(payload, stream, indent=1, default=str)
        stream.write("\n")
    os.replace(temporary, path)


def pick_device(requested: str) -> torch.device:
    """``auto`` takes CUDA where torch sees a GPU; ``cuda`` without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    if requested not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be auto, cpu or cuda, got {requested!r}")
    return torch.device(requested)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
