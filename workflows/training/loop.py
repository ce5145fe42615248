"""The per-worker training loop Ray Train runs: seed, build, preflight, restore, re-apply, loop, report.

Every step skips (and counts) the optimizer step when the loss or the gradient norm is not finite, clips the
gradient norm to ``grad_clip`` and records the pre-clip norm. Every epoch the workers all-reduce their sums, so each
reports the same global metrics, and rank 0 writes a checkpoint. A diverged run reports finite sentinel values and
``diverged=True``, never NaN: population-based training ranks trials by sorting scores, and NaN sorts anywhere.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from data.format import PatchMetadata
from data.pipeline import LABEL_COLUMN, PIXELS_COLUMN, BandStats, D4Collate
from resnet import ResNet, ResNetConfig, unwrap
from resnet.preflight import check as preflight_check
from workflows.training.checkpoint import load_checkpoint, run_facts, save_checkpoint, training_state
from workflows.training.config import TrainConfig
from workflows.training.hyperparams import apply_to_optimizer, reported_values
from workflows.training.mailbox import wait_for_command
from workflows.training.metrics import accuracy_from_confusion, macro_f1_from_confusion
from workflows.training.placement import current_placement_group, record_placement_group
from workflows.training.ray_private import quiet_worker_logs
from workflows.training.shard_cache import CachedShard, as_tensors

log = logging.getLogger(__name__)

# Finite stand-in for a loss or norm that is NaN or infinite (the raw value cannot travel to Tune).
SENTINEL = 1e6
# An epoch counts as diverged when more than this share of its steps were skipped as non-finite...
DIVERGED_SKIP_SHARE = 0.5
# ...or when its mean training loss (applied steps) or validation loss exceeds this many times that of a uniform
# guess (ln K).
DIVERGED_LOSS_FACTOR = 10.0
EVAL_BATCH_SIZE = 256
# Rows each worker shuffles locally, in batches, on top of the shuffled block order.
SHUFFLE_BATCHES = 8
PREFLIGHT_BATCH = 8


def build_model(
    metadata: PatchMetadata, cfg: TrainConfig, upsample_to: int | None = None
) -> tuple[ResNet, ResNetConfig]:
    """The ResNet for a dataset's shape and the run's width and dropout (``upsample_to``: see ``ResNetConfig``)."""
    model_cfg = ResNetConfig.from_metadata(
        metadata, channels=cfg.channels, dropout=cfg.dropout, upsample_to=upsample_to
    )
    return ResNet(model_cfg), model_cfg


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum over all parameters of ``model``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(values: list[float], op: dist.ReduceOp, device: torch.device) -> np.ndarray:
    """Element-wise reduction over the workers, on the training device (NCCL reduces only CUDA tensors)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if _distributed():
        dist.all_reduce(tensor, op=op)
    return tensor.cpu().numpy()


def _all_agree(yes: bool, device: torch.device) -> bool:
    """Whether every worker says yes."""
    return bool(_all_reduce([float(yes)], dist.ReduceOp.MIN, device)[0])


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batches: Any,
    clip_norm: float | None,
    device: torch.device,
) -> dict[str, float]:
    """One pass over this worker's training shard with the numerical-health guards.

    Returns:
        Local sums: ``loss_sum`` and ``samples`` over the applied steps, ``steps``, ``skipped``, and the pre-clip
        gradient norms' ``norm_sum``, ``norm_count`` and ``norm_max`` (finite norms only).
    """
    model.train()
    sums = {"loss_sum": 0.0, "samples": 0.0, "steps": 0.0, "skipped": 0.0, "norm_sum": 0.0, "norm_count": 0.0}
    sums["norm_max"] = 0.0
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    for batch in batches:
        x, y = batch[PIXELS_COLUMN].to(device), batch[LABEL_COLUMN].to(device)  # (B, C, H, W), (B,)
        # A non-finite forward pass would poison BatchNorm's running statistics even if its step is skipped.
        saved = [b.detach().clone() for b in buffers]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        # Pre-clip norm; clipping to inf only measures. Under DDP the gradients are already averaged.
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), clip_norm if clip_norm else math.inf))
        loss_value = float(loss.detach())
        bad = not (math.isfinite(loss_value) and math.isfinite(norm))
        # Every worker must agree to skip, or their weights would drift apart.
        bad = bool(_all_reduce([float(bad)], dist.ReduceOp.MAX, device)[0])
        sums["steps"] += 1
        if bad:
            sums["skipped"] += 1
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, old in zip(buffers, saved, strict=True):
                    b.copy_(old)
            continue
        optimizer.step()  # after unscale-free clipping above
        sums["loss_sum"] += loss_value * len(y)
        sums["samples"] += len(y)
        sums["norm_sum"] += norm
        sums["norm_count"] += 1
        sums["norm_max"] = max(sums["norm_max"], norm)
    return sums


