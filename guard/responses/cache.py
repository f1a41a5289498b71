"""The response head made incremental for answers judged again and again as they grow (the streaming monitor).

The response head's query is ``[anchor] + prompt tokens + answer tokens``; each query position attends to the
image's memory on its own, and the head mean-pools the attended values (and the query). So a token's
attended value depends only on the token and the memory row, and the pooled values are count-weighted means
of per-token values. :class:`AnswerCache` keeps, per memory row, the attention's keys and values of the
memory and the prompt's query ids (both computed once), and the attended value and embedding of every token
id seen; a judgement attends only the ids it has not seen yet (the last few tokens of the answer) and pools
the rest by their counts. The logits equal the head's on the whole query (up to float rounding), truncation
of a long answer included: the kept tokens are counted by id wherever they sit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from psaguard.modules import HeadLogits, SafetyHead

__all__ = ["AnswerCache"]


class AnswerCache:
    """The response head's attended values of the tokens seen so far, per row of ``memory`` (B, M, D).

    ``prompt_ids[i]`` are row ``i``'s prompt ids in the head's query (fixed for the request); ``embed`` maps
    token ids (any shape) to their input embeddings on the head's device. The head must mean-pool (the
    response head does). Not thread-safe: one cache serves one ``generate`` call, whose stopping criteria run
    in one thread.
    """

    def __init__(
        self,
        head: SafetyHead,
        memory: torch.Tensor,
        prompt_ids: Sequence[Sequence[int]],
        embed: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        if head.pooling != "mean":
            raise ValueError("only a mean-pooling head's judgements can be made incremental")
        if len(prompt_ids) != len(memory):
            raise ValueError(f"got {len(prompt_ids)} prompts for {len(memory)} memory rows")
        self.head = head
        self.embed = embed
        self.dtype = memory.dtype
        self.prompt_ids = [list(ids) for ids in prompt_ids]
        with torch.inference_mode():
            self.keys, self.values = head.keys_values(memory)
        empty = memory.new_empty(0, memory.shape[-1])
        self._slots: list[dict[int, int]] = [{} for _ in range(len(memory))]
        self._attended = [empty] * len(memory)
        self._embedded = [empty] * len(memory)

    def logits(self, rows: Sequence[int], ids: Sequence[Sequence[int]]) -> HeadLogits:
        """The response head's logits for the query ``ids[i]`` (anchor, prompt and answer ids, at least one) on
        memory row ``rows[i]``."""
        with torch.inference_mode():
            self._attend_new(rows, ids)
            pooled, pooled_query = [], []
            for row, row_ids in zip(rows, ids):
                counts = [0.0] * len(self._slots[row])
                for token in row_ids:
                    counts[self._slots[row][token]] += 1.0
                weights = torch.tensor(counts, dtype=self.dtype, device=self.keys.device)
                pooled.append((weights @ self._attended[row]) / len(row_ids))
                pooled_query.append((weights @ self._embedded[row]) / len(row_ids))
            return self.head.read_out(torch.stack(pooled), torch.stack(pooled_query))

    def _unseen(self, rows: Sequence[int], ids: Sequence[Sequence[int]]) -> dict[int, dict[int, None]]:
        """Per row (first seen first), the ids not attended on it yet, each once, in order; rows with none left out."""
        new: dict[int, dict[int, None]] = {}
        for row, row_ids in zip(rows, ids):
            pending = new.setdefault(row, {})
            pending.update((token, None) for token in row_ids if token not in self._slots[row])
        return {row: pending for row, pending in new.items() if pending}

    def _memory_of(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory keys and values of ``rows`` (one row sliced, not gathered: no copy)."""
        if len(rows) == 1:
            return self.keys[rows[0] : rows[0] + 1], self.values[rows[0] : rows[0] + 1]
        return self.keys[rows], self.values[rows]

    def _attend_new(self, rows: Sequence[int], ids: Sequence[Sequence[int]]) -> None:
        """Attend the ids not seen yet on their rows, all rows in one batch."""
        new = self._unseen(rows, ids)
        if not new:
            return
        width = max(len(pending) for pending in new.values())
        padded = [[*pending, *[next(iter(pending))] * (width - len(pending))] for pending in new.values()]
        embedded = self.embed(torch.tensor(padded, device=self.keys.device)).to(self.dtype)
        keys, values = self._memory_of(list(new))
        attended = self.head.attend(embedded, keys, values)
        for position, (row, pending) in enumerate(new.items()):
            slots, count = self._slots[row], len(pending)
            first = len(slots)
            slots.update((token, first + offset) for offset, token in enumerate(pending))
            self._attended[row] = torch.cat([self._attended[row], attended[position, :count]])
            self._embedded[row] = torch.cat([self._embedded[row], embedded[position, :count]])
