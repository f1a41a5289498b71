"""The three trained parts of a guard in one module: projector, two token sets, head."""

from __future__ import annotations

import torch
from torch import nn

from psaguard.config import SafetyGuardConfig
from psaguard.modules.abstractor import CAbstractor
from psaguard.modules.head import HeadLogits, SafetyHead

__all__ = ["SafetyModules"]


class SafetyModules(nn.Module):
    """Safety projector, ``head_tokens``, ``llm_tokens`` and safety head, sized from the base model.

    ``head_tokens`` join the projector output as the head's keys and values; ``llm_tokens`` go before each
    image's embeddings in the language model's input (guarded generation).
    """

    def __init__(self, config: SafetyGuardConfig, vision_hidden_size: int, text_hidden_size: int) -> None:
        super().__init__()
        num_tokens = config.tokens.num_tokens
        self.projector = CAbstractor(
            in_features=vision_hidden_size,
            hidden_size=config.projector.hidden_size or vision_hidden_size + num_tokens,
            out_features=text_hidden_size,
            depth=config.projector.depth,
            num_queries=config.projector.num_queries,
        )
        self.head_tokens = nn.Parameter(torch.randn(1, num_tokens, text_hidden_size) * config.tokens.init_std)
        self.llm_tokens = nn.Parameter(torch.randn(1, num_tokens, text_hidden_size) * config.tokens.init_std)
        self.head = SafetyHead(
            text_hidden_size,
            config.head.num_heads,
            config.taxonomy.num_levels,
            config.taxonomy.num_types,
            config.head.pooling,
        )

    def forward(self, patches: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor) -> HeadLogits:
        """patches (B, N, C_v) on a square grid; query (B, T, D) prompt embeddings; mask (B, T)."""
        safety_features = self.projector(patches.to(self.head_tokens.dtype))
        memory = torch.cat([self.head_tokens.expand(len(safety_features), -1, -1), safety_features], dim=1)
        return self.head(query.to(memory.dtype), query_mask, memory)
