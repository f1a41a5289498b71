"""The training loop both stages share: visible, nanoGPT style, with accelerate for devices and DDP.

Per optimizer step: ``grad_accum`` micro-batches forward and backward, clip, AdamW step, linear
warmup/decay. Every ``log_every`` steps a log line; after every epoch an evaluation; every
``checkpoint_every`` steps a resumable checkpoint. The data order of each epoch is a seeded permutation,
so the position in the data is just the step count and a resumed run sees exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from psaguard.errors import CheckpointError, ConfigError
from psaguard.training.checkpoint import (
    DataPosition,
    TrainState,
    latest_checkpoint,
    load_best_weights,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from psaguard.training.collate import Batch, Collator
from psaguard.training.config import TrainConfig
from psaguard.training.data import Example
from psaguard.training.diagnostics import ChanceCheck, warn_schedule
from psaguard.training.keep_best import KeepBest
from psaguard.training.meter import Meter, autocast, format_record
from psaguard.training.metrics import macro_f1
from psaguard.training.objective import GuardObjective
from psaguard.training.schedules import linear_schedule

__all__ = ["TrainTask", "decay_groups", "epoch_order", "evaluate_objective", "run_training"]

logger = logging.getLogger(__name__)


@dataclass
class TrainTask:
    """What a stage hands the loop: the objective, the data, and how to save the result."""

    objective: GuardObjective
    train_set: Sequence[Example]
    eval_set: Sequence[Example] | None
    collate: Collator
    save_result: Callable[[Path], None]
    chance_head_loss: float | None = None
    """Head loss of a constant prediction of the label frequencies; a loss still there is warned about."""


def run_training(task: TrainTask, cfg: TrainConfig, accelerator: Any, *, resume: bool = False) -> TrainState:
    """Train ``task.objective``'s trainable parameters; return the final state (with the metric history).

    With an eval set and ``cfg.early_stopping.enabled``, the weights left in the objective at the end (and
    saved) are those of the best evaluated step, and the run stops after ``patience`` evaluations without
    improvement.
    """
    world_size, rank = accelerator.num_processes, accelerator.process_index
    steps_per_epoch = _steps_per_epoch(len(task.train_set), cfg, world_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    trainable = _trainable(task.objective)
    groups = decay_groups(trainable.values(), cfg.weight_decay, norms_and_biases=cfg.decay_norms_and_biases)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas)
    scheduler = linear_schedule(optimizer, cfg.warmup_steps, total)
    objective = accelerator.prepare(task.objective)  # DDP when there are several processes
    data = DataPosition(
        num_examples=len(task.train_set),
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        world_size=world_size,
        seed=cfg.seed,
    )
    state = TrainState(total_steps=total, steps_per_epoch=steps_per_epoch, data=data)
    checkpoints = cfg.output_dir / "checkpoints"
    keep = _keep_best(task, cfg, trainable)
    if resume:
        state, keep = _resume(checkpoints, state, trainable, optimizer, scheduler, rank, keep)
    warn_schedule(cfg.warmup_steps, total)
    _log_plan(trainable, state, cfg.batch_size * cfg.grad_accum * world_size)
    progress = _progress_bar(cfg, accelerator, state)
    chance = ChanceCheck(task.chance_head_loss, total, cfg.chance_check_share)
    run = _Run(task, cfg, accelerator, objective, trainable, optimizer, scheduler, checkpoints, keep, progress, chance)
    while state.step < total and state.stop_reason is None:
        batches = _epoch_batches(task, cfg, state, rank, world_size)
        while state.step < total:
            grad_norm = _train_step(objective, batches, trainable, optimizer, scheduler, run.meter, cfg, accelerator)
            state.step += 1
            if run.after_step(state, grad_norm):
                break
    progress.close()
    _restore_best(keep, state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        task.save_result(cfg.output_dir)
    accelerator.wait_for_everyone()
    return state


def _steps_per_epoch(num_examples: int, cfg: TrainConfig, world_size: int) -> int:
    """Optimizer steps in one epoch of this process's share of the data; none is a :class:`ConfigError`."""
    per_step = cfg.batch_size * cfg.grad_accum
    steps = num_examples // world_size // per_step
    if steps == 0:
        raise ConfigError(
            f"{num_examples} training examples do not fill one optimizer step "
            f"(batch_size x grad_accum x processes = {per_step * world_size})"
        )
    return steps


