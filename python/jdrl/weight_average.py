"""An exponential moving average of a network's weights (``train.ema_decay``; ours, not the paper's).

Adam at a constant rate with one pair per step makes the weights wander: on the demo's kind of data
the PSNR of the deblurring net swings by up to 0.8 dB from one checkpoint to the next (RESULTS.md,
"The ceiling of the budget"). The average of the recent weights sits in the middle of that
wander. Many restoration trainers validate and ship such an average; here it is off unless
``train.ema_decay`` is set, and it changes nothing of what trains: the optimizer steps the network
itself, the average only follows it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``average = d * average + (1 - d) * weights`` after each optimizer step, with the warm-up
    ``d = min(decay, (1 + n) / (10 + n))`` at the n-th update (n = 1, 2, ...), so that the average
    forgets the random initialization within the first tens of steps instead of the ~1 / (1 - decay)
    that a fixed ``d`` would take. Until ``decay`` binds, after ``(10 decay - 1) / (1 - decay)``
    updates (~9000 for 0.999, ~900 for 0.99), the average puts about two thirds of its weight on
    the last ninth of the steps, whatever the decay.

    ``net`` is a copy of the followed network, in eval mode and without gradients; floating-point
    buffers are averaged like the weights, the others (counters) copied.

    Args:
        source: the network to follow (its weights at construction start the average).
        decay: the largest ``d``, in [0, 1).
    """

    def __init__(self, source: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.net = copy.deepcopy(source).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The ``d`` of the next update."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """Move the average toward ``source``'s weights (the network given at construction)."""
        weight = 1.0 - self.current_decay()
        averaged = self.net.state_dict()
        for name, value in source.state_dict().items():
            if value.is_floating_point():
                averaged[name].lerp_(value, weight)
            else:
                averaged[name].copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        """What a checkpoint needs besides the averaged weights (``net.state_dict()``)."""
        return {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, weights: dict, state: dict) -> None:
        """Restore from a checkpoint: the averaged ``weights`` and the update count of ``state``."""
        self.net.load_state_dict(weights)
        self.updates = int(state["updates"])