@torch.no_grad()
def evaluate_shard(
    model: nn.Module, loss_fn: nn.Module, batches: Any, num_classes: int, rank: int, world: int
) -> tuple[float, float, np.ndarray]:
    """Loss sum, sample count and confusion matrix over this worker's share (every ``world``-th batch).

    Non-finite per-sample losses are counted separately by the caller through a non-finite sum.
    """
    model.eval()
    loss_sum, count = 0.0, 0.0
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    for index, batch in enumerate(batches):
        if index % world != rank:
            continue
        x, y = batch[PIXELS_COLUMN], batch[LABEL_COLUMN]
        logits = model(x)
        loss_sum += float(loss_fn(logits, y)) * len(y)
        count += len(y)
        predicted = logits.argmax(dim=1).cpu().numpy()
        np.add.at(confusion, (y.cpu().numpy(), predicted), 1)
    return loss_sum, count, confusion


def _capped(value: float) -> float:
    """``value``, or ``SENTINEL`` in place of anything larger, infinite or NaN."""
    return min(value, SENTINEL) if math.isfinite(value) else SENTINEL


def epoch_metrics(
    epoch: int,
    train: dict[str, float],
    val_loss_sum: float,
    val_count: float,
    confusion: np.ndarray,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """Global metrics of one epoch from all-reduced sums; every value finite."""
    steps = max(train["steps"], 1.0)
    val_loss = val_loss_sum / max(val_count, 1.0)
    # Mean over the applied steps; none applied (every step skipped) is judged by the skipped share alone.
    train_loss = train["loss_sum"] / train["samples"] if train["samples"] else None
    limit = DIVERGED_LOSS_FACTOR * math.log(len(confusion))  # ln K: the loss of a uniform guess
    # A step whose loss is huge but finite is applied, and can leave weights that validate near a uniform guess:
    # the training loss must count too, not only the validation loss. "not x <= limit" is also true for NaN and inf.
    diverged = (
        train["skipped"] / steps > DIVERGED_SKIP_SHARE
        or not val_loss <= limit
        or (train_loss is not None and not train_loss <= limit)
    )
    metrics = {
        "epoch": epoch,
        "train_loss": SENTINEL if train_loss is None else _capped(train_loss),
        "val_loss": _capped(val_loss),
        "val_acc": accuracy_from_confusion(confusion),
        "val_macro_f1": macro_f1_from_confusion(confusion),
        "grad_norm_mean": _capped(train["norm_sum"] / train["norm_count"]) if train["norm_count"] else SENTINEL,
        "grad_norm_max": _capped(train["norm_max"]) if train["norm_count"] else SENTINEL,
        "skipped_steps": int(train["skipped"]),
        "steps": int(train["steps"]),
        "diverged": bool(diverged),
        **reported_values(cfg),
    }
    # Plain Python numbers: checkpoints are read back with weights_only=True, which refuses numpy scalars.
    return {k: v if isinstance(v, (bool, int)) else float(v) for k, v in metrics.items()}


def _preflight(model: nn.Module, optimizer: torch.optim.Optimizer, model_cfg: ResNetConfig, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    shape = (PREFLIGHT_BATCH, model_cfg.in_channels, model_cfg.height, model_cfg.width)
    inputs = torch.randn(shape, generator=generator)  # normalised data has unit scale
    targets = torch.randint(0, model_cfg.num_classes, (PREFLIGHT_BATCH,), generator=generator)
    preflight_check(model, optimizer, inputs, targets)


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, source: str) -> tuple[int, int, dict | None]:
    """Load model and optimizer state from a checkpoint folder; returns its epoch, command number and metrics."""
    state = load_checkpoint(source)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), int(state.get("command", 0)), state.get("metrics")


