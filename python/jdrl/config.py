"""Experiment configuration: dataclasses checked on load, YAML files and ``--set`` overrides.

One YAML file per experiment (see ``configs/``); every key is optional and defaults to the paper's
setting. Command-line overrides use dotted keys and YAML values::

    jdrl train --config configs/small_cpu.yaml --set optim.lr=1e-4 --set data.crop=null \
        --set optim.betas=[0.9,0.99]

Unknown keys and wrongly typed values are errors that name the key (and the file).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jdrl.atomic import atomic_write
from jdrl.losses import LossConfig
from jdrl.errors import UsageError

__all__ = [
    "REBLUR_LR_CAP",
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "FlowConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "parse_override",
    "save_config_yaml",
]

ARCHS = ("jdrl", "unet")
PRESETS = ("paper", "small", "tiny")
# Keys of jdrl.metrics.aligned_metrics that best.pt can be chosen by (all higher-is-better).
VAL_METRICS = ("psnr", "ssim", "psnr_unaligned", "ssim_unaligned")
# The fastest Adam rate the reblurring net gets by default (OptimConfig.reblur_lr = None).
REBLUR_LR_CAP = 1e-3


class ConfigError(UsageError, ValueError):
    """A config file, key or value is wrong; the message names it."""


@dataclass
class ModelConfig:
    """Deblurring net: ``jdrl.models.build_deblur_net(arch, preset, levels)``."""

    arch: str = "jdrl"
    preset: str = "paper"
    levels: int = 8

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch must be one of {list(ARCHS)}, got {self.arch!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"model.preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.levels < 2:
            raise ConfigError(f"model.levels must be >= 2, got {self.levels}")


@dataclass
class DataConfig:
    """Training pairs (``jdrl.data.PairedDataset``) and the validation set used to pick best.pt.

    ``layout`` / ``split`` / ``blur_dir`` / ``sharp_dir`` are PairedDataset's arguments.
    ``val_root`` must hold validation pairs, never the test set: best.pt is chosen on it.
    ``val_crop`` (null: whole images) keeps validation affordable on large images; the crop of each
    validation image is fixed.
    """

    root: str | None = None
    layout: str = "sdd"
    split: str = "train"
    blur_dir: str | None = None
    sharp_dir: str | None = None
    crop: int | None = 512
    flip: bool = True
    val_root: str | None = None
    val_layout: str = "sdd"
    val_split: str = "val"
    val_crop: int | None = None
    workers: int = 0

    def validate(self) -> None:
        for name in ("crop", "val_crop"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be a positive size or null (whole images), got {getattr(self, name)}")
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")


@dataclass
class OptimConfig:
    """Adam and StepLR (section 4.1: lr 2e-5, halved every 60 epochs).

    ``reblur_lr``: a learning rate of its own for the reblurring net; StepLR scales both alike.
    None (the default): ``min(lr, REBLUR_LR_CAP)``, i.e. ``lr`` as in the paper (one optimizer, one
    rate) up to 1e-3, and 1e-3 when the deblurring net runs faster. Without the seed penalty
    (``loss.seed_penalty``) R trained alone learned the blur at 1e-4 and not from 5e-4 on (its
    seeds at their bound, a constant radius map), so the cap was 1e-4 until 2026-12-01.
    With the penalty R learns at 1e-3 (trained alone: 7 of 7 runs, test Spearman 0.58-0.75), and
    in the demo's joint training R at 1e-3 gave R a better map (0.56 and 0.45 against 0.29 and
    0.27) and ours a higher PSNR (+0.26 and +0.11 dB) than 1e-4 on the two seeds compared
    (``benchmarks/RESULTS.md``). Runs at ``lr`` in (1e-4, 1e-3] written before then have R in a
    group of its own at 1e-4: resume them with ``optim.reblur_lr: 1e-4``. See
    :meth:`effective_reblur_lr`.

    ``reblur_prefit_lr``: ours, the rate of the reblurring net's prefit steps
    (``loss.reblur_prefit_steps``), which may differ from the rate it trains at afterwards. None
    (the default): :meth:`effective_reblur_lr`, one rate throughout. In the demo at seed 1, after a
    prefit at 1e-3, R's map swung by up to 0.1 in Spearman from one epoch to the next when R went on
    at 1e-3, and stayed within 0.80-0.84 when it went on at 1e-4 (``benchmarks/RESULTS.md``, "R's
    rate after the prefit").

    ``reblur_kernel_lr_scale``: R_kpn, the branch that predicts the kernel seeds, trains at this
    fraction of R's rate (a group of its own when not 1; ``ReblurNet.parameter_groups``).

    ``grad_clip``: ours, not the paper's (0: off, the paper): before each step, scale the
    deblurring net's gradients down to this global L2 norm when they exceed it (R's are left
    alone). Adam divides by a running gradient scale, so this mainly tames single steps whose
    gradient is far above that scale. The log's ``grad_norm`` is the norm before clipping.
    """

    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_step: int = 60
    lr_gamma: float = 0.5
    reblur_lr: float | None = None
    reblur_prefit_lr: float | None = None
    reblur_kernel_lr_scale: float = 1.0
    grad_clip: float = 0.0

    def effective_reblur_lr(self) -> float:
        """The reblurring net's learning rate: ``reblur_lr``, or ``min(lr, REBLUR_LR_CAP)`` when None."""
        return self.reblur_lr if self.reblur_lr is not None else min(self.lr, REBLUR_LR_CAP)

    def effective_reblur_prefit_lr(self) -> float:
        """The rate of the reblurring net's prefit steps: ``reblur_prefit_lr``, or
        :meth:`effective_reblur_lr` when None."""
        return self.reblur_prefit_lr if self.reblur_prefit_lr is not None else self.effective_reblur_lr()

    def reblur_group_needed(self) -> bool:
        """Whether R gets an Adam parameter group of its own: when ``reblur_lr`` is set or ``lr`` is
        above the cap (a run at ``lr <= REBLUR_LR_CAP`` without it keeps one group, so its
        checkpoints resume as before)."""
        return self.reblur_lr is not None or self.lr > REBLUR_LR_CAP or self.reblur_kernel_lr_scale != 1.0

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.reblur_lr is not None and not self.reblur_lr > 0:
            raise ConfigError(f"optim.reblur_lr must be > 0 or null, got {self.reblur_lr}")
        if self.reblur_prefit_lr is not None and not (self.reblur_prefit_lr > 0 and math.isfinite(self.reblur_prefit_lr)):
            raise ConfigError(f"optim.reblur_prefit_lr must be a finite number > 0 or null, got {self.reblur_prefit_lr}")
        if not (self.reblur_kernel_lr_scale > 0 and math.isfinite(self.reblur_kernel_lr_scale)):
            raise ConfigError(f"optim.reblur_kernel_lr_scale must be a finite number > 0, got {self.reblur_kernel_lr_scale}")
        if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
            raise ConfigError(f"optim.grad_clip must be a finite number >= 0 (0: off), got {self.grad_clip}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if self.eps <= 0:
            raise ConfigError(f"optim.eps must be > 0, got {self.eps}")
        if self.lr_step < 1:
            raise ConfigError(f"optim.lr_step must be >= 1 epoch, got {self.lr_step}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"optim.lr_gamma must lie in (0, 1], got {self.lr_gamma}")


@dataclass
class TrainConfig:
    """Loop settings.

    ``amp``: bf16 autocast of the deblurring net on CUDA (ignored on CPU; losses stay float32).
    ``deterministic``: deterministic algorithms, so a resumed run is identical to an uninterrupted one.
    ``val_every``: validate every N epochs (and after the last); ``val_metric`` picks best.pt.
    ``max_steps_per_epoch``: cut epochs short (smoke tests, quick ablations).
    ``device``: "auto" (CUDA when available), "cpu" or "cuda[:N]".
    ``ema_decay``: ours, not the paper's: validate and save an exponential moving average of the
    deblurring net's weights with this decay (0: off, the paper; 0.999 is a common choice for long
    runs; the decay applies once the warm-up of ``jdrl.weight_average`` exceeds it, after about
    ``(10 d - 1) / (1 - d)`` steps, ~9000 for 0.999). ``best.pt``/``last.pt`` then hold the average
    as ``averaged_model`` (what ``jdrl eval`` and ``jdrl deblur`` load) beside ``model``.
    """

    epochs: int = 200
    batch_size: int = 1
    seed: int = 0
    val_every: int = 1
    deterministic: bool = False
    amp: bool = True
    out_dir: str = "runs/jdrl"
    log_every: int = 50
    max_steps_per_epoch: int | None = None
    device: str = "auto"
    val_metric: str = "psnr"
    ema_decay: float = 0.0

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"train.max_steps_per_epoch must be >= 1 or null, got {self.max_steps_per_epoch}")
        if self.val_metric not in VAL_METRICS:
            raise ConfigError(f"train.val_metric must be one of {list(VAL_METRICS)} (higher is better), got {self.val_metric!r}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"train.device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (0: no average), got {self.ema_decay}")


@dataclass
class FlowConfig:
    """Flow estimator: ``jdrl.flow.build_flow_estimator(backend, weights)``."""

    backend: str = "dis"
    weights: str | None = None

    def validate(self) -> None:
        if not self.backend:
            raise ConfigError("flow.backend must be set (e.g. 'dis')")


@dataclass
class Config:
    """A whole experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)

    def validate(self) -> None:
        """Check every section and the rules across sections; raise ConfigError naming the key."""
        for section in (self.model, self.data, self.optim, self.train, self.flow):
            section.validate()
        try:
            self.loss.validate()
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if self.loss.pseudo_supervision and self.model.arch == "unet":
            raise ConfigError(
                "loss.pseudo_supervision=true needs a net that predicts a defocus map, but model.arch='unet' "
                "has none; set loss.pseudo_supervision=false (Eq. 1)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples) that YAML and ``torch.load(weights_only=True)`` accept."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation (and convert the few safe cases); ConfigError otherwise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(annotation)} (null allowed), got {value!r}")
    if origin is tuple:
        item_types = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{key} must be a list of {len(item_types)} values, got {value!r}")
        return tuple(_coerce(item, t, f"{key}[{i}]") for i, (item, t) in enumerate(zip(value, item_types, strict=True)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "2e-5" (no dot) as a string; accept it as the number it plainly is.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def _section_from_dict(cls: type, values: Any, prefix: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix} must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; known keys in {prefix}: {', '.join(names)}"
        )
    kwargs = {name: _coerce(values[name], hints[name], f"{prefix}.{name}") for name in names if name in values}
    try:
        return cls(**kwargs)
    except ValueError as error:  # LossConfig validates in __post_init__
        raise ConfigError(str(error)) from error


def config_from_dict(values: dict[str, Any] | None) -> Config:
    """Build and validate a Config from a nested dict (missing keys take defaults)."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; known sections: {', '.join(sections)}")
    hints = typing.get_type_hints(Config)
    config = Config(**{name: _section_from_dict(hints[name], values.get(name), name) for name in sections})
    config.validate()
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], yaml.safe_load(value)); ``"x=null"`` gives None."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key {key!r} is not a dotted name like train.epochs")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error})") from error
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: typing.Iterable[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the nested dict ``values`` with dotted overrides applied.

    ``overrides`` is either ``--set`` strings (``"loss.alpha=0.3"``) or a dict of dotted keys to
    values (as :data:`jdrl.losses.VARIANTS` holds). Unknown keys are caught later by
    :func:`config_from_dict`, which names them.
    """
    import copy

    result = copy.deepcopy(values) if values else {}
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(text) for text in overrides)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else list(key)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def load_config(path: str | os.PathLike | None = None, overrides: typing.Iterable[str] | dict[str, Any] = ()) -> Config:
    """Read a YAML config (None: all defaults), apply ``--set`` overrides, validate.

    Errors name the file and the key.
    """
    values: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    values = apply_overrides(values, overrides or ())
    try:
        return config_from_dict(values)
    except ConfigError as error:
        where = f" (in {path}" + (" with --set overrides)" if overrides else ")") if path else ""
        raise ConfigError(f"{error}{where}") from error


def save_config_yaml(config: Config | dict[str, Any], path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temp file in the same folder, then rename)."""
    values = config.to_dict() if isinstance(config, Config) else config
    with atomic_write(path, "w", durable=True) as stream:
        yaml.safe_dump(values, stream, sort_keys=False)