def _progress_bar(cfg: TrainConfig, accelerator: Any, state: TrainState) -> Any:
    """A tqdm bar over the run's steps, on the main process with ``cfg.progress_bar`` only."""
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (no carriage-return spam in CI logs)
    disable = None if cfg.progress_bar and accelerator.is_main_process else True
    return tqdm(total=state.total_steps, initial=state.step, disable=disable, unit="step")


@dataclass
class _Run:
    """The parts of one run the loop's bookkeeping after each step needs: logging, evaluation, checkpoints."""

    task: TrainTask
    cfg: TrainConfig
    accelerator: Any
    objective: torch.nn.Module
    trainable: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    checkpoints: Path
    keep: KeepBest | None
    progress: Any
    chance: ChanceCheck
    meter: Meter = field(default_factory=Meter)

    def after_step(self, state: TrainState, grad_norm: float) -> bool:
        """Log, evaluate and checkpoint when due; True when the epoch is over or the run stops."""
        self.progress.update(1)
        epoch_done = state.step_in_epoch == 0
        if state.step % self.cfg.log_every == 0 or state.step == state.total_steps:
            self._log(state, grad_norm)
        if self.task.eval_set and _eval_due(self.cfg, state, epoch_done):
            _evaluate(self.task, self.objective, self.cfg, self.accelerator, state, self.keep)
            self.meter.restart_clock()
        if _checkpoint_due(self.cfg, state):
            best_weights = self.keep.weights if self.keep is not None else None
            _checkpoint(
                self.checkpoints,
                state,
                self.trainable,
                self.optimizer,
                self.scheduler,
                self.cfg,
                self.accelerator,
                best_weights,
            )
            self.meter.restart_clock()
        return epoch_done or state.stop_reason is not None

    def _log(self, state: TrainState, grad_norm: float) -> None:
        record = self.meter.flush(self.accelerator)
        record.update(step=state.step, epoch=state.step / state.steps_per_epoch, lr=self.scheduler.get_last_lr()[0])
        record["grad_norm"] = grad_norm
        state.history.append(record)
        self.progress.set_postfix(loss=f"{record['loss']:.4f}", head_acc=f"{record['level_acc']:.3f}")
        logger.info(format_record(record, state.total_steps))
        self.chance.check(record)


def _checkpoint_due(cfg: TrainConfig, state: TrainState) -> bool:
    """Every ``checkpoint_every`` steps, except at the end (the result is saved then) or when stopping."""
    return state.step % cfg.checkpoint_every == 0 and state.step < state.total_steps and state.stop_reason is None


def _checkpoint(
    checkpoints: Path,
    state: TrainState,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    accelerator: Any,
    best_weights: dict[str, torch.Tensor] | None,
) -> None:
    path = save_checkpoint(
        checkpoints,
        state,
        trainable,
        optimizer,
        scheduler,
        rank=accelerator.process_index,
        barrier=accelerator.wait_for_everyone,
        best_weights=best_weights,
    )
    if accelerator.is_main_process:
        prune_checkpoints(checkpoints, cfg.keep_checkpoints)
    logger.info("saved checkpoint %s", path)


def decay_groups(
    params: Iterable[torch.Tensor], weight_decay: float, *, norms_and_biases: bool = False
) -> list[dict[str, Any]]:
    """AdamW's parameter groups: ``weight_decay`` on matrices, kernels and token tables (2-D and up), and on
    biases and normalization gains (1-D) only with ``norms_and_biases``: decay pulls a gain towards zero rather
    than towards the identity, so by default they are left out (the split transformers' ``Trainer`` and timm
    make). Always two groups, so checkpoints keep one layout."""
    params = list(params)
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": weight_decay if norms_and_biases else 0.0},
    ]


