"""Seconds per training step of the whole framework, split into its parts.

One step is what ``jdrl.train`` does per batch: the deblurring network ``F`` (``build_deblur_net``),
the loss ``jdrl.losses.JDRLLoss`` (flow estimation, flow warps and Charbonnier terms, the reblurring
network ``ReblurNet`` with the fused ``jdrl_ext.reblur``, the pseudo defocus map), the backward pass
and an Adam step over both networks (lr 2e-5, betas 0.9/0.999, eps 1e-8, as paper section 4.1). On
CUDA the deblurring net runs under bf16 autocast as ``jdrl.train`` does by default (``--no-amp``
turns that off); the loss stays float32.

The parts are timed with explicit synchronization (``torch.cuda.synchronize`` and ``perf_counter``
on CUDA, ``perf_counter`` on the CPU):

- forward: ``F``; the flow estimator (every call, wrapped); ``ReblurNet`` without the op; the op
  (``ReblurNet.blur``: ``jdrl_ext.reblur`` with the colour transfer around it, linear light by
  default); the rest of the loss ("losses": warps, masks, Charbonnier, B_P).
- backward: split into separate ``autograd.backward`` calls at the boundaries of those parts (each
  part's outputs are detached into leaves in the forward, and their gradients are pushed back part
  by part in the reverse order). The gradients are the same as one ``total.backward()``.
- the optimizer step.

With the default ``loss.reblur_anchor`` R fits the flow-aligned sharp target and ``L_R`` reblurs
``I_hat`` with R's seeds and weights as constants: against Eq. 2's step, one more op (``ReblurNet.blur``
of ``I_hat``, timed and cut like the forward's) and, from ``--epoch 15`` on, one more flow estimate
(``I_S`` onto ``I_B``; during the warm-up the fit reuses ``L_D``'s warp).

An uninstrumented step (one ``total.backward()``, no cuts, no wrappers) is timed too, so the
overhead of the split is visible. Data: crops of scikit-image's astronaut photo; the "sharp" target
is misaligned by a smooth warp of up to ~3 px and the "blurry" input is a Gaussian blur (sigma 2).

Each configuration (preset x size) runs in a fresh process on the CPU (peak RSS growth over the
steps, hard time limit), in-process on CUDA (``max_memory_allocated``). A configuration whose
estimated time or memory exceeds the budget prints "skipped: over time budget" / "does not fit in
memory (needs ~X GB)".

Examples::

    python benchmarks/bench_train.py                                  # small + paper, 256 and 512
    python benchmarks/bench_train.py --presets small --sizes 256x256 --steps 5
    python benchmarks/bench_train.py --device cuda --json out/bench_train_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import jdrl_ext

# The parts, in the order of a step; the "sum of parts" row adds them.
PARTS = (
    "deblur net fwd",
    "flow estimation",
    "reblur net fwd (without op)",
    "reblur op fwd",
    "losses fwd",
    "losses bwd",
    "reblur op bwd",
    "reblur net bwd",
    "deblur net bwd",
    "optimizer step",
)


@dataclass(frozen=True)
class TrainCase:
    arch: str
    preset: str
    batch: int
    height: int
    width: int
    levels: int

    @property
    def pixels(self) -> int:
        return self.batch * self.height * self.width

    @property
    def label(self) -> str:
        return f"{self.preset} {self.batch}x3x{self.height}x{self.width}"


# --- timing instruments ------------------------------------------------------------------------------


class PartTimer:
    """Accumulates synchronized wall time per part label within one step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        common.synchronize(self.device)
        started = time.perf_counter()
        try:
            yield
        finally:
            common.synchronize(self.device)
            self.seconds[label] += time.perf_counter() - started


