#!/usr/bin/env python3
"""Registers and spills of every CUDA kernel, from the ``ptxas -v`` lines of a build log.

    python .ci/ptxas_report.py BUILD_LOG [--max-reblur-registers 64] [--enforce-registers] [--known-spills FILE]

Prints one row per kernel (demangled with c++filt and shortened) and architecture: registers per
thread, stack frame, spill stores and spill loads. Exits 1 when a function spills (non-zero spill
stores or loads: a spill is local memory traffic the kernels are designed not to have) that the
``--known-spills`` list does not name (names it lists that no longer spill are printed), when a
reblur kernel uses more than ``--max-reblur-registers`` registers per thread while
``--enforce-registers`` is given (64 registers x 256 threads lets 4 blocks, 50% of an SM's 2048
threads, be resident on sm_80/sm_90), or when the log has no ptxas lines at all (the flag did not
reach nvcc, so nothing was checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable

_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '(?P<name>[^']+)' for '(?P<arch>[^']+)'")
_PROPERTIES = re.compile(r"ptxas info\s*: Function properties for (?P<name>\S+)")
_FRAME = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads"
)
_USED = re.compile(r"ptxas info\s*: Used (?P<registers>\d+) registers")


@dataclasses.dataclass
class FunctionUsage:
    """What ptxas reports for one function compiled for one architecture."""

    mangled: str
    arch: str
    is_kernel: bool
    registers: int | None = None
    stack_bytes: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    name: str = ""  # demangled and shortened, filled by `name_functions`

    @property
    def spills(self) -> bool:
        return self.spill_store_bytes > 0 or self.spill_load_bytes > 0


def parse_ptxas(lines: Iterable[str]) -> list[FunctionUsage]:
    """Every function of the log, in order. A kernel's block is 'Compiling entry function', then
    'Function properties' with its frame line, then 'Used N registers'; device functions that were
    not inlined have a 'Function properties' block of their own (their spills count too)."""
    functions: list[FunctionUsage] = []
    current: FunctionUsage | None = None  # the function the next frame or register line belongs to
    arch = ""
    for line in lines:
        if match := _ENTRY.search(line):
            arch = match["arch"]
            current = FunctionUsage(match["name"], arch, is_kernel=True)
            functions.append(current)
        elif match := _PROPERTIES.search(line):
            if current is None or current.mangled != match["name"]:
                current = FunctionUsage(match["name"], arch, is_kernel=False)
                functions.append(current)
        elif (match := _FRAME.search(line)) and current is not None:
            current.stack_bytes = int(match["stack"])
            current.spill_store_bytes = int(match["stores"])
            current.spill_load_bytes = int(match["loads"])
        elif (match := _USED.search(line)) and current is not None:
            current.registers = int(match["registers"])
    return functions


def demangle(names: list[str]) -> list[str]:
    """c++filt's names, or the mangled names where c++filt is missing."""
    if not names or shutil.which("c++filt") is None:
        return list(names)
    result = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    demangled = result.stdout.splitlines()
    return demangled if len(demangled) == len(names) else list(names)


_SHORT_TYPES = {"c10::BFloat16": "bf16", "c10::Half": "f16", "float": "f32", "double": "f64"}


def shorten(demangled: str) -> str:
    """'void jdrl::(anonymous namespace)::reblur_forward_kernel<c10::Half, float>(...)' -> 'reblur_forward_kernel<f16, f32>'."""
    text = re.sub(r"^void\s+", "", demangled)
    text = text.replace("(anonymous namespace)::", "")
    text = re.sub(r"^jdrl::(cuda::)?", "", text)
    # Drop the parameter list: the last top-level parenthesised group.
    depth = 0
    for index, char in enumerate(text):
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "(" and depth == 0:
            text = text[:index]
            break
    for long, short in _SHORT_TYPES.items():
        text = re.sub(rf"(?<![\w:]){re.escape(long)}(?!\w)", short, text)
    return text.strip()


def name_functions(functions: list[FunctionUsage]) -> None:
    for function, demangled in zip(functions, demangle([f.mangled for f in functions])):
        function.name = shorten(demangled)


def unique(functions: list[FunctionUsage]) -> list[FunctionUsage]:
    """One row per (function, architecture): the build compiles each translation unit once, but a log
    of two builds would repeat them."""
    seen: dict[tuple[str, str], FunctionUsage] = {}
    for function in functions:
        seen.setdefault((function.mangled, function.arch), function)
    return list(seen.values())


