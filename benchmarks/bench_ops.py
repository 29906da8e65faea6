"""Time and memory of the jdrl_ext ops against their baselines, in one run.

For each op (isotropic_kernels, sv_conv, reblur, flow_warp), forward alone ("fwd", inputs without
gradients, under no_grad) and forward + backward ("fwdbwd", ``torch.autograd.grad`` of the output
against a random output gradient, for every floating input), it reports the median time after
warm-up and the peak extra memory, next to the baselines of the same run:

- ``reference``: ``jdrl_ext.reference.<op>``, the pure-PyTorch spec (every op);
- ``materialized``: ``jdrl_ext.reference.reblur_materialized``, the authors' approach of per-level
  whole-image kernels and ``F.unfold``'s K*K shifted copies (reblur only);
- ``grid_sample``: meshgrid + normalize + ``F.grid_sample(align_corners=True)`` (flow_warp only).

Shapes: reblur uses m = 8 levels (seeds (B, 35, H, W), weights (B, 8, H, W)); isotropic_kernels
and sv_conv use radius 7, i.e. K = 15 and 225 taps (seeds (B, 8, H, W), kernels (B, 225, H, W));
images have 3 channels; flows are smooth (bilinear upsampling of random vectors, std 4 px).
Options: reblur support "window", padding "replicate" (every implementation); flow_warp padding
"border".

CPU: every case runs in a fresh process (forked from a server that has imported torch); its peak
extra memory is the growth of ``ru_maxrss`` over the run of one call (which is also the warm-up),
after the inputs exist; its time is ``torch.utils.benchmark`` ``blocked_autorange``'s median (calls
over a third of ``--min-run-time`` are timed ``--slow-repeats`` times with ``perf_counter``, calls
over 10 s once).
CUDA: in-process; CUDA events around each call, inputs rotated among several sets so small cases do
not run from L2; peak extra memory from ``torch.cuda.max_memory_allocated``; achieved bandwidth
(each input read once + each output written once) as a fraction of a measured 1 GiB ``copy_``.

Cases run in two passes, each from the smallest to the largest: jdrl_ext with the materialized and
grid_sample baselines first, then the pure-PyTorch references (some are very slow: sv_conv's
backward builds a full-size gradient per tap). A case that would not fit in the memory available now (estimated beforehand) prints "does not fit
in memory (needs ~X GB)"; one whose estimated time exceeds ``--case-budget`` or what is left of
``--time-budget`` prints "skipped: over time budget". Estimates come from formulas and, once a
smaller case of the same op/implementation/mode has run, from its measured numbers.

Examples (from the repository root, with the package importable)::

    python benchmarks/bench_ops.py --key                      # the three headline comparisons
    python benchmarks/bench_ops.py                            # everything the budget allows
    python benchmarks/bench_ops.py --ops reblur --sizes 256x256,512x512 --batches 1 --modes fwdbwd
    python benchmarks/bench_ops.py --device cuda --json out/bench_ops_cuda.json
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import jdrl_ext
from jdrl_ext import reference

OPS = ("isotropic_kernels", "sv_conv", "reblur", "flow_warp")
IMPLEMENTATIONS = ("jdrl_ext", "reference", "materialized", "grid_sample")
MODES = ("fwd", "fwdbwd")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SIZES = "256x256,512x512,1024x1024,4096x2160"

LEVELS = 8  # m of the paper
RADIUS = 7  # isotropic_kernels / sv_conv: the largest level of m = 8
TAPS = (2 * RADIUS + 1) ** 2  # 225
SEED_CHANNELS = jdrl_ext.seed_channels(LEVELS)  # 35
TAPS_ALL_LEVELS = sum((2 * r + 1) ** 2 for r in range(1, LEVELS))  # 679: what the materializing path builds
IMAGE_CHANNELS = 3

BASELINES = {
    "isotropic_kernels": ("reference",),
    "sv_conv": ("reference",),
    "reblur": ("reference", "materialized"),
    "flow_warp": ("reference", "grid_sample"),
}

# Input and output channels per pixel of each op (what the bandwidth and the memory estimates count).
INPUT_CHANNELS = {
    "isotropic_kernels": {"seeds": RADIUS + 1},
    "sv_conv": {"image": IMAGE_CHANNELS, "kernels": TAPS},
    "reblur": {"image": IMAGE_CHANNELS, "seeds": SEED_CHANNELS, "weights": LEVELS},
    "flow_warp": {"image": IMAGE_CHANNELS, "flow": 2},
}
OUTPUT_CHANNELS = {"isotropic_kernels": TAPS, "sv_conv": IMAGE_CHANNELS, "reblur": IMAGE_CHANNELS, "flow_warp": IMAGE_CHANNELS}


@dataclass(frozen=True)
class Case:
    op: str
    impl: str
    mode: str
    batch: int
    height: int
    width: int
    dtype: str

    @property
    def pixels(self) -> int:
        return self.batch * self.height * self.width

    @property
    def shape(self) -> str:
        """``BxCxHxW`` of the first input: the seeds for isotropic_kernels, the image otherwise."""
        channels = next(iter(INPUT_CHANNELS[self.op].values()))
        return f"{self.batch}x{channels}x{self.height}x{self.width}"

    @property
    def group(self) -> tuple:
        """Cases that compare with each other: same op, mode, shape and dtype."""
        return (self.op, self.mode, self.batch, self.height, self.width, self.dtype)

    @property
    def kind(self) -> tuple:
        """Cases whose cost scales with the pixel count from one to the other."""
        return (self.op, self.impl, self.mode, self.dtype)


# --- the computations ---------------------------------------------------------------------------------


def grid_sample_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The usual PyTorch warp: pixel grid + flow, normalized to [-1, 1], ``F.grid_sample``.

    ``align_corners=True`` so that zero flow is the identity and the result equals
    ``jdrl_ext.flow_warp(image, flow, padding_mode="border")``. The grid is built in float32 (a
    bfloat16 ``arange`` cannot count past 256) and cast to the image's dtype, as grid_sample wants.
    """
    _, _, height, width = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=image.device, dtype=torch.float32),
        torch.arange(width, device=image.device, dtype=torch.float32),
        indexing="ij",
    )
    sample_x = (xs + flow[:, 0].float()) * (2.0 / max(width - 1, 1)) - 1.0
    sample_y = (ys + flow[:, 1].float()) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack((sample_x, sample_y), dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def op_function(op: str, impl: str) -> Callable[..., torch.Tensor]:
    if op == "isotropic_kernels":
        fn = {"jdrl_ext": jdrl_ext.isotropic_kernels, "reference": reference.isotropic_kernels}[impl]
        return lambda seeds: fn(seeds, support="window")
    if op == "sv_conv":
        fn = {"jdrl_ext": jdrl_ext.sv_conv, "reference": reference.sv_conv}[impl]
        return lambda image, kernels: fn(image, kernels, padding_mode="replicate")
    if op == "reblur":
        fn = {"jdrl_ext": jdrl_ext.reblur, "reference": reference.reblur, "materialized": reference.reblur_materialized}[impl]
        return lambda image, seeds, weights: fn(image, seeds, weights, support="window", padding_mode="replicate")
    if op == "flow_warp":
        if impl == "grid_sample":
            return grid_sample_warp
        fn = {"jdrl_ext": jdrl_ext.flow_warp, "reference": reference.flow_warp}[impl]
        return lambda image, flow: fn(image, flow, padding_mode="border")
    raise ValueError(f"unknown op {op!r}")


def make_inputs(case: Case, device: torch.device, seed: int, requires_grad: bool) -> list[torch.Tensor]:
    """Random, realistic inputs (never zeros: they can hide unwritten outputs and run faster)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    dtype = common_dtype(case.dtype)
    batch, height, width = case.batch, case.height, case.width

    def uniform(channels: int) -> torch.Tensor:
        return torch.rand(batch, channels, height, width, generator=generator, device=device, dtype=torch.float32)

    def normal(channels: int) -> torch.Tensor:
        return torch.randn(batch, channels, height, width, generator=generator, device=device, dtype=torch.float32)

    if case.op == "isotropic_kernels":
        tensors = [normal(RADIUS + 1)]
    elif case.op == "sv_conv":
        tensors = [uniform(IMAGE_CHANNELS), torch.softmax(normal(TAPS), dim=1)]
    elif case.op == "reblur":
        tensors = [uniform(IMAGE_CHANNELS), normal(SEED_CHANNELS), torch.softmax(normal(LEVELS), dim=1)]
    elif case.op == "flow_warp":
        coarse = torch.randn(
            batch, 2, height // 32 + 2, width // 32 + 2, generator=generator, device=device, dtype=torch.float32
        )
        flow = F.interpolate(coarse * 4.0, size=(height, width), mode="bilinear", align_corners=True)
        tensors = [uniform(IMAGE_CHANNELS), flow]
    else:
        raise ValueError(f"unknown op {case.op!r}")
    return [tensor.to(dtype).contiguous().requires_grad_(requires_grad) for tensor in tensors]


def common_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def make_call(case: Case, inputs: list[torch.Tensor], device: torch.device, seed: int) -> Callable[[], Any]:
    """``call()`` runs the case once: the forward under no_grad, or forward + backward."""
    fn = op_function(case.op, case.impl)
    if case.mode == "fwd":

        def forward() -> Any:
            with torch.no_grad():
                return fn(*inputs)

        return forward
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    out_shape = (case.batch, OUTPUT_CHANNELS[case.op], case.height, case.width)
    grad_out = torch.randn(out_shape, generator=generator, device=device).to(common_dtype(case.dtype))

    def forward_backward() -> Any:
        out = fn(*inputs)
        return torch.autograd.grad(out, inputs, grad_out)

    return forward_backward


# --- estimates ----------------------------------------------------------------------------------------


def input_elements(case: Case) -> int:
    return sum(INPUT_CHANNELS[case.op].values()) * case.pixels


def output_elements(case: Case) -> int:
    return OUTPUT_CHANNELS[case.op] * case.pixels


def minimal_bytes(case: Case) -> int:
    """Each input read once and each output written once (the backward adds the output gradient as
    an input and one gradient per input as outputs)."""
    elements = input_elements(case) + output_elements(case)
    if case.mode == "fwdbwd":
        elements *= 2
    return elements * common_dtype(case.dtype).itemsize


def formula_extra_elements_per_pixel(case: Case) -> float:
    """Rough peak memory beyond the inputs, in elements per pixel (batch included), before any
    measurement of this kind of case exists. Deliberately on the high side."""
    inputs = sum(INPUT_CHANNELS[case.op].values())
    outputs = OUTPUT_CHANNELS[case.op]
    backward = case.mode == "fwdbwd"
    io = outputs + (outputs + inputs if backward else 0)  # output, its gradient, the input gradients
    if case.impl in ("jdrl_ext", "grid_sample"):
        return io + (2 * inputs if backward else 0) + (4 if case.impl == "grid_sample" else 0)
    if case.op == "isotropic_kernels":
        return io + (10 if backward else 6) * TAPS
    if case.op == "sv_conv":
        return io + (3 * TAPS if backward else 4 * IMAGE_CHANNELS)
    if case.op == "flow_warp":
        return io + (80 if backward else 40)
    if case.impl == "reference":  # reblur: per level the kernels and their softmax, kept for backward
        return io + (5 * TAPS_ALL_LEVELS + 6 * TAPS if backward else 7 * TAPS)
    # materialized reblur: per level K*K shifted copies of the image and the kernels, kept for backward
    per_level_transient = (2 * IMAGE_CHANNELS + 7) * TAPS
    return io + ((IMAGE_CHANNELS + 3) * TAPS_ALL_LEVELS + per_level_transient if backward else per_level_transient)


# --- running one case -----------------------------------------------------------------------------------


def run_case_cpu(case_fields: dict, settings: dict) -> dict:
    """In a fresh child: warm up on a tiny input, make the inputs, one call for peak memory (which is
    also the warm-up), then the timing."""
    case = Case(**case_fields)
    torch.set_num_threads(settings["threads"])
    common.limit_address_space(settings["memory_limit_bytes"])
    device = torch.device("cpu")
    tiny = Case(case.op, case.impl, case.mode, 1, 16, 16, case.dtype)
    make_call(tiny, make_inputs(tiny, device, 0, tiny.mode == "fwdbwd"), device, 0)()
    try:
        inputs = make_inputs(case, device, settings["seed"], case.mode == "fwdbwd")
        call = make_call(case, inputs, device, settings["seed"])
        gc.collect()
        peak_was_reset = common.reset_peak_rss()
        before = common.peak_rss_bytes()
        started = time.perf_counter()
        call()
        first_call_s = time.perf_counter() - started
        peak_extra = common.peak_rss_bytes() - before
        timing = common.time_cpu(
            call, first_call_s, settings["min_run_time"], settings["slow_repeats"], settings["threads"], settings["case_budget"]
        )
    except (RuntimeError, MemoryError) as error:
        if "alloc" in str(error).lower() or isinstance(error, MemoryError):
            return {"status": "memory", "error": f"{type(error).__name__}: {str(error)[:200]}"}
        raise
    return {
        "status": "ok",
        "first_call_s": first_call_s,
        "peak_extra_bytes": peak_extra,
        "memory_method": "ru_maxrss growth over one call in a fresh process, inputs already allocated"
        + (", peak reset before the call" if peak_was_reset else ", peak NOT reset (input temporaries may hide it)"),
        **timing,
    }


def run_case_cuda(case: Case, device: torch.device, settings: dict) -> dict:
    """In-process on the GPU: warm-up, one call for peak memory, events timing over rotated inputs."""
    seed = settings["seed"]
    try:
        inputs = make_inputs(case, device, seed, case.mode == "fwdbwd")
        call = make_call(case, inputs, device, seed)
        torch.cuda.synchronize()
        started = time.perf_counter()
        call()  # warm-up: module load, kernel caches, allocator growth
        torch.cuda.synchronize()
        first_call_s = time.perf_counter() - started
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        torch.cuda.synchronize()
        peak_extra = torch.cuda.max_memory_allocated(device) - before
        del result
        # Rotate input sets so that the working set exceeds the L2 cache (or memory runs short).
        set_bytes = input_elements(case) * common_dtype(case.dtype).itemsize
        l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
        sets = 1 if set_bytes >= 2 * l2_bytes else min(8, math.ceil(2 * l2_bytes / max(set_bytes, 1)))
        free = common.available_memory_bytes(device)
        sets = max(1, min(sets, int(free * 0.5 // max(set_bytes + peak_extra, 1))))
        calls = [call] + [
            make_call(case, make_inputs(case, device, seed + 10 * index, case.mode == "fwdbwd"), device, seed + 10 * index)
            for index in range(1, sets)
        ]
        if first_call_s * 3 > settings["min_run_time"]:  # slow baselines: a few calls are enough
            timing = common.time_cuda(calls, 0.0, min_calls=settings["slow_repeats"])
        else:
            timing = common.time_cuda(calls, settings["min_run_time"])
        del calls, call, inputs
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        return {"status": "memory", "error": f"OutOfMemoryError: {str(error)[:200]}"}
    torch.cuda.empty_cache()
    seconds = timing["median_s"]
    moved = minimal_bytes(case)
    return {
        "status": "ok",
        "first_call_s": first_call_s,
        "peak_extra_bytes": peak_extra,
        "memory_method": "torch.cuda.max_memory_allocated growth over one call",
        "minimal_bytes": moved,
        "achieved_bytes_per_s": moved / seconds,
        "bandwidth_fraction_of_copy": moved / seconds / settings["copy_bytes_per_s"],
        **timing,
    }


# --- the run ---------------------------------------------------------------------------------------------


def key_cases() -> list[Case]:
    """The three comparisons the project's targets are written against."""
    cases = []
    for impl in ("jdrl_ext", "materialized"):
        cases.append(Case("reblur", impl, "fwdbwd", 1, 256, 256, "float32"))
    for impl in ("jdrl_ext", "materialized"):
        cases.append(Case("reblur", impl, "fwdbwd", 1, 512, 512, "float32"))
    for impl in ("jdrl_ext", "grid_sample"):
        cases.append(Case("flow_warp", impl, "fwdbwd", 1, 512, 512, "float32"))
    return cases


def build_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    ops = common.parse_list(args.ops, OPS, "ops")
    impls = common.parse_list(args.impls, IMPLEMENTATIONS, "impls")
    modes = common.parse_list(args.modes, MODES, "modes")
    sizes = [common.parse_size(text) for text in common.parse_list(args.sizes, None, "sizes")]
    batches = [int(text) for text in common.parse_list(args.batches, None, "batches")]
    dtypes = common.parse_list(args.dtypes or ("float32,bfloat16" if device.type == "cuda" else "float32"), tuple(DTYPES), "dtypes")
    cases = []
    for height, width in sizes:
        for batch in batches:
            for dtype in dtypes:
                for op in OPS:
                    if op not in ops:
                        continue
                    for mode in MODES:
                        if mode not in modes:
                            continue
                        for impl in ("jdrl_ext",) + BASELINES[op]:
                            if impl in impls:
                                cases.append(Case(op, impl, mode, batch, height, width, dtype))
    # jdrl_ext and the practical baselines (materialized, grid_sample) first, then the pure-PyTorch
    # references, whose slowest cases (sv_conv's backward: ~40 s at 256x256 here) would otherwise eat
    # the budget before the larger sizes. Within each pass the smallest work first: the budget then
    # cuts the largest cases, and every estimate can lean on a smaller measured case of its kind.
    cases.sort(key=lambda case: (case.impl == "reference", case.pixels, case.height * case.width, case.dtype))
    return cases


def table_order(case: Case) -> tuple:
    """Rows of the final table: by size, then op, mode and implementation."""
    return (
        case.pixels,
        case.height * case.width,
        case.dtype,
        OPS.index(case.op),
        MODES.index(case.mode),
        IMPLEMENTATIONS.index(case.impl),
    )


class Estimator:
    """Memory and time of a case, from formulas and from the measured cases of the same kind."""

    def __init__(self, device: torch.device) -> None:
        # On CUDA a first call can carry one-time costs (library handles, kernel caches) worth
        # hundreds of calls; on the CPU (after the tiny warm-up) it is one more sample.
        self.trust_first_call = device.type == "cpu"
        self.seconds_per_pixel: dict[tuple, float] = {}
        self.extra_bytes_per_pixel: dict[tuple, float] = {}

    def learn(self, case: Case, result: dict) -> None:
        if result.get("status") != "ok":
            return
        first_call = result.get("first_call_s", 0) * 0.5 if self.trust_first_call else 0.0
        self.seconds_per_pixel[case.kind] = max(result["median_s"], first_call) / case.pixels
        self.extra_bytes_per_pixel[case.kind] = max(result["peak_extra_bytes"], 0) / case.pixels

    def needed_bytes(self, case: Case) -> int:
        itemsize = common_dtype(case.dtype).itemsize
        inputs = input_elements(case) * itemsize
        largest_input = max(INPUT_CHANNELS[case.op].values()) * case.pixels * itemsize * (2 if case.mode == "fwdbwd" else 1)
        if case.kind in self.extra_bytes_per_pixel:
            extra = 1.15 * self.extra_bytes_per_pixel[case.kind] * case.pixels
        else:
            extra = formula_extra_elements_per_pixel(case) * case.pixels * itemsize
        # The inputs, the peak of the call, and the temporaries of making the largest input.
        return int(inputs + max(extra, largest_input))

    def seconds(self, case: Case, min_run_time: float, slow_repeats: int) -> float | None:
        rate = self.seconds_per_pixel.get(case.kind)
        if rate is None:
            return None
        call = rate * case.pixels
        if call * 3 <= min_run_time:
            timing = 1.3 * min_run_time + 2 * call
        else:
            timing = (1 if call > 10 else slow_repeats) * call
        return call + timing


# Below this, a peak-RSS growth is page and allocator noise (a freed block reused), not a size.
MEMORY_RATIO_FLOOR_BYTES = 64 * 1024


def memory_ratio_or_none(baseline_bytes: int, fast_bytes: int) -> float | None:
    """``baseline / jdrl_ext`` peak extra memory, or None where jdrl_ext's is too small to divide by."""
    if fast_bytes < MEMORY_RATIO_FLOOR_BYTES:
        return None
    return baseline_bytes / fast_bytes


def result_row(case: Case, result: dict, fast: dict | None, device: torch.device) -> list[str]:
    status = result.get("status")
    row = [case.op, case.mode, case.shape, case.dtype, case.impl]
    if status != "ok":
        return row + [result.get("message", status)]
    row += [common.format_seconds(result["median_s"]), str(result["runs"]), common.format_bytes(result["peak_extra_bytes"])]
    if case.impl != "jdrl_ext" and fast is not None and fast.get("status") == "ok":
        time_ratio = result["median_s"] / fast["median_s"]
        memory_ratio = memory_ratio_or_none(result["peak_extra_bytes"], fast["peak_extra_bytes"])
        memory = f"{memory_ratio:.1f}x mem" if memory_ratio is not None else "mem n/a"
        row.append(f"{time_ratio:.2f}x time, {memory}")
    else:
        row.append("")
    if device.type == "cuda":
        row.append(f"{result['achieved_bytes_per_s'] / 1e9:.0f} GB/s ({100 * result['bandwidth_fraction_of_copy']:.0f}%)")
    return row


def attach_ratios(records: list[dict]) -> None:
    """Each baseline record gets ``baseline / jdrl_ext`` ratios of time and memory from this run."""
    fast_by_group = {
        tuple(record["case"][k] for k in ("op", "mode", "batch", "height", "width", "dtype")): record
        for record in records
        if record["case"]["impl"] == "jdrl_ext" and record["result"].get("status") == "ok"
    }
    for record in records:
        group = tuple(record["case"][k] for k in ("op", "mode", "batch", "height", "width", "dtype"))
        fast = fast_by_group.get(group)
        result = record["result"]
        if record["case"]["impl"] == "jdrl_ext" or fast is None or result.get("status") != "ok":
            continue
        result["time_ratio_vs_jdrl_ext"] = result["median_s"] / fast["result"]["median_s"]
        result["memory_ratio_vs_jdrl_ext"] = memory_ratio_or_none(result["peak_extra_bytes"], fast["result"]["peak_extra_bytes"])


def key_summary(records: list[dict]) -> list[str]:
    def find(op: str, impl: str, size: int) -> dict | None:
        for record in records:
            c = record["case"]
            if (c["op"], c["impl"], c["mode"], c["batch"], c["height"], c["width"], c["dtype"]) == (
                op, impl, "fwdbwd", 1, size, size, "float32"
            ) and record["result"].get("status") == "ok":
                return record["result"]
        return None

    lines = []
    fast, slow = find("reblur", "jdrl_ext", 256), find("reblur", "materialized", 256)
    if fast and slow:
        ratio = slow["median_s"] / fast["median_s"]
        lines.append(
            f"reblur fwd+bwd 1x3x256x256 m=8: jdrl_ext {common.format_seconds(fast['median_s'])}, "
            f"materialized {common.format_seconds(slow['median_s'])}: {ratio:.1f}x faster "
            f"(target >= 20x: {'met' if ratio >= 20 else 'NOT met'})"
        )
    fast, slow = find("reblur", "jdrl_ext", 512), find("reblur", "materialized", 512)
    if fast and slow:
        lines.append(
            f"reblur fwd+bwd 1x3x512x512 m=8 peak extra memory: jdrl_ext {common.format_bytes(fast['peak_extra_bytes'])}, "
            f"materialized {common.format_bytes(slow['peak_extra_bytes'])} "
            f"(target jdrl_ext < 200 MB: {'met' if fast['peak_extra_bytes'] < 200e6 else 'NOT met'}; "
            f"times {common.format_seconds(fast['median_s'])} vs {common.format_seconds(slow['median_s'])})"
        )
    fast, slow = find("flow_warp", "jdrl_ext", 512), find("flow_warp", "grid_sample", 512)
    if fast and slow:
        ratio = slow["median_s"] / fast["median_s"]
        lines.append(
            f"flow_warp fwd+bwd 1x3x512x512: jdrl_ext {common.format_seconds(fast['median_s'])}, "
            f"grid_sample {common.format_seconds(slow['median_s'])}: {ratio:.2f}x "
            f"(target >= 1x: {'met' if ratio >= 1 else 'NOT met'})"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {', '.join(OPS)}")
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS), help=f"subset of {', '.join(IMPLEMENTATIONS)}")
    parser.add_argument("--modes", default=",".join(MODES), help="fwd (forward only) and/or fwdbwd (forward + backward)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="WIDTHxHEIGHT list (default: %(default)s)")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default: %(default)s)")
    parser.add_argument("--dtypes", default=None, help="default float32 on the CPU, float32,bfloat16 on CUDA")
    parser.add_argument("--key", action="store_true", help="only the three headline comparisons (reblur 256/512, flow_warp 512)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for the whole run (default CPU 540, CUDA 150)")
    parser.add_argument("--case-budget", type=float, default=None, help="seconds for one case (default CPU 90, CUDA 20; 4x that with --key)")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds of timed calls per case (default CPU 1.0, CUDA 0.25)")
    parser.add_argument("--slow-repeats", type=int, default=3, help="timed calls of a case slower than min-run-time/3")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2: this machine's cores)")
    parser.add_argument("--memory-fraction", type=float, default=0.8, help="share of the free memory a case may use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="where to write the results (default out/bench_ops_<device>.json, git-ignored)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    on_cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    time_budget = args.time_budget if args.time_budget is not None else (150.0 if on_cuda else 540.0)
    default_case_budget = (20.0 if on_cuda else 90.0) * (4 if args.key else 1)  # --key must reach materialized 512
    case_budget = args.case_budget if args.case_budget is not None else default_case_budget
    min_run_time = args.min_run_time if args.min_run_time is not None else (0.25 if on_cuda else 1.0)
    json_path = Path(args.json) if args.json else common.REPO_ROOT / "out" / f"bench_ops_{device.type}.json"
    cases = key_cases() if args.key else build_cases(args, device)
    if not on_cuda and any(case.dtype in ("bfloat16", "float16") for case in cases):
        raise SystemExit("--dtypes: jdrl_ext's CPU kernels take float32 and float64 only; bfloat16/float16 are CUDA-only")

    facts = common.machine_facts(device, args.threads)
    settings = {
        "threads": args.threads,
        "min_run_time": min_run_time,
        "slow_repeats": args.slow_repeats,
        "seed": args.seed,
        "case_budget": case_budget,
    }
    if on_cuda:
        copy = common.cuda_copy_bandwidth(device)
        settings["copy_bytes_per_s"] = copy["bytes_per_s"]
        facts["cuda_copy_bandwidth_gb_per_s"] = round(copy["bytes_per_s"] / 1e9, 1)
    print(common.facts_header(facts))
    print(
        f"ops: reblur m = {LEVELS} (seeds {SEED_CHANNELS} ch, weights {LEVELS} ch, support window, padding replicate); "
        f"isotropic_kernels / sv_conv radius {RADIUS} (K = {2 * RADIUS + 1}, {TAPS} taps); flow_warp padding border, "
        "smooth random flow (std 4 px)"
    )
    print(
        f"budgets: run {time_budget:.0f} s, case {case_budget:.0f} s; min run time {min_run_time} s; "
        f"{'CUDA events' if on_cuda else 'blocked_autorange median, fresh process per case (peak RSS)'}"
        + (f"; device copy bandwidth {facts['cuda_copy_bandwidth_gb_per_s']} GB/s (read + write)" if on_cuda else "")
    )
    print(f"{len(cases)} cases; JSON -> {json_path}\n", flush=True)

    estimator = Estimator(device)
    records: list[dict] = []
    fast_results: dict[tuple, dict] = {}
    rows: list[tuple[tuple, list[str]]] = []
    run_started = time.perf_counter()
    header = ["op", "mode", "shape", "dtype", "impl", "median", "runs", "peak extra mem", "baseline / jdrl_ext"]
    if on_cuda:
        header.append("bandwidth (% of copy)")

    def payload() -> dict:
        return {
            "benchmark": "bench_ops",
            "machine": facts,
            "settings": {
                **settings,
                "time_budget_s": time_budget,
                "case_budget_s": case_budget,
                "levels_m": LEVELS,
                "radius_isotropic_sv_conv": RADIUS,
                "taps": TAPS,
                "reblur_options": {"support": "window", "padding_mode": "replicate"},
                "flow_warp_options": {"padding_mode": "border"},
                "command": " ".join(sys.argv),
            },
            "results": records,
            "key_numbers": key_summary(records),
        }

    for case in cases:
        elapsed = time.perf_counter() - run_started
        remaining = time_budget - elapsed
        needed = estimator.needed_bytes(case)
        available = int(common.available_memory_bytes(device) * args.memory_fraction)
        estimate = estimator.seconds(case, min_run_time, args.slow_repeats)
        if needed > available:
            result = {
                "status": "memory",
                "message": f"does not fit in memory (needs ~{needed / 1e9:.1f} GB, {available / 1e9:.1f} GB available)",
                "needed_bytes": needed,
            }
        elif estimate is not None and (estimate > case_budget or estimate > remaining):
            result = {
                "status": "time",
                "message": f"skipped: over time budget (est. {estimate:.0f} s; case budget {case_budget:.0f} s, {max(remaining, 0):.0f} s left)",
                "estimated_s": estimate,
            }
        elif remaining <= 0:
            result = {"status": "time", "message": "skipped: over time budget (run budget spent)"}
        elif on_cuda:
            gc.collect()  # what a failed case left behind
            torch.cuda.empty_cache()
            try:
                result = run_case_cuda(case, device, settings)
            except Exception as error:  # noqa: BLE001  (one failing op, e.g. without a CUDA kernel, must not stop the run)
                result = {"status": "error", "error": f"{type(error).__name__}: {str(error)[:300]}"}
                torch.cuda.empty_cache()
        else:
            child_settings = {**settings, "memory_limit_bytes": available}
            hard_limit = max(5.0, min(remaining, 1.5 * case_budget))
            result, wall = common.run_in_fresh_process(run_case_cpu, (asdict(case), child_settings), hard_limit)
            if result.get("status") == "timeout":
                result["message"] = f"skipped: over time budget (stopped after {wall:.0f} s)"
            result["wall_s"] = wall
        if result.get("status") == "memory" and "message" not in result:
            result["message"] = f"does not fit in memory (needs ~{needed / 1e9:.1f} GB; {result.get('error', '')})"
        if result.get("status") == "died" and result.get("exitcode") == -9:
            result["message"] = "does not fit in memory (the case's process was killed, SIGKILL: most likely the OOM killer)"
        if result.get("status") in ("error", "died") and "message" not in result:
            result["message"] = f"error: {result.get('error', 'child exited with ' + str(result.get('exitcode')))}"
        result.setdefault("estimated_needed_bytes", needed)
        estimator.learn(case, result)
        if case.impl == "jdrl_ext":
            fast_results[case.group] = result
        rows.append((table_order(case), result_row(case, result, fast_results.get(case.group), device)))
        print(common.render_table(header, [rows[-1][1]]).splitlines()[-1], flush=True)
        records.append({"case": asdict(case), "result": {k: v for k, v in result.items() if k != "traceback"}})
        attach_ratios(records)
        common.write_json(json_path, payload())

    facts["load_average_at_end"] = common.load_average()
    facts["run_seconds"] = round(time.perf_counter() - run_started, 1)
    common.write_json(json_path, payload())
    print()
    print(common.render_table(header, [row for _, row in sorted(rows, key=lambda item: item[0])]))
    print("\n'baseline / jdrl_ext': how many times longer / more memory the baseline takes than jdrl_ext on the same case.")
    print(f"load average at end {facts['load_average_at_end']}; run took {facts['run_seconds']} s; JSON: {json_path}")
    for line in key_summary(records):
        print("KEY " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
