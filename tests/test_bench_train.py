"""benchmarks/bench_train.py: its instrumented step (the backward cut into timed parts) gives the
gradients of one plain ``total.backward()``, for Eq. 2's reblurring net and for the anchored one."""

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_train as bench  # noqa: E402


@pytest.mark.parametrize(("anchor", "predict"), [(True, "both"), (False, "both"), (True, "no_kpn"), (True, "no_wpn")])
def test_the_instrumented_step_has_the_gradients_of_a_plain_step(anchor, predict):
    from jdrl.losses import LossConfig

    device = torch.device("cpu")
    case = bench.TrainCase("jdrl", "tiny", 1, 32, 32, 8)
    # Both penalties on: their backward runs in "losses bwd" and must stop at R's cut outputs.
    config = LossConfig(reblur_after_warmup=False, reblur_anchor=anchor, seed_penalty=0.5, seed_penalty_margin=0.0,
                        logit_penalty=0.5, logit_penalty_margin=0.0, predict_seeds=predict != "no_kpn",
                        predict_weights=predict != "no_wpn")
    parts = bench.build(case, device, "dis", None, loss_config=config)
    for group in parts["optimizer"].param_groups:
        group["lr"] = 0.0  # the step leaves the weights as they are: both steps see the same nets
    blurry, sharp = bench.make_batch(case, device, 0)
    parameters = list(parts["deblur_net"].parameters()) + list(parts["reblur_net"].parameters())
    seconds = bench.instrumented_step(parts, blurry, sharp, 0, False, device)
    assert seconds["reblur op bwd"] > 0 and seconds["reblur net bwd"] > 0
    cut = [None if p.grad is None else p.grad.clone() for p in parameters]
    bench.plain_step(parts, blurry, sharp, 0, False, device)
    plain = [p.grad for p in parameters]
    assert sum(g is not None for g in plain) == len(parameters)
    for index, (a, b) in enumerate(zip(cut, plain)):
        assert a is not None, index
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
