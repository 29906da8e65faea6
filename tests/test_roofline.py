"""benchmarks/roofline.py: runs, and its model keeps its invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jdrl_ext

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import roofline  # noqa: E402

ops = torch.ops.jdrl_ext
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def meta_io(op: str, direction: str, shape: tuple[int, int, int, int], dtype: torch.dtype) -> list[torch.Tensor]:
    """The op's real inputs and outputs on the meta device (shapes from the ops' own fake kernels)."""
    batch, channels, height, width = shape

    def t(c: int) -> torch.Tensor:
        return torch.empty(batch, c, height, width, device="meta", dtype=dtype)

    if op == "isotropic_kernels":
        inputs = [t(roofline.RADIUS + 1)]
        forward = ops.isotropic_kernels(*inputs)
        backward = lambda grad: [ops._isotropic_kernels_backward(grad, *inputs, "window")]  # noqa: E731
    elif op == "sv_conv":
        inputs = [t(channels), t(roofline.TAPS)]
        forward = ops.sv_conv(*inputs)
        backward = lambda grad: list(ops._sv_conv_backward(grad, *inputs, "replicate"))  # noqa: E731
    elif op == "reblur":
        inputs = [t(channels), t(jdrl_ext.seed_channels(roofline.LEVELS)), t(roofline.LEVELS)]
        forward = ops.reblur(*inputs)
        backward = lambda grad: list(ops._reblur_backward(grad, *inputs, "window", "replicate"))  # noqa: E731
    else:
        inputs = [t(channels), t(2)]
        forward = ops.flow_warp(*inputs)
        backward = lambda grad: list(ops._flow_warp_backward(grad, *inputs, "border"))  # noqa: E731
    if direction == "forward":
        return inputs + [forward]
    grad = torch.empty_like(forward)
    return [grad, *inputs, *backward(grad)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_floor_bytes_equal_the_tensor_sizes(dtype):
    for shape in roofline.SHAPES:
        for op in roofline.OPS:
            for direction in roofline.DIRECTIONS:
                expected = sum(t.numel() * t.element_size() for t in meta_io(op, direction, shape, DTYPES[dtype]))
                assert roofline.floor_bytes(op, direction, shape, dtype) == expected, (op, direction, shape)


def test_model_invariants():
    rows = roofline.rows(["float32", "float16", "bfloat16", "float64"])
    assert len(rows) == len(roofline.SHAPES) * len(roofline.OPS) * len(roofline.DIRECTIONS) * 4
    for row in rows:
        label = (row["op"], row["direction"], row["shape"], row["dtype"])
        for design in roofline.DESIGNS:
            assert row[f"{design}_bytes"] >= row["floor_bytes"] > 0, label
            # Faster card, shorter time; time = bytes / bandwidth.
            assert row[f"{design}_H200_ms"] < row[f"{design}_H100_ms"], label
            assert row[f"{design}_H100_ms"] == pytest.approx(row[f"{design}_bytes"] / 3.35e12 * 1e3), label
        assert row["tiled_bytes"] <= row["today_bytes"], label  # the redesign never moves more
        assert row["on_chip_bytes_today"] >= row["floor_bytes"] / 2, label
    # Every forward kernel of both designs sits on the floor (inputs read once, output written once).
    assert all(r["today_bytes"] == r["floor_bytes"] for r in rows if r["direction"] == "forward")


def test_half_precision_halves_the_floor():
    shape = roofline.SHAPES[0]
    for op in roofline.OPS:
        for direction in roofline.DIRECTIONS:
            assert 2 * roofline.floor_bytes(op, direction, shape, "float16") == roofline.floor_bytes(
                op, direction, shape, "float32"
            )


def test_script_runs_and_writes_json(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "roofline.py"), "--dtypes", "float32", "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "a model, not a measurement" in result.stdout
    assert "reblur" in result.stdout and "1x3x2160x4096" in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["rows"]) == len(roofline.SHAPES) * len(roofline.OPS) * len(roofline.DIRECTIONS)
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "roofline.py"), "--dtypes", "float8"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown ['float8']" in bad.stderr