def is_reblur_kernel(function: FunctionUsage) -> bool:
    return function.is_kernel and function.name.startswith("reblur_")


def table(functions: list[FunctionUsage]) -> str:
    width = max([len("kernel")] + [len(f.name) for f in functions])
    rows = [f"{'kernel':<{width}}  {'arch':<7} {'regs':>4} {'stack':>6} {'spill st':>8} {'spill ld':>8}"]
    for f in sorted(functions, key=lambda f: (f.name, f.arch)):
        registers = "-" if f.registers is None else str(f.registers)
        label = f.name if f.is_kernel else f"{f.name} (device function)"
        rows.append(
            f"{label:<{width}}  {f.arch:<7} {registers:>4} {f.stack_bytes:>6} {f.spill_store_bytes:>8} {f.spill_load_bytes:>8}"
        )
    return "\n".join(rows)


def problems(
    functions: list[FunctionUsage],
    max_reblur_registers: int,
    enforce_registers: bool,
    known_spills: frozenset[str] = frozenset(),
) -> list[str]:
    """What fails the check, one line each. A spill of a kernel named in ``known_spills`` (shortened
    names) does not fail it: that list only ever shrinks, so no new spill can land unnoticed."""
    found = []
    for f in functions:
        if f.spills and f.name not in known_spills:
            found.append(f"{f.name} ({f.arch}) spills: {f.spill_store_bytes} bytes stored, {f.spill_load_bytes} loaded")
        if is_reblur_kernel(f) and f.registers is not None and f.registers > max_reblur_registers and enforce_registers:
            found.append(f"{f.name} ({f.arch}) uses {f.registers} registers per thread, more than {max_reblur_registers}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="build log holding the output of nvcc -Xptxas -v ('-' for stdin)")
    parser.add_argument("--max-reblur-registers", type=int, default=64, help="register limit of reblur kernels")
    parser.add_argument(
        "--enforce-registers",
        action="store_true",
        help="fail when a reblur kernel passes --max-reblur-registers (else only report it)",
    )
    parser.add_argument(
        "--known-spills",
        metavar="FILE",
        help="kernels (shortened names, one a line, '#' comments) whose spills are reported, not failed",
    )
    args = parser.parse_args(argv)
    known_spills: frozenset[str] = frozenset()
    if args.known_spills:
        with open(args.known_spills, encoding="utf-8") as handle:
            known_spills = frozenset(
                line.split("#", 1)[0].strip() for line in handle if line.split("#", 1)[0].strip()
            )
    if args.log == "-":
        lines = sys.stdin.read().splitlines()
    else:
        with open(args.log, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    functions = unique(parse_ptxas(lines))
    if not any(f.is_kernel for f in functions):
        print(f"ptxas_report: no 'ptxas info' kernel lines in {args.log}: was the build run with -Xptxas -v?", file=sys.stderr)
        return 1
    name_functions(functions)
    print(table(functions))
    over = [
        f
        for f in functions
        if is_reblur_kernel(f) and f.registers is not None and f.registers > args.max_reblur_registers
    ]
    if over and not args.enforce_registers:
        print(
            f"ptxas_report: {len(over)} reblur kernel(s) above {args.max_reblur_registers} registers per thread "
            "(reported, not enforced): " + ", ".join(f"{f.name} {f.registers}" for f in over)
        )
    stale = sorted(known_spills - {f.name for f in functions if f.spills})
    if stale:
        print(
            f"ptxas_report: listed in {args.known_spills} but not spilling (remove them from the list): "
            + ", ".join(stale)
        )
    known = [f for f in functions if f.spills and f.name in known_spills]
    if known:
        print(
            f"ptxas_report: {len(known)} known spill(s) (listed in {args.known_spills}, reported, not failed): "
            + ", ".join(f"{f.name} {f.spill_store_bytes}/{f.spill_load_bytes}" for f in known)
        )
    found = problems(functions, args.max_reblur_registers, args.enforce_registers, known_spills)
    for line in found:
        print(f"ptxas_report: {line}", file=sys.stderr)
    kernels = sum(f.is_kernel for f in functions)
    print(f"ptxas_report: {kernels} kernels, {len(functions) - kernels} device functions, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
