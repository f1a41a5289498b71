"""The plain loop for a model outside a guard (the synthetic world's base VLM): no accumulation, no checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from psaguard.training.schedules import cosine_schedule

__all__ = ["train_steps"]

logger = logging.getLogger(__name__)


def train_steps(
    parameters: Iterable[torch.nn.Parameter],
    steps: int,
    loss_of: Callable[[int], torch.Tensor],
    *,
    lr: float,
    warmup_steps: int,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    desc: str = "training",
    progress_bar: bool = False,
) -> list[float]:
    """The plain loop for a model outside a guard (the synthetic world's base VLM): per step, ``loss_of(step)``,
    backward, clip to ``max_grad_norm``, AdamW step, :func:`cosine_schedule`. Returns each step's loss.

    One process, no accumulation, no checkpoints: runs short enough to be repeated rather than resumed.
    ``loss_of`` draws its own batch, from its own generator.
    """
    from tqdm.auto import tqdm

    params = list(parameters)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = cosine_schedule(optimizer, warmup_steps, steps)
    losses: list[float] = []
    # disable=None: no bar when stderr is not a terminal
    for step in tqdm(range(steps), desc=desc, disable=None if progress_bar else True):
        loss = loss_of(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0:
            logger.info("%s step %d loss %.4f", desc, step, losses[-1])
    return losses
