"""Training checkpoints: atomic writes, loading, and rebuilding the deblurring net for inference.

A checkpoint is a dict (SPEC / package contract):

- ``"model"``: deblurring net ``state_dict``; ``"reblur"``: reblurring net ``state_dict`` or None;
- ``"optimizer"``, ``"scheduler"``: their ``state_dict``s;
- ``"epoch"``: epochs completed; ``"step"``: optimizer steps taken;
- ``"rng"``: python / numpy / torch / cuda generator states (see :func:`rng_state`);
- ``"config"``: the resolved config as a plain dict, ``config["model"] = {"arch", "preset", "levels"}``;
- optional extras written by the trainer (``"best_metric"``, ``"history"``);
- ``"format_version"``: stamped by :func:`save_checkpoint` (see ``CHECKPOINT_FORMAT_VERSION``).

Everything in it is made of tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from jdrl.atomic import atomic_write
from jdrl.errors import JdrlError

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_deblur_net",
    "rng_state",
    "set_rng_state",
]

REQUIRED_KEYS = ("model", "config")
# torch.save writes a zip archive; anything else is not one of our checkpoints.
_ZIP_MAGIC = b"PK\x03\x04"
_FIX = "give a .pt file written by `jdrl train` (e.g. OUT_DIR/best.pt or last.pt)"

# The layout of what a checkpoint holds, raised whenever saved weights stop fitting the nets:
#   1 (no "format_version" key): the jdrl net's fusion squeezed [I_B, B_hat] to 3 channels with a
#     1x1 convolution ("fusion.to_image") before F_D;
#   2: the fused 3 + S(m) channels enter F_D's first layer (SPEC section 7). UNet weights unchanged.
# Keys added without a new version: a run with train.ema_decay adds the weight average as
# "averaged_model" (what load_deblur_net returns) and "weight_average" (decay, update count);
# "model" stays the trained weights, so a jdrl that predates them resumes such a checkpoint
# correctly and evaluates the trained weights instead of the average.
CHECKPOINT_FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1


class CheckpointError(JdrlError, RuntimeError):
    """A checkpoint file is missing, unreadable or lacks what is asked of it; the message names it."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and then replace
    ``path`` in one ``os.replace``: a crash at any point leaves either the old file or the new one,
    never a truncated mix. The folder is created if needed.
    """
    state = {**state, "format_version": CHECKPOINT_FORMAT_VERSION}
    with atomic_write(path, "wb", durable=True) as stream:
        torch.save(state, stream)
    return Path(path)


def _check_format_version(path: Path, state: dict[str, Any]) -> None:
    """Refuse checkpoints whose weights no longer fit the nets, saying what they are and what to do."""
    version = state.get("format_version", LEGACY_FORMAT_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version!r}, newer than this jdrl reads "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade jdrl_ext or use a checkpoint written by this version"
        )
    if version >= CHECKPOINT_FORMAT_VERSION:
        return
    model_config = state["config"].get("model") if isinstance(state["config"], dict) else None
    arch = model_config.get("arch") if isinstance(model_config, dict) else None
    model_state = state["model"] if isinstance(state["model"], dict) else {}
    # Format 2 changed only the jdrl net; a UNet checkpoint of format 1 still fits.
    if arch == "jdrl" or "fusion.to_image.weight" in model_state:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has the old jdrl network layout (checkpoint format {version}): "
            "its fusion squeezes [I_B, B_hat] to 3 channels before F_D, while this version feeds all "
            f"3 + S(m) channels into F_D's first layer (format {CHECKPOINT_FORMAT_VERSION}, SPEC section 7). "
            "Its weights cannot be converted: retrain with `jdrl train` (a new run directory, not --resume), "
            "or run it with a jdrl from before the change."
        )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder; {_FIX}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; {_FIX}")
    try:
        with open(path, "rb") as stream:
            magic = stream.read(len(_ZIP_MAGIC))
    except OSError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be opened ({error.strerror})") from error
    if magic != _ZIP_MAGIC:
        raise CheckpointError(f"{str(path)!r} is not a checkpoint (not a file written by torch.save); {_FIX}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a corrupt file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({first_line}); {_FIX}"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a dict; {_FIX}")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}; {_FIX}")
    _check_format_version(path, state)
    return state


def load_deblur_net(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the deblurring net from the config saved in a checkpoint and load its weights: the
    weight average where the run kept one (``train.ema_decay``), else the trained weights.

    Returns the net in eval mode on ``map_location``.
    """
    from jdrl.models import build_deblur_net

    state = load_checkpoint(path, map_location=map_location)
    model_config = state["config"].get("model") if isinstance(state["config"], dict) else None
    if not isinstance(model_config, dict) or not {"arch", "preset", "levels"} <= set(model_config):
        raise CheckpointError(
            f"checkpoint {str(path)!r}: config['model'] must hold arch, preset and levels, got {model_config!r}"
        )
    try:
        net = build_deblur_net(
            arch=model_config["arch"], preset=model_config["preset"], levels=int(model_config["levels"])
        )
    except (ValueError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} names a network this jdrl cannot build ({error}); "
            "was it written by another version?"
        ) from error
    weights = state.get("averaged_model") or state["model"]
    incompatible = _incompatible_weights(net, weights)
    if incompatible:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: its weights do not fit the {model_config['arch']}/{model_config['preset']} "
            f"net its config names ({incompatible}); was it written by another version of jdrl?"
        )
    net.load_state_dict(weights)
    return net.to(map_location).eval()


def _incompatible_weights(net: nn.Module, weights: Any) -> str:
    """Empty when ``weights`` fit ``net`` exactly, else a short description of what differs."""
    if not isinstance(weights, dict):
        return f"the weights are a {type(weights).__name__}, not a state dict"
    expected = net.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    reshaped = [
        name
        for name, tensor in expected.items()
        if name in weights and (not isinstance(weights[name], torch.Tensor) or weights[name].shape != tensor.shape)
    ]
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
        if names:
            parts.append(f"{len(names)} {label}, e.g. {names[0]!r}")
    return "; ".join(parts)


def rng_state() -> dict[str, Any]:
    """Every random generator the training touches, as tensors and plain values.

    numpy's state is split into its parts so that the checkpoint stays loadable with
    ``weights_only=True``.
    """
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (the cuda part only where CUDA is available)."""
    python_state = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate needs tuples.
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gauss"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