def _trainable(objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in objective.named_parameters() if p.requires_grad}


def _keep_best(task: TrainTask, cfg: TrainConfig, trainable: dict[str, torch.Tensor]) -> KeepBest | None:
    """The best-step keeper, with an eval set and early stopping enabled."""
    if not task.eval_set or not cfg.early_stopping.enabled:
        return None
    return KeepBest(cfg.early_stopping, cfg.stop_metric, trainable)


def _log_plan(trainable: dict[str, torch.Tensor], state: TrainState, examples_per_step: int) -> None:
    logger.info(
        "training %s parameters (%s tensors) for %d steps, %d per epoch, %d examples per step",
        f"{sum(p.numel() for p in trainable.values()):,}",
        len(trainable),
        state.total_steps,
        state.steps_per_epoch,
        examples_per_step,
    )


def _eval_due(cfg: TrainConfig, state: TrainState, epoch_done: bool) -> bool:
    if state.step == state.total_steps:
        return True
    return state.step % cfg.eval_every == 0 if cfg.eval_every is not None else epoch_done


def _evaluate(
    task: TrainTask,
    objective: torch.nn.Module,
    cfg: TrainConfig,
    accelerator: Any,
    state: TrainState,
    keep: KeepBest | None,
) -> None:
    """Evaluate, log, and (with keep-best) update the best step; sets ``state.stop_reason`` to stop early."""
    assert task.eval_set is not None
    record = evaluate_objective(objective, task.eval_set, task.collate, cfg, accelerator)
    record.update(step=state.step, epoch=state.step / state.steps_per_epoch)
    state.history.append(record)
    logger.info(format_record(record, state.total_steps))
    if keep is None:
        return
    if keep.update(record, state.step):
        logger.info("keeping step %d: eval_%s %.4g", state.step, keep.metric, record[f"eval_{keep.metric}"])
    state.best = keep.best
    if keep.should_stop and state.step < state.total_steps:
        state.stop_reason = keep.stop_reason()
        logger.info("early stopping at step %d of %d: %s", state.step, state.total_steps, state.stop_reason)


def _restore_best(keep: KeepBest | None, state: TrainState) -> None:
    """Put the best step's weights back and say which step the result is, and why the run ended."""
    ended = state.stop_reason or f"all {state.total_steps} steps done"
    if keep is None or keep.best is None:
        logger.info("training ended at step %d (%s); the result is the last step", state.step, ended)
        return
    keep.restore()
    logger.info(
        "training ended at step %d (%s); the result is the best step %d (eval_%s %.4g)",
        state.step,
        ended,
        keep.best.step,
        keep.metric,
        keep.best.value,
    )


def _epoch_batches(task: TrainTask, cfg: TrainConfig, state: TrainState, rank: int, world_size: int) -> Iterator[Batch]:
    """The rest of the current epoch's batches for this process, from the state's position on."""
    per_step = cfg.batch_size * cfg.grad_accum
    order = epoch_order(len(task.train_set), state.epoch, cfg.seed, rank, world_size)
    order = order[state.step_in_epoch * per_step : state.steps_per_epoch * per_step]
    loader = DataLoader(
        [task.train_set[i] for i in order],
        batch_size=cfg.batch_size,
        collate_fn=task.collate,
        num_workers=cfg.num_workers,
        # Its own generator: creating the iterator would otherwise draw from the global RNG, and a resumed
        # run creates one where an uninterrupted run does not (dropout would then differ).
        generator=torch.Generator().manual_seed(cfg.seed + state.epoch),
    )
    return iter(loader)


