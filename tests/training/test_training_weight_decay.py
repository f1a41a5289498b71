"""The guard trainer's weight decay shrinks matrices and token tables, never biases or normalization gains."""

from __future__ import annotations

import torch
from torch import nn

from psaguard.modules.head import SafetyHead
from psaguard.training.loop import decay_groups


def one_step_without_gradient(module: nn.Module, weight_decay: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each parameter before and after one AdamW step whose gradients are all zero: only decay moves them."""
    params = dict(module.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.AdamW(decay_groups(params.values(), weight_decay), lr=0.1)
    for p in params.values():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {name: (before[name], p.detach()) for name, p in params.items()}


def test_decay_shrinks_two_dimensional_parameters_only() -> None:
    torch.manual_seed(0)
    head = SafetyHead(hidden_size=8, num_heads=2, num_levels=4, num_types=7, residual=True)
    tokens = nn.Parameter(torch.randn(1, 4, 8))
    module = nn.ModuleDict({"head": head, "norm": nn.BatchNorm1d(8)})
    module.register_parameter("tokens", tokens)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() < 2:
                p.normal_()  # gains and biases start at 1 and 0: make any change visible

    moved = one_step_without_gradient(module, weight_decay=0.5)

    shrunk = {name for name, (before, after) in moved.items() if torch.allclose(after, 0.95 * before)}
    kept = {name for name, (before, after) in moved.items() if torch.equal(after, before)}
    names = dict(module.named_parameters())
    assert shrunk == {name for name, p in names.items() if p.dim() >= 2}
    assert "tokens" in shrunk and "head.type_head.weight" in shrunk
    assert kept == {name for name, p in names.items() if p.dim() < 2}
    assert {"head.norm.weight", "head.query_norm.weight", "norm.weight", "head.type_head.bias"} <= kept


def test_without_decay_nothing_moves_and_the_layout_is_the_same() -> None:
    module = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    groups = decay_groups(module.parameters(), 0.0)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0]
    assert [len(g["params"]) for g in groups] == [1, 3]  # the same two groups with or without decay
    moved = one_step_without_gradient(module, weight_decay=0.0)
    assert all(torch.equal(after, before) for before, after in moved.values())


def test_decaying_norms_and_biases_too_is_one_group_decaying_everything() -> None:
    torch.manual_seed(0)
    modules = [SafetyHead(hidden_size=8, num_heads=2, num_levels=4, num_types=7, residual=True) for _ in range(2)]
    modules[1].load_state_dict(modules[0].state_dict())
    optimizers = [
        torch.optim.AdamW(decay_groups(modules[0].parameters(), 0.5, norms_and_biases=True), lr=0.1),
        torch.optim.AdamW(modules[1].parameters(), lr=0.1, weight_decay=0.5),
    ]
    query, memory = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    for module, optimizer in zip(modules, optimizers):
        for _ in range(3):
            logits = module(query, torch.ones(2, 3, dtype=torch.bool), memory)
            (logits.level.square().sum() + logits.type.sum()).backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), b in zip(modules[0].named_parameters(), modules[1].parameters()):
        assert torch.equal(a, b), name
