"""The three trained parts of a guard in one module: projector, two token sets, head."""

from __future__ import annotations

import math

import torch
from torch import nn

from psaguard.config import SafetyGuardConfig
from psaguard.errors import ConfigError, ResponseHeadMissingError
from psaguard.modules.abstractor import CAbstractor
from psaguard.modules.head import HeadLogits, SafetyHead

__all__ = ["MAX_PARAMETERS", "SafetyModules"]

MAX_PARAMETERS = 500_000_000
"""Most parameters a config may ask for (estimated before anything is allocated; 2 GB in float32). The
safety modules of a 72B model (text width 8192) need about 180 M, and the paper's projector at
LLaVA-1.5-7B shapes has 40 M; a hostile config (depth 20,000, or a huge width) is refused at once instead of
allocating gigabytes or looping for minutes."""


class SafetyModules(nn.Module):
    """Safety projector, ``head_tokens``, ``llm_tokens`` and safety head, sized from the base model.

    ``head_tokens`` join the projector output as the head's keys and values; ``llm_tokens`` go before each
    image's embeddings in the language model's input (guarded generation).
    """

    def __init__(self, config: SafetyGuardConfig, vision_hidden_size: int, text_hidden_size: int) -> None:
        super().__init__()
        num_tokens = config.tokens.num_tokens
        hidden_size = config.projector.hidden_size or vision_hidden_size + num_tokens
        _check_sizes(config, vision_hidden_size, hidden_size, text_hidden_size)
        self.projector = CAbstractor(
            in_features=vision_hidden_size,
            hidden_size=hidden_size,
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
        self.response_head: SafetyHead | None = None
        """Judges an answer: query = prompt then answer, over the same memory (None in guards without one)."""
        if config.head.response_head:
            self.response_head = SafetyHead(
                text_hidden_size,
                config.head.num_heads,
                config.taxonomy.num_levels,
                config.taxonomy.num_types,
                "mean",
                residual=True,
            )

    def forward(self, patches: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor) -> HeadLogits:
        """patches (B, N, C_v) on a square grid; query (B, T, D) prompt embeddings; mask (B, T)."""
        memory = self.memory(patches)
        return self.head(query.to(memory.dtype), query_mask, memory)

    def memory(self, patches: torch.Tensor) -> torch.Tensor:
        """The heads' keys and values, ``[head_tokens; projector(patches)]`` (B, T + N', D): computed once per
        vision pass and reused by every judgement of the same images (the streaming monitor)."""
        safety_features = self.projector(patches.to(self.head_tokens.dtype))
        return torch.cat([self.head_tokens.expand(len(safety_features), -1, -1), safety_features], dim=1)

    def request_logits(self, memory: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor) -> HeadLogits:
        """The request head on precomputed :meth:`memory`."""
        return self.head(query.to(memory.dtype), query_mask, memory)

    def response_logits(self, memory: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor) -> HeadLogits:
        """The response head on precomputed :meth:`memory`; ``query`` embeds the prompt followed by the answer.

        Raises :class:`ResponseHeadMissingError` for a guard without a response head.
        """
        if self.response_head is None:
            raise ResponseHeadMissingError(
                "this guard has no response head (saved before response checking existed, or built with "
                "head.response_head=False); retrain it with response labels to check answers"
            )
        return self.response_head(query.to(memory.dtype), query_mask, memory)


def _check_sizes(config: SafetyGuardConfig, vision: int, hidden: int, text: int) -> None:
    """Raise :class:`ConfigError` for sizes the modules cannot have, before any tensor is allocated."""
    if text % config.head.num_heads:
        raise ConfigError(f"head.num_heads={config.head.num_heads} does not divide the text model's width {text}")
    queries = config.projector.num_queries
    if queries is not None and math.isqrt(queries) ** 2 != queries:
        raise ConfigError(f"projector.num_queries={queries} is not a square number")
    # Per bottleneck block about 2.5 * width^2 weights (two 1x1 convolutions and the squeeze-excite).
    blocks = 2 * config.projector.depth * 3 * hidden * hidden + 2 * vision * hidden
    heads = 2 if config.head.response_head else 1
    estimate = blocks + hidden * text + text * text + 2 * config.tokens.num_tokens * text + 4 * heads * text * text
    if estimate > MAX_PARAMETERS:
        raise ConfigError(
            f"the config asks for about {estimate:,} safety-module parameters, over the limit of {MAX_PARAMETERS:,}"
            " (projector depth and width, token count)"
        )