class BackwardCuts:
    """Splits one backward pass into parts that can be timed one by one.

    ``cut(label, tensors)`` returns detached leaf copies of ``tensors`` for the next part to use and
    remembers that the graph that produced ``tensors`` is the part ``label``. ``backward`` runs the
    loss's backward (the last part), then each cut in reverse order, feeding the gradients that
    reached the leaves back into the originals: by the chain rule the parameter gradients are those
    of one backward pass.
    """

    def __init__(self) -> None:
        self.cuts: list[tuple[str, list[torch.Tensor | None], list[torch.Tensor | None]]] = []

    def cut(self, label: str, tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        leaves = [
            tensor.detach().requires_grad_() if tensor is not None and tensor.requires_grad else tensor for tensor in tensors
        ]
        self.cuts.append((label, list(tensors), leaves))
        return leaves

    def backward(self, loss: torch.Tensor, loss_label: str, timer: PartTimer) -> None:
        with timer(loss_label):
            loss.backward()
        for label, originals, leaves in reversed(self.cuts):
            pairs = [
                (original, leaf.grad)
                for original, leaf in zip(originals, leaves)
                if original is not None and original.requires_grad and leaf is not original and leaf.grad is not None
            ]
            if pairs:
                with timer(label):
                    torch.autograd.backward([original for original, _ in pairs], [grad for _, grad in pairs])


class TimedFlow:
    """A flow estimator whose calls are timed as "flow estimation"."""

    def __init__(self, estimator: Any, timer: PartTimer) -> None:
        self.estimator = estimator
        self.timer = timer

    def __call__(self, reference: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        with self.timer("flow estimation"):
            return self.estimator(reference, moving)


class TimedReblurNet(nn.Module):
    """Wraps a ``ReblurNet``: times its forward and its ``blur`` and cuts the graph where R's
    outputs leave it and where the op's output leaves the op.

    The forward is ``ReblurNet.predict`` (seeds, weights, level logits), cut there: the "reblur net
    bwd" part ends at those three, so the penalties on the seeds and logits, the op and everything
    after them push their gradients into R in one backward. Then the op, ``ReblurNet.blur``
    (``jdrl_ext.reblur`` and the colour transfer around it), timed as "reblur op fwd" and cut at its
    output: the "reblur op bwd" part. The anchored ``L_R`` (``loss.reblur_anchor``) calls ``blur``
    alone, with R's seeds and weights as constants.
    """

    def __init__(self, inner: nn.Module, timer: PartTimer, cuts_holder: dict) -> None:
        super().__init__()
        self.inner = inner
        self.timer = timer
        self.cuts_holder = cuts_holder  # {"cuts": BackwardCuts of the current step}

    def forward(self, sharp_est: torch.Tensor, blurry: torch.Tensor) -> Any:
        from jdrl.models import ReblurOutput

        cuts: BackwardCuts = self.cuts_holder["cuts"]
        with self.timer("reblur net fwd (with op)"):
            seeds, weights, level_logits = self.inner.predict(sharp_est, blurry)
            seeds, weights, level_logits = cuts.cut("reblur net bwd", [seeds, weights, level_logits])
            reblurred = self._timed_blur(sharp_est, seeds, weights)
        return ReblurOutput(reblurred, seeds, weights, level_logits)

    def blur(self, image: torch.Tensor, seeds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        with self.timer("reblur net fwd (with op)"):
            return self._timed_blur(image, seeds, weights)

    def _timed_blur(self, image: torch.Tensor, seeds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        with self.timer("reblur op fwd"):
            out = self.inner.blur(image, seeds, weights)
        (out,) = self.cuts_holder["cuts"].cut("reblur op bwd", [out])
        return out


# --- data ---------------------------------------------------------------------------------------------


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous(), groups=channels)
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous(), groups=channels)


def make_batch(case: TrainCase, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blurry, sharp)``, each ``(B, 3, H, W)`` in [0, 1]: photo crops, blurred / misaligned."""
    import skimage.data

    generator = torch.Generator().manual_seed(seed)
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    scale = max(case.height / photo.shape[2], case.width / photo.shape[3], 1.0)
    if scale > 1:
        photo = F.interpolate(photo, scale_factor=scale * 1.01, mode="bilinear", align_corners=False).clamp(0, 1)
    crops = []
    for _ in range(case.batch):
        top = int(torch.randint(0, photo.shape[2] - case.height + 1, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[3] - case.width + 1, (1,), generator=generator))
        crops.append(photo[:, :, top : top + case.height, left : left + case.width])
    images = torch.cat(crops)
    coarse = torch.randn(case.batch, 2, 4, 4, generator=generator) * 1.5
    flow = F.interpolate(coarse, size=(case.height, case.width), mode="bicubic", align_corners=True)
    sharp = jdrl_ext.flow_warp(images, flow.contiguous())
    blurry = gaussian_blur(images, 2.0)
    return blurry.contiguous().to(device), sharp.contiguous().to(device)


# --- one configuration --------------------------------------------------------------------------------


def build(case: TrainCase, device: torch.device, flow_backend: str, flow_weights: str | None, loss_config: Any = None) -> dict:
    """The networks, the timed and the plain loss and the optimizer of one configuration;
    ``loss_config`` (a ``LossConfig``) defaults to today's defaults with ``reblur_after_warmup``
    off."""
    from jdrl.flow import build_flow_estimator
    from jdrl.losses import JDRLLoss, LossConfig, build_reblur_net
    from jdrl.models import build_deblur_net

    torch.manual_seed(0)
    # Every timed step includes the reblurring net, whatever --epoch says about the flow's anchor.
    loss_config = loss_config if loss_config is not None else LossConfig(reblur_after_warmup=False)
    deblur_net = build_deblur_net(case.arch, case.preset, case.levels).to(device)
    reblur_net = build_reblur_net(loss_config, case.levels).to(device)
    flow_estimator = build_flow_estimator(flow_backend, flow_weights)
    timer = PartTimer(device)
    cuts_holder: dict = {"cuts": BackwardCuts()}
    timed_loss = JDRLLoss(
        loss_config, TimedFlow(flow_estimator, timer), case.levels, reblur_net=TimedReblurNet(reblur_net, timer, cuts_holder)
    )
    plain_loss = JDRLLoss(loss_config, flow_estimator, case.levels, reblur_net=reblur_net)
    parameters = list(deblur_net.parameters()) + list(reblur_net.parameters())
    optimizer = torch.optim.Adam(parameters, lr=2e-5, betas=(0.9, 0.999), eps=1e-8)
    return {
        "deblur_net": deblur_net,
        "reblur_net": reblur_net,
        "timed_loss": timed_loss,
        "plain_loss": plain_loss,
        "optimizer": optimizer,
        "timer": timer,
        "cuts_holder": cuts_holder,
        "loss_config": loss_config,
        "deblur_parameters": sum(p.numel() for p in deblur_net.parameters()),
        "reblur_parameters": sum(p.numel() for p in reblur_net.parameters()),
    }


def deblur_forward(parts: dict, blurry: torch.Tensor, amp: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        output = parts["deblur_net"](blurry)
    sharp_est = output.sharp.float()
    defocus_map = output.defocus_map.float() if output.defocus_map is not None else None
    return sharp_est, defocus_map


def instrumented_step(parts: dict, blurry: torch.Tensor, sharp: torch.Tensor, epoch: int, amp: bool, device: torch.device) -> dict[str, float]:
    timer: PartTimer = parts["timer"]
    timer.seconds.clear()
    cuts = BackwardCuts()
    parts["cuts_holder"]["cuts"] = cuts
    optimizer = parts["optimizer"]
    optimizer.zero_grad(set_to_none=True)
    with timer("deblur net fwd"):
        sharp_est, defocus_map = deblur_forward(parts, blurry, amp, device)
    sharp_est, defocus_map = cuts.cut("deblur net bwd", [sharp_est, defocus_map])
    with timer("loss fwd (all)"), torch.autocast(device.type, enabled=False):
        losses = parts["timed_loss"](blurry, sharp, sharp_est, defocus_map, epoch)
    cuts.backward(losses.total, "losses bwd", timer)
    with timer("optimizer step"):
        optimizer.step()
    seconds = dict(timer.seconds)
    # Nested timers: the op inside ReblurNet, ReblurNet and the flow inside the loss.
    seconds["reblur net fwd (without op)"] = seconds.pop("reblur net fwd (with op)", 0.0) - seconds.get("reblur op fwd", 0.0)
    seconds["losses fwd"] = (
        seconds.pop("loss fwd (all)")
        - seconds.get("flow estimation", 0.0)
        - seconds["reblur net fwd (without op)"]
        - seconds.get("reblur op fwd", 0.0)
    )
    return seconds


def plain_step(parts: dict, blurry: torch.Tensor, sharp: torch.Tensor, epoch: int, amp: bool, device: torch.device) -> float:
    optimizer = parts["optimizer"]
    common.synchronize(device)
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    sharp_est, defocus_map = deblur_forward(parts, blurry, amp, device)
    with torch.autocast(device.type, enabled=False):
        losses = parts["plain_loss"](blurry, sharp, sharp_est, defocus_map, epoch)
    losses.total.backward()
    optimizer.step()
    common.synchronize(device)
    return time.perf_counter() - started


def measure(case: TrainCase, device: torch.device, settings: dict) -> dict:
    """Build, warm up, and time ``steps`` instrumented and ``steps`` plain steps."""
    measure_started = time.perf_counter()  # the CPU's child process is stopped at the budget from here
    parts = build(case, device, settings["flow_backend"], settings["flow_weights"])
    blurry, sharp = make_batch(case, device, settings["seed"])
    amp = settings["amp"] and device.type == "cuda"
    epoch = settings["epoch"]
    steps_left = settings["warmup"] * 2 + settings["steps"] * 2 - 1

    def timed_instrumented_step() -> float:
        started = time.perf_counter()
        instrumented_step(parts, blurry, sharp, epoch, amp, device)
        return time.perf_counter() - started

    first_step_s = timed_instrumented_step()
    step_s, which = first_step_s, "the first step"
    budget = settings["case_budget"]
    if first_step_s * steps_left > budget and (device.type == "cuda" or 2 * first_step_s <= budget):
        # The first step pays one-time costs (on CUDA: the library handles, autotuning, lazy kernel
        # loading; on an H200 the first step of `small` at 256x256 took 11-13 s): estimate from a
        # second. (On the CPU, where a child process is stopped at the budget, only if two fit.)
        step_s = timed_instrumented_step()  # an extra step: the steps_left still follow it
        which = f"the first step took {first_step_s:.0f} s, the second"
    spent_s = time.perf_counter() - measure_started
    if spent_s + step_s * steps_left > budget:
        # Say what one step costs instead of running into the hard time limit.
        return {
            "status": "time",
            "message": (
                f"skipped: over time budget ({which} took {step_s:.0f} s; {steps_left} more "
                f"would take ~{step_s * steps_left:.0f} s, after {spent_s:.0f} s spent, > {budget:.0f} s)"
            ),
            "first_step_s": first_step_s,
            "step_s": step_s,  # the step the estimate came from (the second, where one was timed)
        }
    plain_step(parts, blurry, sharp, epoch, amp, device)
    for _ in range(settings["warmup"] - 1):
        instrumented_step(parts, blurry, sharp, epoch, amp, device)
        plain_step(parts, blurry, sharp, epoch, amp, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        memory_before = torch.cuda.memory_allocated(device)
    per_part: dict[str, list[float]] = defaultdict(list)
    plain: list[float] = []
    for _ in range(settings["steps"]):
        for label, seconds in instrumented_step(parts, blurry, sharp, epoch, amp, device).items():
            per_part[label].append(seconds)
        plain.append(plain_step(parts, blurry, sharp, epoch, amp, device))
    medians = {label: statistics.median(values) for label, values in per_part.items()}
    result = {
        "status": "ok",
        "parts_median_s": {label: medians.get(label, 0.0) for label in PARTS},
        "sum_of_parts_s": sum(medians.get(label, 0.0) for label in PARTS),
        "plain_step_median_s": statistics.median(plain),
        "plain_step_all_s": plain,
        "steps": settings["steps"],
        "warmup_steps": settings["warmup"],
        "deblur_parameters": parts["deblur_parameters"],
        "reblur_parameters": parts["reblur_parameters"],
        "amp_bf16_deblur_net": amp,
        "flow_estimator": repr(parts["timed_loss"].flow_estimator.estimator),
    }
    if device.type == "cuda":
        result["peak_extra_bytes"] = torch.cuda.max_memory_allocated(device) - memory_before
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["memory_method"] = "torch.cuda.max_memory_allocated over the measured steps (models, data, optimizer state already allocated)"
    return result


def run_case_cpu(case_fields: dict, settings: dict) -> dict:
    """In a fresh child: limit memory, measure, and report the peak RSS over the whole run."""
    torch.set_num_threads(settings["threads"])
    common.limit_address_space(settings["memory_limit_bytes"])
    common.reset_peak_rss()
    before = common.peak_rss_bytes()
    try:
        result = measure(TrainCase(**case_fields), torch.device("cpu"), settings)
    except (RuntimeError, MemoryError) as error:
        if "alloc" in str(error).lower() or isinstance(error, MemoryError):
            return {"status": "memory", "error": f"{type(error).__name__}: {str(error)[:200]}"}
        raise
    result["peak_extra_bytes"] = common.peak_rss_bytes() - before
    result["memory_method"] = "ru_maxrss growth over build + warm-up + measured steps, fresh process"
    return result


# --- the run ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--arch", default="jdrl", help="deblurring network: jdrl (default) or unet")
    parser.add_argument("--presets", default="small,paper", help="comma-separated presets (default: %(default)s)")
    parser.add_argument("--sizes", default="256x256,512x512", help="WIDTHxHEIGHT list (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (the paper trains with 1)")
    parser.add_argument("--levels", type=int, default=8, help="blur levels m")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per configuration (default CPU 2, CUDA 10)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps, at least 1 (default CPU 1, CUDA 3)")
    parser.add_argument("--epoch", type=int, default=0, help="epoch passed to the loss (< 15: flow against the blurry input)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast of F on CUDA")
    parser.add_argument("--flow", default="dis", help="flow backend: dis (default) or torchscript")
    parser.add_argument("--flow-weights", default=None, help="TorchScript flow model for --flow torchscript")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds for the whole run (default CPU 540, CUDA 180)")
    parser.add_argument("--case-budget", type=float, default=None, help="seconds per configuration (default CPU 300, CUDA 90)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2: this machine's cores)")
    parser.add_argument("--memory-fraction", type=float, default=0.8, help="share of the free memory a configuration may use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="where to write the results (default out/bench_train_<device>.json, git-ignored)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    on_cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    steps = args.steps if args.steps is not None else (10 if on_cuda else 2)
    warmup = max(1, args.warmup if args.warmup is not None else (3 if on_cuda else 1))
    time_budget = args.time_budget if args.time_budget is not None else (180.0 if on_cuda else 540.0)
    case_budget = args.case_budget if args.case_budget is not None else (90.0 if on_cuda else 300.0)
    json_path = Path(args.json) if args.json else common.REPO_ROOT / "out" / f"bench_train_{device.type}.json"
    presets = common.parse_list(args.presets, None, "presets")
    sizes = [common.parse_size(text) for text in common.parse_list(args.sizes, None, "sizes")]
    cases = [TrainCase(args.arch, preset, args.batch, height, width, args.levels) for preset in presets for height, width in sizes]
    settings = {
        "threads": args.threads,
        "steps": steps,
        "warmup": warmup,
        "epoch": args.epoch,
        "amp": args.amp,
        "flow_backend": args.flow,
        "flow_weights": args.flow_weights,
        "seed": args.seed,
        "case_budget": case_budget,
    }
    facts = common.machine_facts(device, args.threads)
    print(common.facts_header(facts))
    print(
        f"training step: arch {args.arch}, levels m = {args.levels}, batch {args.batch}, flow {args.flow}, "
        f"Adam lr 2e-5, epoch {args.epoch}, bf16 autocast of F: {args.amp and on_cuda}; "
        f"{warmup} warm-up + {steps} measured steps per configuration (median per part)"
    )
    print(f"budgets: run {time_budget:.0f} s, configuration {case_budget:.0f} s; JSON -> {json_path}\n", flush=True)

    records: list[dict] = []
    seconds_per_pixel: dict[str, float] = {}
    bytes_per_pixel: dict[str, float] = {}
    run_started = time.perf_counter()

    def payload() -> dict:
        return {
            "benchmark": "bench_train",
            "machine": facts,
            "settings": {**settings, "time_budget_s": time_budget, "case_budget_s": case_budget, "command": " ".join(sys.argv)},
            "results": records,
        }

    for case in cases:
        remaining = time_budget - (time.perf_counter() - run_started)
        available = int(common.available_memory_bytes(device) * args.memory_fraction)
        estimate = None
        if case.preset in seconds_per_pixel:
            estimate = seconds_per_pixel[case.preset] * case.pixels * (warmup + steps) * 2 + 10
        needed = bytes_per_pixel[case.preset] * case.pixels * 1.2 if case.preset in bytes_per_pixel else None
        if needed is not None and needed > available:
            result = {"status": "memory", "message": f"does not fit in memory (needs ~{needed / 1e9:.1f} GB, {available / 1e9:.1f} GB available)"}
        elif estimate is not None and (estimate > case_budget or estimate > remaining):
            result = {
                "status": "time",
                "message": f"skipped: over time budget (est. {estimate:.0f} s; configuration budget {case_budget:.0f} s, {max(remaining, 0):.0f} s left)",
            }
        elif remaining <= 0:
            result = {"status": "time", "message": "skipped: over time budget (run budget spent)"}
        elif on_cuda:
            try:
                result = measure(case, device, settings)
            except torch.cuda.OutOfMemoryError as error:
                result = {"status": "memory", "message": f"does not fit in memory ({str(error)[:160]})"}
            except Exception as error:  # noqa: BLE001  (report it and go on with the next configuration)
                result = {"status": "error", "message": f"error: {type(error).__name__}: {str(error)[:300]}"}
            torch.cuda.empty_cache()
        else:
            child_settings = {**settings, "memory_limit_bytes": available}
            # The child stops by itself after one step that shows the rest would not fit; this limit
            # only catches a first step longer than the whole configuration budget.
            hard_limit = max(10.0, min(remaining, case_budget))
            result, wall = common.run_in_fresh_process(run_case_cpu, (asdict(case), child_settings), hard_limit)
            result["wall_s"] = wall
            if result.get("status") == "timeout":
                result["message"] = f"skipped: over time budget (stopped after {wall:.0f} s)"
            elif result.get("status") == "memory":
                result["message"] = f"does not fit in memory ({result.get('error', '')})"
            elif result.get("status") == "died":
                result["message"] = f"error: process died with exit code {result.get('exitcode')} (-9: most likely out of memory)"
            elif result.get("status") == "error":
                result["message"] = f"error: {result.get('error')}"
        if result.get("step_s") is not None:  # a configuration that stopped after one or two steps
            seconds_per_pixel[case.preset] = result["step_s"] / case.pixels
        if result.get("status") == "ok":
            seconds_per_pixel[case.preset] = result["plain_step_median_s"] / case.pixels
            bytes_per_pixel[case.preset] = max(result.get("peak_extra_bytes", 0), 0) / case.pixels
            print(f"{case.label}: step {common.format_seconds(result['plain_step_median_s'])} "
                  f"(sum of parts {common.format_seconds(result['sum_of_parts_s'])}), peak extra memory "
                  f"{common.format_bytes(result.get('peak_extra_bytes'))}", flush=True)
        else:
            print(f"{case.label}: {result.get('message')}", flush=True)
            if result.get("traceback"):
                print(result["traceback"], file=sys.stderr)
        records.append({"case": asdict(case), "result": {k: v for k, v in result.items() if k != "traceback"}})
        common.write_json(json_path, payload())

    facts["load_average_at_end"] = common.load_average()
    facts["run_seconds"] = round(time.perf_counter() - run_started, 1)
    common.write_json(json_path, payload())
    print()
    print(render(records))
    print(f"\nload average at end {facts['load_average_at_end']}; run took {facts['run_seconds']} s; JSON: {json_path}")
    return 0


def render(records: list[dict]) -> str:
    """Parts as rows, configurations as columns: seconds (share of the sum of parts)."""
    header = ["part"] + [TrainCase(**record["case"]).label for record in records]
    rows = []
    for label in PARTS:
        row = [label]
        for record in records:
            result = record["result"]
            if result.get("status") != "ok":
                row.append("-")
                continue
            seconds = result["parts_median_s"][label]
            row.append(f"{common.format_seconds(seconds)} ({100 * seconds / result['sum_of_parts_s']:.0f}%)")
        rows.append(row)

    def summary(name: str, value) -> list[str]:
        return [name] + [value(record["result"]) if record["result"].get("status") == "ok" else "-" for record in records]

    rows.append(summary("sum of parts", lambda r: common.format_seconds(r["sum_of_parts_s"])))
    rows.append(summary("plain step (one backward)", lambda r: common.format_seconds(r["plain_step_median_s"])))
    rows.append(summary("peak extra memory", lambda r: common.format_bytes(r.get("peak_extra_bytes"))))
    rows.append(summary("params F / R", lambda r: f"{r['deblur_parameters'] / 1e6:.2f}M / {r['reblur_parameters'] / 1e6:.2f}M"))
    rows.append(["status"] + [record["result"].get("message", "ok") for record in records])
    return common.render_table(header, rows)


if __name__ == "__main__":
    sys.exit(main())
