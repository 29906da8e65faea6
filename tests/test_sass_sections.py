"""benchmarks/sass_sections.py: sections split at barriers, predicated and modified opcodes counted by
their base name, NOPs left out, bad input named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import sass_sections  # noqa: E402

# The shape of a cuobjdump -sass listing (sm_90), shortened.
LISTING = """
        code for sm_90
                Function : _ZN4jdrl13reblur_kernels14forward_kernelIffiLi8EEEvNS0_6ParamsIT_T0_EE
        .headerflags    @"EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                                    /* 0x00000a00ff017b82 */
        /*0010*/                   MUFU.EX2 R17, R20 ;                                       /* 0x0000000000000000 */
        /*0020*/              @!P4 FMUL R17, R17, R17 ;                                      /* 0x0000000000000000 */
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;                             /* 0x0000000000000000 */
        /*0040*/               @P2 LDS R36, [R24+0xaff8] ;                                   /* 0x0000000000000000 */
        /*0050*/                   LDS R4, [R25+0x800] ;                                     /* 0x0000000000000000 */
        /*0060*/               @P1 FADD R3, RZ, R12 ;                                        /* 0x0000000000000000 */
        /*0070*/                   EXIT ;                                                    /* 0x0000000000000000 */
        /*0080*/                   NOP;                                                      /* 0x0000000000000000 */
        /*0090*/                   NOP;                                                      /* 0x0000000000000000 */
"""


def test_a_barrier_that_is_not_a_block_sync_does_not_split():
    listing = LISTING.replace("BAR.SYNC.DEFER_BLOCKING 0x0", "BAR.ARV 0x1, 0x40")
    assert [s["instructions"] for s in sass_sections.sections(listing)] == [8]


def test_top_must_be_positive(tmp_path):
    listing = tmp_path / "k.sass"
    listing.write_text(LISTING)
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sass_sections.py"), str(listing), "--top", "0"],
        capture_output=True, text=True,
    )
    assert run.returncode == 2 and "--top" in run.stderr


def test_sections_split_after_each_barrier_and_count_base_opcodes():
    found = sass_sections.sections(LISTING)
    assert [(s["start"], s["end"], s["instructions"]) for s in found] == [("0x0", "0x30", 4), ("0x40", "0x70", 4)]
    assert found[0]["opcodes"] == {"LDC": 1, "MUFU": 1, "FMUL": 1, "BAR": 1}
    assert found[1]["opcodes"] == {"LDS": 2, "FADD": 1, "EXIT": 1}  # NOPs left out


def test_command_prints_totals_and_writes_json(tmp_path):
    listing = tmp_path / "k.sass"
    listing.write_text(LISTING)
    out = tmp_path / "k.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sass_sections.py"), str(listing), "--json", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "0x0-0x30: 4 instructions" in run.stdout
    assert run.stdout.strip().endswith("total: 8 instructions")
    assert [s["instructions"] for s in json.loads(out.read_text())] == [4, 4]


@pytest.mark.parametrize(
    "content", [None, "not a listing\n", LISTING + LISTING.replace("forward", "backward"), b"\x7fELF\xff\xfe"]
)
def test_bad_input_names_the_argument(tmp_path, content):
    listing = tmp_path / "k.sass"
    if isinstance(content, bytes):
        listing.write_bytes(content)
    elif content is not None:
        listing.write_text(content)
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sass_sections.py"), str(listing)], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "sass: " in run.stderr and str(listing) in run.stderr
