"""Training loop of the reblurring-guided framework, and the ``jdrl train`` command.

``train(config)`` trains the deblurring net F and the reblurring net R jointly with
``jdrl.losses.JDRLLoss`` (paper section 4.1: Adam(0.9, 0.999, 1e-8), lr 2e-5 halved every 60 epochs,
200 epochs, batch 1, random 512 crops). It writes into ``config.train.out_dir``:

- ``config.yaml``: the resolved config;
- ``last.pt`` after every epoch, ``best.pt`` whenever the validation metric improves (only with a
  validation set, ``data.val_root``; a test set must never be used to pick a checkpoint);
- ``train_log.jsonl``: one JSON record per logged step, epoch and validation;
- TensorBoard scalars and sample images under ``tensorboard/`` when tensorboard is installed.

Launched by ``torchrun --nproc_per_node N -m jdrl.cli train ...`` it runs DistributedDataParallel
(NCCL on GPUs, gloo on CPUs) with a DistributedSampler; only rank 0 validates and writes files.

``--resume CKPT`` (or ``auto``: ``out_dir/last.pt`` if present) restores nets, optimizer,
scheduler, epoch, step and RNG states; with ``train.deterministic: true`` the resumed run equals
an uninterrupted one exactly. A non-finite loss stops training with :class:`NonFiniteLossError`
before the optimizer touches the weights, and leaves the last checkpoint as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from jdrl.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from jdrl.config import REBLUR_LR_CAP, Config, ConfigError, load_config, save_config_yaml
from jdrl.losses import JDRLLoss, LossOutput
from jdrl.errors import JdrlError
from jdrl.models.reblur_net import ReblurNet
from jdrl.weight_average import WeightAverage

__all__ = ["NonFiniteLossError", "TrainResult", "train", "register", "run"]


class NonFiniteLossError(JdrlError, RuntimeError):
    """The loss became NaN or infinite; the message names the step, the epoch and every term."""

    def __init__(
        self, step: int, epoch: int, terms: dict[str, float], last_checkpoint: Path | None, prefit: bool = False
    ) -> None:
        described = ", ".join(f"{name}={value:.6g}" for name, value in terms.items())
        kept = (
            f"the last good checkpoint {str(last_checkpoint)!r} is left as it was"
            if last_checkpoint is not None and last_checkpoint.exists()
            else "no checkpoint had been written yet"
        )
        if prefit:  # ``step`` counts the reblurring net's prefit steps (loss.reblur_prefit_steps)
            super().__init__(
                f"non-finite loss at step {step} of the reblurring net's prefit (loss.reblur_prefit_steps), "
                f"before the first epoch: {described}; training stopped before the update, {kept}. Lower "
                "optim.reblur_lr or check the data."
            )
        else:
            super().__init__(
                f"non-finite loss at step {step} (epoch {epoch}): {described}; training stopped before the "
                f"update, {kept}. Lower optim.lr or check the data."
            )
        self.step = step
        self.epoch = epoch
        self.terms = terms


@dataclass
class TrainResult:
    """What a training run produced.

    ``epoch_losses``: per epoch trained in this call or restored from the checkpoint, the mean of
    ``total`` and each loss term (averaged over DDP ranks), ``lr`` and ``epoch`` (1-based).
    ``prefit_seconds``: the time the reblurring net's prefit took before the first epoch (0 when
    there was none in this call), so that callers can time the epochs alone.
    ``val_metrics``: per validation, ``aligned_metrics`` averages and ``epoch``. Checkpoint paths
    and metrics are None where nothing was written (no validation set, or DDP ranks other than 0).
    ``net``: the trained deblurring net (this rank's replica, in eval mode), for use in-process;
    with ``train.ema_decay`` the average of its weights, the net that was validated and that
    :func:`jdrl.checkpoint.load_deblur_net` loads.
    """

    epoch_losses: list[dict[str, float]] = field(default_factory=list)
    val_metrics: list[dict[str, float]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    steps: int = 0
    out_dir: Path | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    net: nn.Module | None = field(default=None, repr=False)
    # Wall-clock seconds of the reblurring net's prefit (loss.reblur_prefit_steps) in this call.
    prefit_seconds: float = 0.0


@dataclass
class _Distributed:
    rank: int
    world_size: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={requested!r} but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device(requested if ":" in requested else f"cuda:{local_rank}")
    return torch.device(requested)


def _setup_distributed(config: Config) -> _Distributed:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    device = _pick_device(config.train.device, local_rank if world_size > 1 else 0)
    if world_size <= 1:
        return _Distributed(0, 1, device, created_group=False)
    created = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return _Distributed(dist.get_rank(), dist.get_world_size(), device, created)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _deterministic_mode(enabled: bool):
    """Deterministic algorithms for the run, restoring the process's previous settings after it."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    previous_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op without a deterministic kernel warns instead of stopping a long run.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous_cudnn


class _TrainStep(nn.Module):
    """Deblur, then compute the loss: one module, so DDP sees both nets' parameters in one forward.

    The deblurring net runs under bf16 autocast on CUDA when asked; the loss (flows, warps, the
    reblurring net and the fused reblur op) stays in float32.
    """

    def __init__(self, deblur_net: nn.Module, loss: JDRLLoss, amp: bool, device: torch.device) -> None:
        super().__init__()
        self.deblur_net = deblur_net
        self.loss = loss
        self.amp = amp and device.type == "cuda"
        self.device_type = device.type

    def forward(self, blurry: torch.Tensor, sharp: torch.Tensor, epoch: int) -> tuple[Any, LossOutput]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            output = self.deblur_net(blurry)
        sharp_est = output.sharp.float()
        defocus_map = output.defocus_map.float() if output.defocus_map is not None else None
        with torch.autocast(self.device_type, enabled=False):
            losses = self.loss(blurry, sharp, sharp_est, defocus_map, epoch)
        return output, losses


class _Logger:
    """train_log.jsonl, TensorBoard (optional) and messages; silent on DDP ranks other than 0."""

    def __init__(self, out_dir: Path, active: bool) -> None:
        self.active = active
        self.writer = None
        self.stream = None
        if not active:
            return
        self.stream = open(out_dir / "train_log.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.message("tensorboard is not installed (pip install tensorboard); logging to train_log.jsonl only")
        else:
            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def message(self, text: str) -> None:
        if self.active:
            # tqdm.write keeps the progress bar intact.
            from tqdm import tqdm

            tqdm.write(f"[jdrl train] {text}", file=sys.stderr)

    def record(self, kind: str, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        self.stream.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                if name != "epoch":
                    self.writer.add_scalar(f"{kind}/{name}", value, step)

    def images(self, step: int, images: dict[str, torch.Tensor]) -> None:
        if self.writer is not None:
            for name, image in images.items():
                self.writer.add_image(f"samples/{name}", image.clamp(0, 1), step)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.writer is not None:
            self.writer.close()


# The entropy word that separates the reblurring net's prefit draws from those of the epochs
# (_epoch_generator uses the epoch number there).
PREFIT_STREAM = 0x9E3779B9


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # The shuffle order is a function of (seed, epoch) alone, so resuming at an epoch boundary
    # replays exactly the batches an uninterrupted run would see.
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return generator


def _seed_worker(worker_id: int) -> None:
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _build_datasets(config: Config):
    from jdrl.data import PairedDataset

    data = config.data
    if data.root is None and (data.blur_dir is None or data.sharp_dir is None):
        raise ConfigError("data.root is not set: point it at the training pairs (or set data.blur_dir and data.sharp_dir)")
    train_set = PairedDataset(
        data.root,
        layout=data.layout,
        split=data.split,
        crop=data.crop,
        flip=data.flip,
        seed=config.train.seed,
        blur_dir=data.blur_dir,
        sharp_dir=data.sharp_dir,
    )
    if len(train_set) == 0:
        raise ConfigError(f"data.root={data.root!r} holds no training pairs")
    val_set = None
    if data.val_root is not None:
        val_set = PairedDataset(
            data.val_root, layout=data.val_layout, split=data.val_split, crop=data.val_crop, flip=False, seed=config.train.seed
        )
        if len(val_set) == 0:
            raise ConfigError(f"data.val_root={data.val_root!r} holds no validation pairs")
    return train_set, val_set


@torch.no_grad()
def _validate(net: nn.Module, val_set, flow_estimator, device: torch.device, amp: bool) -> tuple[dict[str, float], dict]:
    """Mean ``aligned_metrics`` over the validation set, and the first image triple for display."""
    from jdrl.metrics import aligned_metrics

    was_training = net.training
    net.eval()
    sums: dict[str, float] = {}
    samples: dict[str, torch.Tensor] = {}
    for index in range(len(val_set)):
        item = val_set[index]
        blurry = item["blurry"].unsqueeze(0).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            pred = net(blurry).sharp.float()
        metrics = aligned_metrics(pred.cpu(), item["sharp"].unsqueeze(0), flow_estimator)
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        if index == 0:
            samples = {"blurry": item["blurry"], "deblurred": pred[0].cpu(), "sharp": item["sharp"]}
    net.train(was_training)
    return {name: total / len(val_set) for name, total in sums.items()}, samples


def _checkpoint_state(
    config: Config,
    net: nn.Module,
    average: WeightAverage | None,
    loss: JDRLLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epochs_done: int,
    step: int,
    result: TrainResult,
) -> dict[str, Any]:
    """``model``: the weights the optimizer steps (what a resumed run trains on). With a weight
    average also ``averaged_model`` (what eval, deblur and the demo load) and ``weight_average``."""
    averaged = {} if average is None else {
        "averaged_model": average.net.state_dict(), "weight_average": average.state_dict()
    }
    return {
        "model": net.state_dict(),
        **averaged,
        "reblur": loss.reblur_net.state_dict() if loss.reblur_net is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epochs_done,
        "step": step,
        "rng": rng_state(),
        "config": config.to_dict(),
        "best_metric": result.best_metric,
        "best_epoch": result.best_epoch,
        "history": {"epoch_losses": result.epoch_losses, "val_metrics": result.val_metrics},
    }


def _resolve_resume(resume: str | os.PathLike | None, out_dir: Path) -> Path | None:
    if resume is None:
        return None
    if str(resume) == "auto":
        candidate = out_dir / "last.pt"
        return candidate if candidate.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {str(path)!r} does not exist")
    return path


def _restore(
    path: Path,
    config: Config,
    net: nn.Module,
    average: WeightAverage | None,
    loss: JDRLLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    result: TrainResult,
) -> tuple[int, int, list[str]]:
    """Load a checkpoint into the run; -> (epochs done, steps done, the settings that changed, as lines for the log)."""
    state = load_checkpoint(path)
    saved_model = state["config"].get("model")
    if saved_model != config.to_dict()["model"]:
        raise ConfigError(
            f"--resume {str(path)!r}: the checkpoint's model {saved_model} differs from the config's "
            f"{config.to_dict()['model']}"
        )
    net.load_state_dict(state["model"])
    if average is not None:
        if "averaged_model" in state:
            average.load_state_dict(state["averaged_model"], state["weight_average"])
        else:  # train.ema_decay set only now: the average starts from the weights resumed
            average.load_state_dict(net.state_dict(), {"updates": 0})
    if loss.reblur_net is not None:
        if state.get("reblur") is None:
            raise ConfigError(f"--resume {str(path)!r} has no reblurring net, but loss.reblurring is true")
        loss.reblur_net.load_state_dict(state["reblur"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as error:  # a different number or size of parameter groups
        raise ConfigError(
            f"--resume {str(path)!r}: the checkpoint's optimizer does not fit this config ({error}); "
            "were optim.reblur_lr or optim.reblur_kernel_lr_scale set in one run and not in the other? Unset, it is "
            f"min(optim.lr, {REBLUR_LR_CAP:g}), a group of its own when optim.lr > {REBLUR_LR_CAP:g} (before 2026-12-01 "
            "the cap was 1e-4: runs at lr in (1e-4, 1e-3] then had R in a group of its own at 1e-4); set "
            "optim.reblur_lr to the checkpoint's rate to resume it"
        ) from error
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    history = state.get("history") or {}
    result.epoch_losses = list(history.get("epoch_losses", []))
    result.val_metrics = list(history.get("val_metrics", []))
    result.best_metric = state.get("best_metric")
    result.best_epoch = state.get("best_epoch")
    changed = _changed_loss_settings(state["config"], config)
    saved_clip = (state["config"].get("optim") or {}).get("grad_clip", 0.0)
    if saved_clip != config.optim.grad_clip:
        changed.append(f"optim.grad_clip: {saved_clip} -> {config.optim.grad_clip}")
    saved_decay = (state.get("weight_average") or {}).get("decay", 0.0)
    if saved_decay != config.train.ema_decay:
        # best.pt was picked by validating the other net (the average or the trained weights).
        changed.append(f"train.ema_decay: {saved_decay} -> {config.train.ema_decay} (best.pt so far scored "
                       f"{'the weight average' if saved_decay else 'the trained weights'})")
    return int(state["epoch"]), int(state["step"]), changed


def _changed_loss_settings(saved: dict[str, Any], config: Config) -> list[str]:
    """``loss.*`` keys whose value differs from the checkpoint's (keys it lacks: "absent", e.g.
    a checkpoint from before ``loss.seed_bound`` existed, trained with unbounded seeds)."""
    saved_loss = saved.get("loss") or {}
    return [
        f"loss.{key}: {saved_loss.get(key, 'absent')} -> {value}"
        for key, value in config.to_dict()["loss"].items()
        if saved_loss.get(key, "absent") != value
    ]


def clip_or_measure_gradients(net: nn.Module, clip: float) -> torch.Tensor:
    """The global L2 norm of ``net``'s gradients; with ``clip > 0`` they are also scaled down to
    that norm when it is larger (``optim.grad_clip``). The norm returned is the one before clipping."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    return torch.nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])


def _finite_everywhere(total: torch.Tensor, distributed: _Distributed) -> bool:
    """True when the loss is finite on every rank (so all ranks stop together, none hangs)."""
    finite = torch.isfinite(total.detach()).to(torch.float32).reshape(1)
    if distributed.enabled:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() > 0)


def train(config: Config, resume: str | os.PathLike | None = None) -> TrainResult:
    """Train the deblurring and reblurring nets as ``config`` says.

    Args:
        config: a validated :class:`jdrl.config.Config`.
        resume: None (start fresh), a checkpoint path, or ``"auto"`` (``out_dir/last.pt`` when it
            exists, else start fresh).

    Returns:
        A :class:`TrainResult`. Raises :class:`NonFiniteLossError` when a loss becomes NaN or inf.
    """
    config.validate()
    distributed = _setup_distributed(config)
    try:
        with _deterministic_mode(config.train.deterministic):
            return _train(config, resume, distributed)
    finally:
        if distributed.created_group:
            dist.destroy_process_group()


def _train(config: Config, resume: str | os.PathLike | None, distributed: _Distributed) -> TrainResult:
    """Build the run, restore ``resume``, wrap for DDP, open the log, then train (``_Trainer``)."""
    trainer = _Trainer(config, distributed)
    trainer.restore(resume)
    trainer.wrap_for_distributed()
    trainer.open_log(resume)
    return trainer.fit()


def _build_optimizer(config: Config, net: nn.Module, loss: JDRLLoss, step_module: nn.Module) -> torch.optim.Optimizer:
    """Adam over F and R: one parameter group, or a second for R when its rate differs."""
    reblur_parameters = list(loss.parameters())
    if config.optim.reblur_group_needed() and reblur_parameters:
        # Groups of R's own only when its rate differs or is asked for, so that checkpoints of
        # one-group runs (lr <= REBLUR_LR_CAP, no reblur_lr) still resume.
        reblur_lr, kernel_scale = config.optim.effective_reblur_lr(), config.optim.reblur_kernel_lr_scale
        if isinstance(loss.reblur_net, ReblurNet):
            reblur_groups = loss.reblur_net.parameter_groups(reblur_lr, kernel_scale)
        elif kernel_scale == 1.0:  # a reblurring net of the caller's own: one group
            reblur_groups = [{"params": reblur_parameters, "lr": reblur_lr}]
        else:
            raise ConfigError("optim.reblur_kernel_lr_scale needs jdrl's ReblurNet (it names the seeds' branch)")
        in_groups = {id(parameter) for group in reblur_groups for parameter in group["params"]}
        if {id(parameter) for parameter in reblur_parameters} != in_groups:
            raise RuntimeError("the loss has trainable parameters outside its reblurring net; _build_optimizer must place them")
        parameter_groups = [{"params": list(net.parameters())}, *reblur_groups]
    else:
        parameter_groups = [{"params": list(step_module.parameters())}]
    return torch.optim.Adam(parameter_groups, lr=config.optim.lr, betas=tuple(config.optim.betas), eps=config.optim.eps)


def _reblur_waits_for_warmup(config: Config, loss: JDRLLoss, start_epoch: int) -> bool:
    """Whether R gets no gradient at ``start_epoch``: it joins after the flow warm-up
    (``loss.reblur_after_warmup``) and does not pretrain during it (``loss.reblur_pretrain``)."""
    return (
        loss.reblur_net is not None
        and config.loss.reblur_after_warmup
        and not config.loss.reblur_pretrain
        and start_epoch < config.loss.flow_warmup_epochs
    )


class _Trainer:
    """One run of :func:`train`, with each part of the loop as a named step.

    ``__init__`` builds the data, the nets (drawn right after seeding), the loss, the optimizer and
    the scheduler; then :meth:`restore`, :meth:`wrap_for_distributed` and :meth:`open_log` prepare
    the run, and :meth:`fit` trains: per epoch :meth:`train_epoch` (:meth:`train_step` per batch),
    :meth:`end_epoch` (means, scheduler, log), :meth:`validate` (rank 0, best tracking) and
    :meth:`save_checkpoints`. The order of these calls is the order of every draw from the RNGs,
    so it fixes what a seed and a resumed run reproduce.
    """

    def __init__(self, config: Config, distributed: _Distributed) -> None:
        from jdrl.flow import build_flow_estimator
        from jdrl.models import build_deblur_net

        self.config = config
        self.distributed = distributed
        self.device = distributed.device
        self.out_dir = Path(config.train.out_dir)
        if distributed.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.last_path, self.best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        self.train_set, self.val_set = _build_datasets(config)

        # One seed for the weights on every rank (DDP also broadcasts rank 0's at wrap time).
        _seed_everything(config.train.seed)
        self.net = build_deblur_net(config.model.arch, config.model.preset, config.model.levels).to(self.device)
        # The weight average (train.ema_decay): validated, and saved as averaged_model beside the net;
        # None: the net itself is validated.
        self.average = WeightAverage(self.net, config.train.ema_decay) if config.train.ema_decay > 0 else None
        self.flow_estimator = build_flow_estimator(config.flow.backend, config.flow.weights)
        self.loss = JDRLLoss(config.loss, self.flow_estimator, levels=config.model.levels).to(self.device)
        self.step_module = _TrainStep(self.net, self.loss, config.train.amp, self.device)
        self.optimizer = _build_optimizer(config, self.net, self.loss, self.step_module)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.optim.lr_step, gamma=config.optim.lr_gamma
        )
        self.result = TrainResult(out_dir=self.out_dir)
        self.start_epoch, self.step = 0, 0
        self.changed_settings: list[str] = []
        self.resume_path: Path | None = None
        self.model: nn.Module = self.step_module  # the DDP wrapper after wrap_for_distributed
        self.sampler: DistributedSampler | None = None
        self.logger: _Logger | None = None

    def restore(self, resume: str | os.PathLike | None) -> None:
        """Continue from ``resume`` (a path, ``"auto"`` or None): nets, optimizer, scheduler, RNGs."""
        self.resume_path = _resolve_resume(resume, self.out_dir)
        if self.resume_path is not None:
            self.start_epoch, self.step, self.changed_settings = _restore(
                self.resume_path, self.config, self.net, self.average, self.loss, self.optimizer, self.scheduler,
                self.result,
            )

    def wrap_for_distributed(self) -> None:
        """Under torchrun: DistributedDataParallel and a DistributedSampler; alone, nothing."""
        distributed = self.distributed
        if not distributed.enabled:
            return
        # While the reblurring net waits for the flow warm-up it gets no gradient; DDP must then
        # be told to look for unused parameters (a small per-step cost, so only when needed).
        self.model = nn.parallel.DistributedDataParallel(
            self.step_module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=_reblur_waits_for_warmup(self.config, self.loss, self.start_epoch),
        )
        self.sampler = DistributedSampler(
            self.train_set,
            num_replicas=distributed.world_size,
            rank=distributed.rank,
            shuffle=True,
            seed=self.config.train.seed,
        )

    def open_log(self, resume: str | os.PathLike | None) -> None:
        """The logger; on rank 0 also ``config.yaml`` and the opening messages."""
        config, loss = self.config, self.loss
        self.logger = _Logger(self.out_dir, self.distributed.is_main)
        if not self.distributed.is_main:
            return
        save_config_yaml(config, self.out_dir / "config.yaml")
        if loss.reblur_net is not None and config.optim.effective_reblur_lr() != config.optim.lr:
            how = "optim.reblur_lr" if config.optim.reblur_lr is not None else f"optim.reblur_lr unset: min(optim.lr, {REBLUR_LR_CAP:g})"
            self.logger.message(f"the reblurring net trains at lr {config.optim.effective_reblur_lr():g} ({how})")
        if self.resume_path is not None:
            self.logger.message(f"resumed from {self.resume_path} at epoch {self.start_epoch}, step {self.step}")
            if self.changed_settings:
                self.logger.message("settings that differ from the checkpoint's: " + "; ".join(self.changed_settings))
        elif resume is not None:
            self.logger.message(f"--resume {resume}: no {self.last_path} yet, starting fresh")

    def fit(self) -> TrainResult:
        """R's prefit (a fresh run with ``loss.reblur_prefit_steps``), then every remaining epoch:
        train, end it, validate, checkpoint; then the result."""
        try:
            if self.start_epoch == 0 and self.step == 0:
                self.prefit_reblur()
            for epoch in range(self.start_epoch, self.config.train.epochs):
                sums, started = self.train_epoch(epoch)
                self.end_epoch(epoch, sums, started)
                improved = self.validate(epoch)
                self.save_checkpoints(epoch, improved)
                if self.distributed.enabled:
                    dist.barrier()
        finally:
            self.logger.close()
        result = self.result
        result.steps = self.step
        result.net = self.net.eval() if self.average is None else self.average.net
        if self.distributed.is_main:
            result.last_checkpoint = self.last_path if self.last_path.exists() else None
            result.best_checkpoint = (
                self.best_path if self.best_path.exists() and result.best_metric is not None else None
            )
        return result

    def prefit_reblur(self) -> None:
        """``loss.reblur_prefit_steps`` Adam steps of R alone on its fit term, each on a random
        window of a random training pair (``JDRLLoss.reblur_prefit``), at ``optim.reblur_prefit_lr``;
        F is untouched (its parameters get no gradient, so Adam leaves them and their state alone).

        The draws come from a generator of their own (seeded by ``train.seed``), so the epochs
        after it draw as without it. Each pair is read, cropped and flipped as in epoch 0 (with
        ``data.crop`` R sees that crop of each pair) and aligned by the flow at every step, a small
        cost beside R's own step. It runs whatever trains R afterwards (anchored, or Eq. 2's R on
        ``(I_hat, I_B)``): it fits R as ``loss.reblur_pretrain`` does. No checkpoint is written
        before the first epoch ends: a run stopped here starts again from scratch, prefit included.
        Under DDP every rank takes the same draws, and rank 0's R is broadcast after it, since DDP
        synchronizes only what passes through its wrapper (Adam's state for R is each rank's own).
        The log's first and last fit values are those of single windows, not means."""
        steps = self.config.loss.reblur_prefit_steps
        reblur_net = self.loss.reblur_net
        if steps == 0 or reblur_net is None:
            return
        began = time.perf_counter()
        # The prefit's own rate (optim.reblur_prefit_lr): every group's rate is scaled for these
        # steps and put back after them. Only R's parameters get gradients here, so only R's groups
        # take steps (in a one-group run the shared group's rate is R's), and R_kpn keeps its
        # fraction of R's rate (optim.reblur_kernel_lr_scale).
        scale = self.config.optim.effective_reblur_prefit_lr() / self.config.optim.effective_reblur_lr()
        rates = [group["lr"] for group in self.optimizer.param_groups]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate * scale
        try:
            first, last = self._prefit_steps(steps)
        finally:
            for group, rate in zip(self.optimizer.param_groups, rates):
                group["lr"] = rate
        if self.distributed.enabled:
            for tensor in [*reblur_net.parameters(), *reblur_net.buffers()]:
                dist.broadcast(tensor.data, src=0)
        self.result.prefit_seconds = time.perf_counter() - began
        self.logger.record("prefit", 0, {"reblur_prefit_first": first, "reblur_prefit_last": last,
                                         "steps": steps, "seconds": self.result.prefit_seconds})
        self.logger.message(
            f"reblurring net prefit: {steps} steps at lr {self.config.optim.effective_reblur_prefit_lr():g} on "
            f"{self.config.loss.reblur_prefit_crop} px windows of the "
            f"flow-aligned training pairs, fit {first:.4f} (first window) -> {last:.4f} (last window), "
            f"{self.result.prefit_seconds:.0f} s"
        )

    def _prefit_steps(self, steps: int) -> tuple[float, float]:
        """The prefit's ``steps`` Adam steps; -> R's fit term on the first and on the last window."""
        generator = torch.Generator()
        generator.manual_seed(int(np.random.SeedSequence([self.config.train.seed, PREFIT_STREAM]).generate_state(1)[0]))
        self.train_set.set_epoch(0)
        self.loss.reblur_net.train()
        first = last = None
        for step in range(1, steps + 1):
            pair = self.train_set[int(torch.randint(len(self.train_set), (1,), generator=generator))]
            blurry, sharp = pair["blurry"][None].to(self.device), pair["sharp"][None].to(self.device)
            loss, terms = self.loss.reblur_prefit(blurry, sharp, generator)
            if not _finite_everywhere(loss, self.distributed):
                values = {"total": float(loss.detach()), **{name: float(value.detach()) for name, value in terms.items()}}
                raise NonFiniteLossError(step, 0, values, None, prefit=True)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            last = float(terms["reblur_prefit"].detach())
            first = last if first is None else first
        self.optimizer.zero_grad(set_to_none=True)
        return first, last

    def epoch_loader(self, epoch: int) -> DataLoader:
        """This epoch's batches: crops and shuffle order are functions of (seed, epoch)."""
        self.train_set.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.config.train.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=self.config.data.workers,
            generator=_epoch_generator(self.config.train.seed, epoch),
            worker_init_fn=_seed_worker,
            pin_memory=self.device.type == "cuda",
        )

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], float]:
        """Train one epoch; -> (per-term sums over its steps, with their count in ``_count``; start time)."""
        from tqdm import tqdm

        config = self.config
        loader = self.epoch_loader(epoch)
        steps_this_epoch = len(loader)
        if config.train.max_steps_per_epoch is not None:
            steps_this_epoch = min(steps_this_epoch, config.train.max_steps_per_epoch)
        self.model.train()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        bar = tqdm(
            total=steps_this_epoch,
            desc=f"epoch {epoch + 1}/{config.train.epochs}",
            disable=not self.distributed.is_main,
            dynamic_ncols=True,
            leave=False,
        )
        for batch_index, batch in enumerate(loader):
            if batch_index >= steps_this_epoch:
                break
            values = self.train_step(batch, epoch)
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            sums["_count"] = sums.get("_count", 0.0) + 1
            bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
            bar.update(1)
            if self.step % config.train.log_every == 0:
                self.logger.record(
                    "train", self.step, {**values, "lr": self.optimizer.param_groups[0]["lr"], "epoch": epoch + 1}
                )
        bar.close()
        return sums, started

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, float]:
        """One optimizer step on ``batch``; -> the loss terms and statistics as floats.

        A non-finite loss on any rank raises :class:`NonFiniteLossError` before the update.
        """
        blurry = batch["blurry"].to(self.device, non_blocking=True)
        sharp = batch["sharp"].to(self.device, non_blocking=True)
        _, losses = self.model(blurry, sharp, epoch)
        terms = {"total": losses.total, **losses.terms}
        if not _finite_everywhere(losses.total, self.distributed):
            raise NonFiniteLossError(
                self.step + 1, epoch + 1, {k: float(v.detach()) for k, v in terms.items()}, self.last_path
            )
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        # F's gradients only (under DDP already averaged over the ranks, so every rank clips alike).
        grad_norm = clip_or_measure_gradients(self.net, self.config.optim.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.net)
        self.step += 1
        return {k: float(v.detach()) for k, v in {**terms, **losses.stats, "grad_norm": grad_norm}.items()}

    def end_epoch(self, epoch: int, sums: dict[str, float], started: float) -> None:
        """The epoch's means (over steps and ranks) into the result and the log; the scheduler steps."""
        epoch_record = _reduce_means(sums, self.distributed)
        epoch_record["epoch"] = epoch + 1
        epoch_record["lr"] = self.optimizer.param_groups[0]["lr"]
        epoch_record["seconds"] = time.perf_counter() - started
        self.result.epoch_losses.append(epoch_record)
        self.scheduler.step()
        self.logger.record("epoch", self.step, epoch_record)
        self.logger.message(
            f"epoch {epoch + 1}/{self.config.train.epochs} step {self.step}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in epoch_record.items() if k not in ("epoch", "lr", "seconds"))
        )

    def validate(self, epoch: int) -> bool:
        """Validate on rank 0 every ``train.val_every`` epochs and after the last; -> whether
        ``train.val_metric`` improved on the best so far (False when there was no validation)."""
        config, result = self.config, self.result
        is_last_epoch = epoch + 1 == config.train.epochs
        due = (epoch + 1) % config.train.val_every == 0 or is_last_epoch
        if self.val_set is None or not self.distributed.is_main or not due:
            return False
        validated = self.net if self.average is None else self.average.net
        metrics, samples = _validate(validated, self.val_set, self.flow_estimator, self.device, config.train.amp)
        metrics["epoch"] = epoch + 1
        result.val_metrics.append(metrics)
        self.logger.record("val", self.step, metrics)
        self.logger.images(self.step, samples)
        value = metrics[config.train.val_metric]
        improved = result.best_metric is None or value > result.best_metric
        if improved:
            result.best_metric, result.best_epoch = value, epoch + 1
        self.logger.message(
            f"validation after epoch {epoch + 1}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
            + (" (best so far)" if improved else "")
        )
        return improved

    def save_checkpoints(self, epoch: int, improved: bool) -> None:
        """Rank 0 writes ``last.pt`` (atomically) after every epoch, and ``best.pt`` when improved."""
        if not self.distributed.is_main:
            return
        state = _checkpoint_state(
            self.config, self.net, self.average, self.loss, self.optimizer, self.scheduler, epoch + 1, self.step, self.result
        )
        save_checkpoint(self.last_path, state)
        if improved:
            save_checkpoint(self.best_path, state)