def _ray_checkpoint_source() -> Any:
    """Ray's own latest checkpoint of this run (after a worker-group restart), as a context giving a folder."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    return checkpoint.as_directory() if checkpoint is not None else None


def next_command(control: str | None, number: int, rank: int, device: torch.device) -> dict[str, Any]:
    """The caller's command ``number`` for the next epoch, read by rank 0 and handed to every worker.

    Without a control folder (``train.py``) every epoch simply goes on. With one (a long-lived PBT member), rank 0
    waits for ``command-<number>.json``: ``{"load": folder or None, "hyper": {...}}`` means "optionally load this
    checkpoint, set these hyperparameters, train one epoch"; ``"fresh": true`` first goes back to the freshly seeded
    state (epoch 0); a ``stop`` file (or ``{"stop": true}``) ends the run.
    """
    if control is None:
        return {}
    command = wait_for_command(Path(control), number) if rank == 0 else {}
    if _distributed():
        box = [command]
        dist.broadcast_object_list(box, src=0, device=device)
        command = box[0]
    return command


def _save_and_report(metrics: dict[str, Any], state: dict[str, Any] | None, with_checkpoint: bool, rank: int) -> None:
    """Report one epoch to Ray Train, with a checkpoint written by rank 0 when asked."""
    import ray.train

    if not with_checkpoint:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        if rank == 0 and state is not None:
            save_checkpoint(directory, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics, checkpoint=None)


def train_func_per_worker(config: dict[str, Any]) -> None:
    """Train on one Ray Train worker; every worker runs this with the same ``config``.

    Args:
        config: ``train`` (the :class:`TrainConfig`), ``metadata`` (the dataset's :class:`PatchMetadata`),
            ``band_stats`` (the training split's :class:`BandStats`), optionally ``resume_from`` (a checkpoint
            folder to start from), ``stop_file`` (whose appearance ends the run after the current epoch's report),
            ``control`` (a folder of commands: the run then waits for one before every epoch, see
            :func:`next_command`) and ``owner`` (a name under which rank 0 records the workers' placement group, see
            :mod:`workflows.training.placement`).
    """
    import ray.train
    import ray.train.torch

    quiet_worker_logs()

    cfg: TrainConfig = config["train"]
    metadata: PatchMetadata = config["metadata"]
    stats: BandStats = config["band_stats"]
    control = config.get("control")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if rank == 0 and config.get("owner") and (group := current_placement_group()):
        record_placement_group(config["owner"], group)  # before any work: a process may die at any epoch
    if not cfg.gpu:
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    model, model_cfg, optimizer, device = _build_worker_model(metadata, cfg, rank)
    # Restore: Ray's own checkpoint after a worker failure wins over the one we were started from.
    epoch, done_commands = _restore_start(model, optimizer, config.get("resume_from"))

    # Re-apply the mutated hyperparameters: loading optimizer state brought back the donor's.
    apply_to_optimizer(optimizer, cfg)
    # A long-lived member may be handed to a trial that starts from scratch (Tune reuses its process): keep the
    # freshly seeded state for that.
    fresh = (copy.deepcopy(unwrap(model).state_dict()), copy.deepcopy(optimizer.state_dict())) if control else None

    agree = functools.partial(_all_agree, device=device)
    shards = (
        CachedShard(ray.train.get_dataset_shard("train"), agree=agree),
        CachedShard(ray.train.get_dataset_shard("val")),
    )

    # Loop and report: one epoch per command (or per pass, without a control folder).
    while control is not None or epoch < cfg.epochs:
        command = next_command(control, done_commands + 1, rank, device)
        if command.get("stop"):
            return
        done_commands += 1
        epoch, cfg, loaded_metrics = _apply_command(command, model, optimizer, fresh, epoch, cfg)
        started = time.perf_counter()
        trains = epoch < cfg.epochs  # a member handed a final checkpoint only evaluates it
        if trains:
            epoch += 1
            metrics = _train_and_validate(model, optimizer, shards, metadata, cfg, epoch, rank, world, device)
        elif loaded_metrics:
            # Handed a final checkpoint (an exploit at the donor's last epoch): its epoch's report, with our settings.
            metrics = {**loaded_metrics, **reported_values(cfg)}
        else:
            raise RuntimeError(f"asked to train past the last epoch ({cfg.epochs}) without a checkpoint to report")
        metrics["epoch_seconds"] = time.perf_counter() - started
        with_checkpoint = control is not None or epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs
        state = None
        if with_checkpoint and rank == 0:
            facts = run_facts(stats, model_cfg, cfg, metadata)
            state = training_state(model, optimizer, epoch, done_commands, facts, metrics)
        _save_and_report(metrics, state, with_checkpoint, rank)
        if stop_requested(config.get("stop_file"), rank, device):
            if rank == 0:
                log.debug("stopping after epoch %d: the caller asked", epoch)
            return


def _apply_command(
    command: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fresh: tuple[dict, dict] | None,
    epoch: int,
    cfg: TrainConfig,
) -> tuple[int, TrainConfig, dict[str, Any] | None]:
    """Carry out a command's ``fresh`` (start over), ``load`` (a checkpoint) and ``hyper`` (mutated values) parts.

    Returns:
        The epoch reached, the settings to train on, and the loaded checkpoint's metrics (None without ``load``).
    """
    if command.get("fresh") and fresh is not None:
        unwrap(model).load_state_dict(fresh[0])
        optimizer.load_state_dict(fresh[1])
        epoch = 0
    loaded_metrics = None
    if command.get("load"):
        epoch, _, loaded_metrics = _restore(model, optimizer, command["load"])
    if command.get("hyper"):
        cfg = cfg.replace(**command["hyper"])
    apply_to_optimizer(optimizer, cfg)
    return epoch, cfg, loaded_metrics


def _train_and_validate(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shards: tuple[CachedShard, CachedShard],
    metadata: PatchMetadata,
    cfg: TrainConfig,
    epoch: int,
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, Any]:
    """Train epoch number ``epoch`` (from 1) on this worker's training shard, validate; returns the global metrics."""
    train_shard, val_shard = shards
    per_worker_batch = max(1, cfg.batch_size // world)
    augment = D4Collate(seed=(cfg.seed * 1_000_003 + epoch) * 1009 + rank, augment=cfg.augment)
    rows = train_shard.batches(
        per_worker_batch,
        shuffle_seed=cfg.seed * 1_000_003 + epoch,
        shuffle_buffer=SHUFFLE_BATCHES * per_worker_batch,
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    local = train_epoch(model, optimizer, loss_fn, map(augment, rows), cfg.clip_norm, device)
    return _epoch_report(model, nn.CrossEntropyLoss(), val_shard, metadata, local, epoch, cfg, rank, world, device)


def _build_worker_model(
    metadata: PatchMetadata, cfg: TrainConfig, rank: int
) -> tuple[nn.Module, ResNetConfig, torch.optim.Optimizer, torch.device]:
    """Seed, build and check the model and its optimizer, then hand the model to Ray Train (DDP, device).

    Returns:
        The prepared model, its config, the optimizer and the training device.
    """
    import ray.train.torch

    # Seed: the same initial weights on every worker (DDP also broadcasts rank 0's).
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed + rank)
    # Build, and check the model before spending any time on it.
    model, model_cfg = build_model(metadata, cfg)
    optimizer = build_optimizer(model, cfg)
    _preflight(model, optimizer, model_cfg, cfg.seed)
    return ray.train.torch.prepare_model(model), model_cfg, optimizer, ray.train.torch.get_device()


def _restore_start(model: nn.Module, optimizer: torch.optim.Optimizer, resume_from: str | None) -> tuple[int, int]:
    """Load the state a run starts from: Ray's own checkpoint after a worker failure, else ``resume_from``.

    Returns:
        The epoch reached and the number of commands done (0 and 0 for a fresh start).
    """
    ray_source = _ray_checkpoint_source()
    if ray_source is not None:
        with ray_source as directory:
            epoch, done_commands, _ = _restore(model, optimizer, directory)
        return epoch, done_commands
    if resume_from:
        epoch, _, _ = _restore(model, optimizer, resume_from)
        return epoch, 0
    return 0, 0


def _epoch_report(
    model: nn.Module,
    eval_loss_fn: nn.Module,
    val_shard: Any,
    metadata: PatchMetadata,
    local: dict[str, float],
    epoch: int,
    cfg: TrainConfig,
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, Any]:
    """Validate, all-reduce this worker's sums with the others' and turn them into the epoch's global metrics."""
    val_batches = as_tensors(val_shard.batches(EVAL_BATCH_SIZE), device)
    # The bare module: DDP's forward would broadcast buffers, a collective the other workers do not join.
    val_loss_sum, val_count, confusion = evaluate_shard(
        unwrap(model), eval_loss_fn, val_batches, metadata.num_classes, rank, world
    )
    summed = _all_reduce(
        [local["loss_sum"], local["samples"], val_loss_sum, val_count, *confusion.ravel()],
        dist.ReduceOp.SUM,
        device,
    )
    maxed = _all_reduce(
        [local["steps"], local["skipped"], local["norm_sum"], local["norm_count"], local["norm_max"]],
        dist.ReduceOp.MAX,
        device,
    )
    train_sums = dict(zip(("steps", "skipped", "norm_sum", "norm_count", "norm_max"), maxed, strict=True))
    train_sums.update(loss_sum=summed[0], samples=summed[1])
    confusion = summed[4:].reshape(confusion.shape)
    return epoch_metrics(epoch, train_sums, summed[2], summed[3], confusion, cfg)


def stop_requested(stop_file: str | None, rank: int, device: torch.device) -> bool:
    """Whether the caller asked the run to stop (rank 0 reads the stop file; every worker gets its answer)."""
    asked = float(rank == 0 and stop_file is not None and os.path.exists(stop_file))
    return bool(_all_reduce([asked], dist.ReduceOp.MAX, device)[0])
