"""Memory roofline of the CUDA kernels: a model, not a measurement.

For each op (isotropic_kernels r = 7, sv_conv K = 15, reblur m = 8, flow_warp; 3-channel images)
and direction (forward; backward = the op's backward op, given the output gradient), at
8x3x512x512 and 1x3x2160x4096 (B x C x H x W: 4096x2160 is WIDTHxHEIGHT, as in bench_ops), it prints

- ``floor``: the bytes that must move, every input read once and every output written once (the
  backward reads the output gradient and the forward inputs and writes one gradient per input);
- ``today`` and ``tiled``: the DRAM bytes the kernels move by their own design, from the traffic
  tables below: ``today`` models csrc/*/*_cuda.cu as they are; ``tiled`` models the redesign of
  issue 10 (shared-memory tile + halo, per-pixel values on chip: registers and shared-memory slots,
  gradients stored once). sv_conv and isotropic_kernels are that redesign today (the two columns
  agree). reblur's DRAM rows model its tiled kernels too: they differ from ``tiled`` only where
  its backward still writes the seed gradient of a half input in float32 and converts it. flow_warp
  keeps one thread per output pixel and its image-gradient atomics (both columns);
- the expected time of each design on an H100 (3.35 TB/s) and an H200 (4.8 TB/s) if it ran at the
  card's DRAM bandwidth: a lower bound that holds only when the kernel is memory-bound;
- ``on-chip``: the approximate bytes per pixel that today's design loads and stores through L1/L2
  (halo loads, neighbour reads, stored per-pixel values; see on_chip_bytes_per_pixel); before the
  tiling it was why the kernels were expected to run far above the DRAM bound (the issue estimated
  10-25x for reblur); it is not turned into a time.

Every number comes from the tables ``TRAFFIC`` and ``ON_CHIP`` below, whose assumptions are written
next to them: update them when a kernel changes, and replace the model by bench_ops.py's
measurements (bandwidth fraction of a measured copy) when a GPU has run it.

    python benchmarks/roofline.py [--dtypes float32,float16] [--json PATH] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

OPS = ("isotropic_kernels", "sv_conv", "reblur", "flow_warp")
DIRECTIONS = ("forward", "backward")
DESIGNS = ("today", "tiled")
# (batch, channels, height, width): 8x3x512x512 and 4096x2160 (WIDTHxHEIGHT) at batch 1.
SHAPES = ((8, 3, 512, 512), (1, 3, 2160, 4096))
CARDS = {"H100": 3.35e12, "H200": 4.8e12}  # DRAM bytes per second (HBM3 / HBM3e, data sheets)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

RADIUS = 7  # isotropic_kernels and sv_conv: K = 15
TAPS = (2 * RADIUS + 1) ** 2  # 225
LEVELS = 8  # reblur: m
SEEDS = (LEVELS - 1) * (LEVELS + 2) // 2  # S(m) = 35
ORBITS = LEVELS * (LEVELS + 1) // 2  # m(m+1)/2 = 36: the radial kernel's values per pixel
LEVEL_ORBITS = sum((r + 1) * (r + 2) // 2 for r in range(1, LEVELS))  # 119: softmax values over all levels
ISO_SEEDS = RADIUS + 1  # 8
ISO_ORBITS = (RADIUS + 1) * (RADIUS + 2) // 2  # 36
# The tiled design's block: 16 x 16 output pixels, halo RADIUS on each side (the halo rows and columns
# are read again by the neighbouring blocks, from L2: DRAM reads stay at one per element).
TILE = 16


def input_channels(op: str, channels: int) -> dict[str, int]:
    """Channels per pixel of each forward input."""
    return {
        "isotropic_kernels": {"seeds": ISO_SEEDS},
        "sv_conv": {"image": channels, "kernels": TAPS},
        "reblur": {"image": channels, "seeds": SEEDS, "weights": LEVELS},
        "flow_warp": {"image": channels, "flow": 2},
    }[op]


def output_channels(op: str, channels: int) -> int:
    return TAPS if op == "isotropic_kernels" else channels


@dataclass(frozen=True)
class Term:
    """One tensor's DRAM traffic per pixel: ``channels`` values of the data type (``"s"``) or of the
    accumulation type (``"a"``: float32 for float16/bfloat16/float32, float64 for float64), read or
    written ``times`` times."""

    what: str
    channels: int
    kind: str  # "s" or "a"
    times: int = 1


def traffic(op: str, direction: str, design: str, channels: int, half: bool) -> list[Term]:
    """The DRAM traffic table of one op, direction and design, per pixel.

    Assumptions shared by every row: a gathered tensor (neighbour reads of an image, of a kernel
    plane, of the bilinear taps) comes from DRAM once, the other reads hitting L1/L2 (a 15-row band of
    a 4096-wide float32 3-channel image is 0.7 MB, far below the 50 MB L2); per-thread or per-pixel
    scratch, where a design has it, stays in L2 and never reaches DRAM; outputs are written once;
    atomics resolve in L2. ``half`` is a float16/bfloat16 input, whose accumulation-type results are
    converted by an extra pass where the code does so.
    """
    c = channels
    inputs = [Term(f"read {name}", n, "s") for name, n in input_channels(op, c).items()]
    out = output_channels(op, c)
    if direction == "forward":
        # Every forward kernel reads its inputs once and writes its output once (per-pixel scratch,
        # where a design has it, stays on chip / in L2).
        return inputs + [Term("write output", out, "s")]
    grad_in = Term("read output gradient", out, "s")
    grads = [Term(f"write grad {name}", n, "s") for name, n in input_channels(op, c).items()]
    if op == "isotropic_kernels":
        # Both designs (today's is the tiled one since issue 10's redesign): R = 7 sums the seed
        # gradients in registers and stores them once, in the data type. (The generic kernels of other
        # radii, and float64, accumulate in the accumulation type and convert half inputs by an extra
        # pass; the model covers R = 7.)
        return [grad_in, *inputs, *grads]
    if op == "sv_conv":
        # Two kernels in both designs (kernel gradient per pixel; image gradient as a gather):
        # each reads the output gradient.
        return [Term("read output gradient (two kernels)", c, "s", 2), *inputs, *grads]
    if op == "reblur":
        if design == "today":
            # Pass A: grad, image, seeds, weights -> grad seeds (float32 for half), grad weights and
            # the radial kernel Wt of every pixel (36 planes in the accumulation type, built by
            # read-modify-write per level in L2, written to DRAM once). Pass B: grad and Wt of the
            # neighbours -> grad image.
            terms = [grad_in, *inputs,
                     Term("write Wt (pass A)", ORBITS, "a"), Term("read Wt (pass B)", ORBITS, "a"),
                     Term("read output gradient again (pass B)", c, "s")]
            if half:
                terms += [Term("write grad seeds (float32)", SEEDS, "a"),
                          Term("read grad seeds (float32) to convert", SEEDS, "a")]
            return terms + grads
        # Tiled: the same two passes (the image gradient stays a gather over the neighbours' Wt),
        # seed gradients stored once in the data type.
        return [grad_in, *inputs, Term("write Wt (pass A)", ORBITS, "a"), Term("read Wt (pass B)", ORBITS, "a"),
                Term("read output gradient again (pass B)", c, "s"), *grads]
    if op == "flow_warp":
        # Both designs keep the image-gradient scatter: a zero-filled accumulation-type tensor,
        # atomics (in L2), and a conversion pass for half inputs.
        terms = [grad_in, *inputs, Term("zero-fill grad image accumulator", c, "a"),
                 Term("write grad image accumulator", c, "a"), Term("write grad flow", 2, "s")]
        if half:
            terms += [Term("read grad image accumulator to convert", c, "a"), Term("write grad image", c, "s")]
        return terms
    raise ValueError(f"unknown op {op!r}")


# The tiled kernels' image tile: (TILE + 2R)^2 values loaded for TILE^2 pixels (the halo), per channel.
HALO = (TILE + 2 * RADIUS) ** 2 / TILE**2  # 900 / 256 = 3.52 for sv_conv's R = 7


def on_chip_bytes_per_pixel(op: str, direction: str, channels: int, s: int, a: int) -> float:
    """Approximate bytes per pixel that today's kernels move through L1/L2 (global loads and stores;
    shared memory not counted). flow_warp: its 4 bilinear taps per channel, every read counted.
    reblur (tiled since issue 10, m = 8): the image / output-gradient tile with its halo, the
    pixel's seeds and weights, and in the backward the radial kernel Wt that pass A stores and pass
    B reads at every tap; no per-pixel scratch. sv_conv (tiled since issue 10): the image / output-gradient tile with its halo (HALO loads a
    pixel and channel), the 225 kernel taps of the pixel (backward: the neighbours' taps, one read per
    tap, mostly L1/L2 hits), the outputs. isotropic_kernels (since issue 10): the seeds, the 225 taps
    written (backward: read) and the seed gradients; no scratch."""
    c = channels
    if op == "isotropic_kernels":
        return ISO_SEEDS * s + TAPS * s + (0 if direction == "forward" else ISO_SEEDS * s)
    if op == "sv_conv":
        if direction == "forward":
            return HALO * c * s + TAPS * s + c * s
        # kernel gradient: image tile, the pixel's gradient, 225 taps written; image gradient: the
        # gradient's tile, the neighbours' 225 taps, the pixel's C values written
        return (HALO * c * s + c * s + TAPS * s) + (HALO * c * s + TAPS * s + c * s)
    if op == "reblur":
        # The m = 8 kernels (float32 and half; float64 and other m take the generic kernels with a
        # per-pixel global scratch, not modelled): the image (pass B: the output gradient) through a
        # shared tile with its R = 7 halo, the pixel's seeds and weights, Wt in shared-memory slots.
        params = (SEEDS + LEVELS) * s
        if direction == "forward":
            return HALO * c * s + params + c * s
        # pass A: image tile, the pixel's gradient, seeds and weights in; Wt (accumulation type) and
        # the seed (accumulation type) and weight gradients out. pass B: the gradient's tile, the
        # neighbours' Wt (one orbit value per tap), the image gradient out.
        pass_a = HALO * c * s + c * s + params + ORBITS * a + SEEDS * a + LEVELS * s
        pass_b = HALO * c * s + TAPS * a + c * s
        return pass_a + pass_b
    if op == "flow_warp":
        return (2 + 4 * c + c) * s if direction == "forward" else (2 + 2 * 4 * c + 2 * c) * s + 4 * c * a * 2
    raise ValueError(f"unknown op {op!r}")


def accumulation_bytes(dtype: str) -> int:
    return 8 if dtype == "float64" else 4


def term_bytes(terms: list[Term], pixels: int, dtype: str) -> int:
    s, a = DTYPE_BYTES[dtype], accumulation_bytes(dtype)
    return sum(t.channels * (s if t.kind == "s" else a) * t.times for t in terms) * pixels


def floor_bytes(op: str, direction: str, shape: tuple[int, int, int, int], dtype: str) -> int:
    """Inputs read once, outputs written once."""
    batch, channels, height, width = shape
    ins = sum(input_channels(op, channels).values())
    outs = output_channels(op, channels)
    per_pixel = ins + outs if direction == "forward" else (outs + ins) + ins
    return per_pixel * batch * height * width * DTYPE_BYTES[dtype]


def rows(dtypes: list[str]) -> list[dict]:
    result = []
    for shape in SHAPES:
        batch, channels, height, width = shape
        pixels = batch * height * width
        for op in OPS:
            for direction in DIRECTIONS:
                for dtype in dtypes:
                    half = dtype in ("float16", "bfloat16")
                    row = {
                        "op": op,
                        "direction": direction,
                        "shape": f"{batch}x{channels}x{height}x{width}",
                        "dtype": dtype,
                        "floor_bytes": floor_bytes(op, direction, shape, dtype),
                        "on_chip_bytes_today": pixels
                        * on_chip_bytes_per_pixel(op, direction, channels, DTYPE_BYTES[dtype], accumulation_bytes(dtype)),
                    }
                    for design in DESIGNS:
                        row[f"{design}_bytes"] = term_bytes(traffic(op, direction, design, channels, half), pixels, dtype)
                        for card, bandwidth in CARDS.items():
                            row[f"{design}_{card}_ms"] = row[f"{design}_bytes"] / bandwidth * 1e3
                    for card, bandwidth in CARDS.items():
                        row[f"floor_{card}_ms"] = row["floor_bytes"] / bandwidth * 1e3
                    result.append(row)
    return result


def table(result: list[dict]) -> str:
    mb = 1e6
    header = (
        f"{'op':<18}{'dir':<5}{'shape':<15}{'dtype':<9}{'floor MB':>9}{'today MB':>9}{'tiled MB':>9}"
        f"{'x floor':>8}  {'H100 ms floor/today/tiled':>26}  {'H200 ms floor/today/tiled':>26}{'on-chip MB':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in result:
        times = {card: f"{r[f'floor_{card}_ms']:.3f}/{r[f'today_{card}_ms']:.3f}/{r[f'tiled_{card}_ms']:.3f}" for card in CARDS}
        lines.append(
            f"{r['op']:<18}{r['direction'][:3]:<5}{r['shape']:<15}{r['dtype']:<9}{r['floor_bytes'] / mb:>9.1f}"
            f"{r['today_bytes'] / mb:>9.1f}{r['tiled_bytes'] / mb:>9.1f}{r['today_bytes'] / r['floor_bytes']:>8.2f}"
            f"  {times['H100']:>26}  {times['H200']:>26}{r['on_chip_bytes_today'] / mb:>11.0f}"
        )
    return "\n".join(lines)


def markdown(result: list[dict]) -> str:
    """The same rows as a Markdown table (for benchmarks/RESULTS.md)."""
    lines = [
        "| op | direction | shape | dtype | floor MB | today MB | tiled MB | today / floor "
        "| H100 ms floor / today / tiled | H200 ms floor / today / tiled | today on-chip MB |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result:
        times = {card: f"{r[f'floor_{card}_ms']:.3f} / {r[f'today_{card}_ms']:.3f} / {r[f'tiled_{card}_ms']:.3f}" for card in CARDS}
        lines.append(
            f"| {r['op']} | {r['direction']} | {r['shape']} | {r['dtype']} | {r['floor_bytes'] / 1e6:.1f} "
            f"| {r['today_bytes'] / 1e6:.1f} | {r['tiled_bytes'] / 1e6:.1f} | {r['today_bytes'] / r['floor_bytes']:.2f} "
            f"| {times['H100']} | {times['H200']} | {r['on_chip_bytes_today'] / 1e6:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Memory roofline of the CUDA kernels (a model, not a measurement).")
    parser.add_argument("--dtypes", default="float32,float16", help="comma-separated: float32, float16, bfloat16, float64")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead")
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPE_BYTES]
    if unknown or not dtypes:
        parser.error(f"--dtypes: unknown {unknown or 'none given'}; choose from {', '.join(DTYPE_BYTES)}")
    result = rows(dtypes)
    if args.markdown:
        print(markdown(result))
        return 0
    print(
        "Memory roofline (a model, not a measurement): MB = 1e6 bytes of DRAM traffic; x floor = today / floor;\n"
        "times = bytes / DRAM bandwidth (H100 3.35 TB/s, H200 4.8 TB/s), a lower bound for a memory-bound kernel;\n"
        "on-chip = today's approximate L1/L2 load+store bytes (not turned into a time). Shapes are BxCxHxW."
    )
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cards_bytes_per_s": CARDS, "rows": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
