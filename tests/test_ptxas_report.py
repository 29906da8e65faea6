""".ci/ptxas_report.py on captured ptxas -v text (no nvcc needed)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "ptxas_report.py"
spec = importlib.util.spec_from_file_location("ptxas_report", SCRIPT)
ptxas_report = importlib.util.module_from_spec(spec)
sys.modules["ptxas_report"] = ptxas_report  # dataclasses look their module up there
spec.loader.exec_module(ptxas_report)

# Captured from `NVCC_APPEND_FLAGS="-Xptxas -v" .ci/compile_cuda.sh` (CUDA 13.0, sm_90), trimmed; the
# reblur block's register and spill counts and the device function are edited in to exercise the gates.
FLOW_FORWARD = "_ZN4jdrl55_GLOBAL__N__50c78a27_17_flow_warp_cuda_cu_17f23bb5_532324flow_warp_forward_kernelIN3c108BFloat16EfEEvPKT_S6_PS4_llllb"
ISO_BACKWARD = "_ZN4jdrl63_GLOBAL__N__aa07baaf_25_isotropic_kernels_cuda_cu_17f23bb5_645333isotropic_kernels_backward_kernelIffEEvPKT_S4_PKNS_10OrbitPolarIT0_EEPS6_SA_llib"
REBLUR_FORWARD = "_ZN4jdrl52_GLOBAL__N__12345678_14_reblur_cuda_cu_17f23bb5_532321reblur_forward_kernelIffEEvPKT_S4_S4_PKNS_10OrbitPolarIT0_EEPS6_PS2_lllliibb"
SAMPLE = f"""\
[4/13] /usr/local/cuda/bin/nvcc -c flow_warp_cuda.cu -Xptxas -v
ptxas info    : 28 bytes gmem
ptxas info    : Compiling entry function '{FLOW_FORWARD}' for 'sm_90'
ptxas info    : Function properties for {FLOW_FORWARD}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 38 registers, used 0 barriers
ptxas info    : Compile time = 78.067 ms
ptxas info    : Compiling entry function '{ISO_BACKWARD}' for 'sm_90'
ptxas info    : Function properties for {ISO_BACKWARD}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 48 registers, used 0 barriers, 392 bytes cmem[0]
ptxas info    : Function properties for _ZN4jdrl13radial_helperEv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '{REBLUR_FORWARD}' for 'sm_90'
ptxas info    : Function properties for {REBLUR_FORWARD}
    40 bytes stack frame, 24 bytes spill stores, 32 bytes spill loads
ptxas info    : Used 72 registers, used 1 barriers, 8192 bytes smem, 400 bytes cmem[0]
"""


def parsed():
    return ptxas_report.parse_ptxas(SAMPLE.splitlines())


def test_parse_reads_every_function_block():
    functions = parsed()
    assert [(f.is_kernel, f.registers, f.stack_bytes, f.spill_store_bytes, f.spill_load_bytes) for f in functions] == [
        (True, 38, 0, 0, 0),
        (True, 48, 0, 0, 0),
        (False, None, 16, 0, 0),
        (True, 72, 40, 24, 32),
    ]
    assert functions[0].mangled == FLOW_FORWARD and functions[0].arch == "sm_90"
    assert [f.spills for f in functions] == [False, False, False, True]


def test_shorten_demangled_names():
    assert (
        ptxas_report.shorten(
            "void jdrl::(anonymous namespace)::flow_warp_forward_kernel<c10::BFloat16, float>"
            "(c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16*, long, long, long, long, bool)"
        )
        == "flow_warp_forward_kernel<bf16, f32>"
    )
    assert ptxas_report.shorten("void jdrl::cuda::orbit_table_kernel<double>(int, jdrl::OrbitPolar<double>*)") == (
        "orbit_table_kernel<f64>"
    )
    assert ptxas_report.shorten("reblur_kernel<c10::Half, float, 8>(int)") == "reblur_kernel<f16, f32, 8>"


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt (binutils) is not installed")
def test_names_are_demangled_and_shortened():
    functions = parsed()
    ptxas_report.name_functions(functions)
    assert [f.name for f in functions] == [
        "flow_warp_forward_kernel<bf16, f32>",
        "isotropic_kernels_backward_kernel<f32, f32>",
        "radial_helper",
        "reblur_forward_kernel<f32, f32>",
    ]


def test_gates_spills_always_registers_when_enforced():
    functions = parsed()
    for f, name in zip(functions, ["flow_warp_forward_kernel", "iso_backward", "radial_helper", "reblur_forward_kernel"]):
        f.name = name
    reported = ptxas_report.problems(functions, max_reblur_registers=64, enforce_registers=False)
    assert reported == ["reblur_forward_kernel (sm_90) spills: 24 bytes stored, 32 loaded"]
    enforced = ptxas_report.problems(functions, max_reblur_registers=64, enforce_registers=True)
    assert enforced[1] == "reblur_forward_kernel (sm_90) uses 72 registers per thread, more than 64"
    assert ptxas_report.problems(functions, max_reblur_registers=72, enforce_registers=True) == reported
    # Only reblur kernels have the register gate: flow_warp at 38 passes a limit of 32.
    assert len(ptxas_report.problems(functions[:2], max_reblur_registers=32, enforce_registers=True)) == 0


def test_main_exit_status(tmp_path, capsys):
    clean = "\n".join(SAMPLE.splitlines()[:11]) + "\n"  # flow_warp and isotropic_kernels only
    (tmp_path / "clean.log").write_text(clean)
    (tmp_path / "spills.log").write_text(SAMPLE)
    (tmp_path / "empty.log").write_text("[1/1] c++ -c module.cpp\n")
    assert ptxas_report.main([str(tmp_path / "clean.log"), "--enforce-registers"]) == 0
    out = capsys.readouterr().out
    assert "flow_warp_forward_kernel" in out and "2 kernels, 0 device functions, 0 problem(s)" in out
    assert ptxas_report.main([str(tmp_path / "spills.log")]) == 1
    assert "spills: 24 bytes stored" in capsys.readouterr().err
    assert ptxas_report.main([str(tmp_path / "empty.log")]) == 1
    assert "no 'ptxas info' kernel lines" in capsys.readouterr().err


def test_duplicate_blocks_count_once():
    functions = ptxas_report.unique(ptxas_report.parse_ptxas((SAMPLE + SAMPLE).splitlines()))
    assert len(functions) == 4


def test_known_spills_are_reported_not_failed(tmp_path, capsys):
    (tmp_path / "spills.log").write_text(SAMPLE)
    functions = ptxas_report.unique(ptxas_report.parse_ptxas(SAMPLE.splitlines()))
    ptxas_report.name_functions(functions)
    spilling = [f.name for f in functions if f.spills]
    assert spilling, "the sample must hold a spilling kernel"
    known = tmp_path / "known.txt"
    known.write_text("# comment line\n" + "\n".join(f"{name}  # why" for name in spilling) + "\n")
    assert ptxas_report.main([str(tmp_path / "spills.log"), "--known-spills", str(known)]) == 0
    assert "known spill(s)" in capsys.readouterr().out
    # Another kernel's name in the list does not excuse the spill.
    known.write_text("flow_warp_forward_kernel\n")
    assert ptxas_report.main([str(tmp_path / "spills.log"), "--known-spills", str(known)]) == 1
