"""The plain loop the synthetic world's base VLM trains with: its schedule and that it optimises."""

from __future__ import annotations

import math

import pytest
import torch

from psaguard.training.plain_loop import train_steps
from psaguard.training.schedules import cosine_schedule


def test_cosine_schedule_warms_up_linearly_then_decays_to_five_percent() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = cosine_schedule(optimizer, warmup_steps=4, total_steps=24)
    factors = []
    for _ in range(30):
        factors.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4 + 10] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[24:] == pytest.approx([0.05] * 6)  # the floor after the last step


def test_train_steps_fits_a_line_and_returns_each_steps_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, generator=generator)
    y = 3 * x + 1
    model = torch.nn.Linear(1, 1)
    losses = train_steps(
        model.parameters(), 200, lambda _step: torch.nn.functional.mse_loss(model(x), y), lr=0.1, warmup_steps=5
    )
    assert len(losses) == 200 and losses[-1] < 0.01 * losses[0]
