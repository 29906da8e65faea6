"""Instruction counts of a CUDA kernel's disassembly, section by section: static evidence of what a
kernel change does to the work per pixel, where no GPU runs.

A reblur kernel is straight-line code between its barriers, except its loops: the channel chunks,
the tile load and, before the level loop was compiled radius by radius, the levels. So for the
specialized m = 8 kernels a section's instruction count is close to what one thread issues per pixel
in it (once per chunk for the tile load and the orbit sums; the tile load is a loop of ~11 trips per
thread for 3 channels). Predicated-off instructions are issued too, so they count. NOPs (padding)
do not.

    SASS_DIR=/tmp/sass .ci/ptxas_reblur.sh VENV forward_kernel     # writes the .sass files
    python benchmarks/sass_sections.py /tmp/sass/forward_kernel_float_int32_t_8.sass

prints, per section (split at each BAR.SYNC), its address range, its instruction count and its most
frequent opcodes; `--json FILE` writes the same as a list. One kernel per listing (as
ptxas_reblur.sh writes them). A section's count does not say whether it holds a loop: for that,
read its backward branches in the listing.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

# "        /*0c40*/                   FFMA R17, R8, 0.917, R17 ;   /* 0x... */"
_INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_PREDICATE = re.compile(r"^@!?U?P\w+\s+")
_FUNCTION = re.compile(r"^\s*Function\s*:", re.MULTILINE)


def instructions(text: str) -> list[tuple[int, str]]:
    """(address, opcode with its modifiers) of each instruction of a cuobjdump -sass listing."""
    found = []
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        body = _PREDICATE.sub("", match.group(2))
        found.append((int(match.group(1), 16), body.split()[0]))
    return found


def sections(text: str, top: int = 8) -> list[dict]:
    """The listing split after each BAR.SYNC (block barrier): start and end address (of the first and
    last instruction other than a NOP), instruction count (NOPs left out) and the `top` most frequent
    opcodes (by base name: FADD.FTZ counts as FADD)."""
    functions = len(_FUNCTION.findall(text))
    if functions > 1:
        raise ValueError(f"it holds {functions} kernels; give one kernel's listing")
    listed = [(address, op) for address, op in instructions(text) if op != "NOP"]
    if not listed:
        raise ValueError("no SASS instructions found (expected the output of cuobjdump -sass)")
    cuts = [0] + [i + 1 for i, (_, op) in enumerate(listed) if op.startswith("BAR.SYNC")] + [len(listed)]
    result = []
    for lo, hi in zip(cuts, cuts[1:]):
        if lo == hi:
            continue
        ops = collections.Counter(op.split(".")[0] for _, op in listed[lo:hi])
        result.append(
            {
                "start": f"{listed[lo][0]:#x}",
                "end": f"{listed[hi - 1][0]:#x}",
                "instructions": hi - lo,
                "opcodes": dict(ops.most_common(top)),
            }
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sass", type=Path, help="a cuobjdump -sass listing of one kernel")
    parser.add_argument("--top", type=int, default=8, help="opcodes shown per section")
    parser.add_argument("--json", type=Path, help="also write the sections to this file")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be at least 1, not {args.top}")
    if not args.sass.is_file():
        parser.error(f"sass: {args.sass} is not a file")
    try:
        found = sections(args.sass.read_text(), args.top)
    except UnicodeDecodeError:
        parser.error(f"sass: {args.sass} is not text (a cubin? disassemble it with cuobjdump -sass)")
    except ValueError as error:
        parser.error(f"sass: {args.sass}: {error}")
    for section in found:
        opcodes = " ".join(f"{op}:{n}" for op, n in section["opcodes"].items())
        print(f"{section['start']}-{section['end']}: {section['instructions']} instructions  {opcodes}")
    print(f"total: {sum(s['instructions'] for s in found)} instructions")
    if args.json:
        try:
            args.json.write_text(json.dumps(found, indent=1) + "\n")
        except OSError as error:
            parser.error(f"--json: cannot write {args.json}: {error.strerror}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