def _reduce_means(sums: dict[str, float], distributed: _Distributed) -> dict[str, float]:
    """Per-term means over the epoch's steps (and over the DDP ranks)."""
    names = sorted(name for name in sums if name != "_count")
    totals = torch.tensor([sums[name] for name in names] + [sums.get("_count", 0.0)], dtype=torch.float64)
    if distributed.enabled:
        totals = totals.to(distributed.device)
        dist.all_reduce(totals)
        totals = totals.cpu()
    count = max(totals[-1].item(), 1.0)
    return {name: totals[i].item() / count for i, name in enumerate(names)}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``jdrl train``."""
    parser = subparsers.add_parser(
        "train",
        help="train the deblurring net on (misaligned) blurry/sharp pairs",
        description=(
            "Train F and R jointly (paper Eq. 2, or a variant). Multi-GPU/CPU: "
            "torchrun --nproc_per_node N -m jdrl.cli train --config ..."
        ),
    )
    parser.add_argument("--config", help="YAML config (see configs/); omitted: all defaults")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, VALUE read as YAML (repeatable), e.g. --set optim.lr=1e-4",
    )
    parser.add_argument("--resume", metavar="CKPT|auto", help="continue from a checkpoint, or 'auto' for out_dir/last.pt")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``jdrl train``: 0 on success. Errors propagate to ``jdrl.cli.main`` (one line, exit 1 or 2);
    Ctrl-C stops at the last completed epoch's checkpoint, which ``--resume auto`` continues."""
    from jdrl.process_env import flush_denormals

    # Saturated softmaxes in the reblurring net underflow into subnormal floats, which x86 CPUs
    # process many times slower (see flush_denormals); a command may change this process-wide
    # setting, a library call (train()) leaves it to the caller.
    flush_denormals()
    config = load_config(args.config, args.overrides)
    try:
        result = train(config, resume=args.resume)
    except KeyboardInterrupt:
        # Checkpoints are written atomically after each epoch, so the last one on disk is whole;
        # the epoch in progress is lost and `--resume auto` repeats it.
        last_path = Path(config.train.out_dir) / "last.pt"
        kept = (
            f"the last checkpoint {str(last_path)!r} is intact; continue with the same command and --resume auto"
            if last_path.exists()
            else "no epoch had completed, so no checkpoint was written"
        )
        print(f"jdrl train: interrupted; {kept}", file=sys.stderr)
        return 130
    if result.last_checkpoint is not None:
        final = result.epoch_losses[-1] if result.epoch_losses else {}
        total = final.get("total", math.nan)
        print(f"trained {result.steps} steps; final epoch loss {total:.4f}; last checkpoint {result.last_checkpoint}")
        if result.best_checkpoint is not None:
            print(
                f"best {config.train.val_metric} {result.best_metric:.4f} at epoch {result.best_epoch}: "
                f"{result.best_checkpoint}"
            )
    return 0
