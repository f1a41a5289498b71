"""The safety head: cross-attention from the prompt to the safety features, then level and type heads."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["HeadLogits", "SafetyHead"]


class HeadLogits(NamedTuple):
    """Raw logits of the two heads: (B, num_levels) and (B, num_types), and the pooled vectors of the pass.

    ``pooled`` (B, D) is the head's pooled safety feature, the input of both linears; ``prompt`` (B, D) the
    mean of the prompt embeddings the head attended from. Custom categories (:mod:`psaguard.categories`) read
    both (with the image's mean patch state) in the same pass. None where a caller built the logits without them.
    """

    level: torch.Tensor
    type: torch.Tensor
    pooled: torch.Tensor | None = None
    prompt: torch.Tensor | None = None


class SafetyHead(nn.Module):
    """``MHA(query=prompt embeddings, key=value=[head_tokens; projector output])`` pooled, then two linears.

    ``pooling='first'`` reads query position 0 (the paper's code; position 0 is a fixed anchor token, so the
    prompt cannot change the verdict). ``pooling='mean'`` averages the valid prompt positions, so the
    verdict depends on the prompt as well as the image. ``residual=True`` adds the pooled query to the pooled
    attended values, each layer-normalized (the response head: an answer's own words count as much as where
    they look in the image; token embeddings are far smaller than the attended values).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_levels: int,
        num_types: int,
        pooling: Literal["mean", "first"] = "mean",
        residual: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.pooling = pooling
        self.residual = residual
        self.norm = nn.LayerNorm(hidden_size) if residual else None
        self.query_norm = nn.LayerNorm(hidden_size) if residual else None
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.level_head = nn.Linear(hidden_size, num_levels)
        self.type_head = nn.Linear(hidden_size, num_types)

    def forward(self, query: torch.Tensor, query_mask: torch.Tensor, memory: torch.Tensor) -> HeadLogits:
        """query (B, T, D) with mask (B, T) True on valid positions; memory (B, M, D)."""
        attended, _ = self.attn(query, memory, memory, need_weights=False)
        pooled = self._pool(attended, query_mask)
        query = query.to(pooled.dtype)
        prompt = _masked_mean(query, query_mask)
        # the residual head's pooled query is the prompt's mean itself under mean pooling: pooled once
        pooled_query = (prompt if self.pooling == "mean" else self._pool(query, query_mask)) if self.residual else None
        return self.read_out(pooled, pooled_query, prompt)

    def read_out(
        self, pooled: torch.Tensor, pooled_query: torch.Tensor | None = None, prompt: torch.Tensor | None = None
    ) -> HeadLogits:
        """The logits from the pooled attended values (B, D) and, for a ``residual`` head, the pooled query (B, D);
        ``prompt`` (the query's masked mean, B x D) rides along for the category bank."""
        if self.norm is not None and self.query_norm is not None:
            if pooled_query is None:
                raise ValueError("a residual head reads the pooled query too")
            # The text itself, not only where it looks in the image, reaches the linears; each part normalized,
            # since token embeddings are far smaller than the attended values.
            pooled = self.norm(pooled) + self.query_norm(pooled_query)
        return HeadLogits(self.level_head(pooled), self.type_head(pooled), pooled, prompt)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention's keys and values of ``memory`` (B, M, D), each (B, heads, M, D / heads): computed once
        per memory by callers that attend to it again and again (the streaming monitor)."""
        _, weight_k, weight_v = self.attn.in_proj_weight.chunk(3)
        _, bias_k, bias_v = self.attn.in_proj_bias.chunk(3)
        return self._split_heads(F.linear(memory, weight_k, bias_k)), self._split_heads(
            F.linear(memory, weight_v, bias_v)
        )

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The attended values (B, T, D) of ``query`` (B, T, D) over :meth:`keys_values`: what ``forward``'s
        attention gives. Each position attends on its own (no attention among query positions), so a token's
        attended value depends only on the token and the memory, and callers may cache it."""
        weight_q = self.attn.in_proj_weight.chunk(3)[0]
        bias_q = self.attn.in_proj_bias.chunk(3)[0]
        heads = F.scaled_dot_product_attention(self._split_heads(F.linear(query, weight_q, bias_q)), keys, values)
        merged = heads.transpose(1, 2).reshape(query.shape)
        return self.attn.out_proj(merged)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, width = states.shape
        heads = self.attn.num_heads
        return states.view(batch, length, heads, width // heads).transpose(1, 2)

    def _pool(self, values: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        return values[:, 0] if self.pooling == "first" else _masked_mean(values, query_mask)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) values averaged over the positions where ``mask`` (B, T) is True."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp_min(1.0)