def _train_step(
    objective: torch.nn.Module,
    batches: Iterator[Batch],
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    meter: Meter,
    cfg: TrainConfig,
    accelerator: Any,
) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the gradient norm before clipping."""
    objective.train()
    for micro in range(cfg.grad_accum):
        batch = next(batches).to(accelerator.device)
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        sync = accelerator.no_sync(objective) if micro < cfg.grad_accum - 1 else nullcontext()
        with sync, autocast(cfg, accelerator.device):
            out = objective(batch)
            accelerator.backward(out.loss / cfg.grad_accum)
        meter.add(out)
    grad_norm = accelerator.clip_grad_norm_(list(trainable.values()), cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def _resume(
    checkpoints: Path,
    fresh: TrainState,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
    keep: KeepBest | None,
) -> tuple[TrainState, KeepBest | None]:
    path = latest_checkpoint(checkpoints)
    if path is None:
        raise CheckpointError(f"--resume: no checkpoint under {checkpoints}")
    state = load_checkpoint(path, trainable, optimizer, scheduler, rank=rank)
    saved = (state.data, state.total_steps, state.steps_per_epoch)
    if saved != (fresh.data, fresh.total_steps, fresh.steps_per_epoch):
        raise CheckpointError(
            f"{path} was written by a run with different data or schedule (saved {state.data}, "
            f"{state.total_steps} steps, {state.steps_per_epoch} per epoch; now {fresh.data}, "
            f"{fresh.total_steps} steps, {fresh.steps_per_epoch} per epoch)"
        )
    if keep is not None and state.best is not None and state.best.metric == keep.metric:
        keep = KeepBest(keep.settings, keep.metric, trainable, state.best, load_best_weights(path, trainable))
    state.best = keep.best if keep is not None else None
    logger.info("resumed from %s at step %d of %d", path, state.step, state.total_steps)
    return state, keep


def epoch_order(num_examples: int, epoch: int, seed: int, rank: int, world_size: int) -> list[int]:
    """This process's share of a seeded permutation of the data (as ``DistributedSampler`` with drop_last)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    usable = num_examples - num_examples % world_size
    return order[rank:usable:world_size]


@torch.no_grad()
def evaluate_objective(
    objective: torch.nn.Module, examples: Sequence[Example], collate: Collator, cfg: TrainConfig, accelerator: Any
) -> dict[str, float]:
    """Mean losses, head accuracies and macro-F1 over ``examples`` (each process takes every world_size-th one).

    ``eval_macro_f1`` is the mean of the level and type heads' macro-F1 (``eval_level_macro_f1``,
    ``eval_type_macro_f1``), over the classes that occur in the labels or the predictions.
    """
    objective.eval()
    meter = Meter()
    shard = list(examples)[accelerator.process_index :: accelerator.num_processes]
    size = cfg.eval_batch_size or cfg.batch_size
    pairs: list[torch.Tensor] = []  # rows of (level label, level prediction, type label, type prediction)
    for start in range(0, len(shard), size):
        batch = collate(shard[start : start + size])
        with autocast(cfg, accelerator.device):
            out = objective(batch.to(accelerator.device))
        meter.add(out)
        pairs.append(torch.stack([batch.level, out.level_pred.cpu(), batch.type, out.type_pred.cpu()], dim=1))
    record = meter.flush(accelerator)
    record.pop("samples_per_s")
    record.pop("gpu_mem_gib", None)
    local = torch.cat(pairs) if pairs else torch.empty((0, 4), dtype=torch.long)
    padded = accelerator.pad_across_processes(local.to(accelerator.device), dim=0, pad_index=-1)
    rows = accelerator.gather(padded).cpu()
    rows = rows[rows[:, 0] >= 0].tolist()
    record["level_macro_f1"] = macro_f1([r[0] for r in rows], [r[1] for r in rows])
    record["type_macro_f1"] = macro_f1([r[2] for r in rows], [r[3] for r in rows])
    record["macro_f1"] = (record["level_macro_f1"] + record["type_macro_f1"]) / 2
    return {f"eval_{key}": value for key, value in record.items()}
