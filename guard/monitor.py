"""The streaming monitor: judge the growing answer while the model decodes, and hold text back until judged.

:class:`ResponseMonitor` is a transformers ``StoppingCriteria``. ``model.generate`` calls it after every
decoding step with the sequences so far; every ``policy.response.interval`` generated tokens (and when a row
reaches EOS) it decodes each row's answer and runs the guard's response head on it, with the safety
features of the request's images computed once from the same vision pass (no second vision pass, no
extra decode: one small cross-attention per judgement). A row judged harmful stops at once; text is
released only up to ``policy.response.window`` tokens behind the last position judged safe, so nothing
reaches the caller unjudged, and nothing past the judgement that flagged an answer is ever released.
:meth:`ResponseMonitor.finish` judges the rest of answers that ended without a judgement at their last
token (``max_new_tokens``), then releases it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from psaguard.classifier import Classifier, RequestContext
from psaguard.policy import ACTION_SEVERITY
from psaguard.tokenization import tokenizer_of, until_eos
from psaguard.verdict import ResponseVerdict

__all__ = ["AnswerState", "ReleaseCallback", "ResponseMonitor"]

ReleaseCallback = Callable[[int, str], None]
"""``(answer index, text)``: called with each piece of text the monitor releases, in order."""

_SEVERITY = {"allow": 0, "replace": ACTION_SEVERITY["refuse"], "block": ACTION_SEVERITY["block"]}


@dataclass
class AnswerState:
    """Where the monitor stands on one answer."""

    tokens: list[int] = field(default_factory=list)
    judged: int = 0
    """Tokens covered by the last judgement that let the answer through."""
    released: int = 0
    """Tokens whose text has been released."""
    text: str = ""
    """The released text."""
    verdict: ResponseVerdict | None = None
    """The last judgement."""
    stopped_at: int | None = None
    """Tokens judged by the judgement that flagged the answer; None while it is not flagged."""
    ended: bool = False
    """The answer reached EOS and was judged whole."""

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None


class ResponseMonitor(StoppingCriteria):
    """Judges the answers of one ``generate`` call as they grow (see the module docstring).

    ``image_rows[i]`` are answer ``i``'s rows in ``context`` (one per image of the request); ``prompt_width``
    is the width of the padded prompt in the sequences ``generate`` passes; ``on_release`` receives the
    released text.
    """

    def __init__(
        self,
        classifier: Classifier,
        context: RequestContext,
        image_rows: Sequence[Sequence[int]],
        prompt_width: int,
        eos_ids: set[int],
        on_release: ReleaseCallback | None = None,
    ) -> None:
        classifier.require_response_head()
        self.classifier = classifier
        self.context = context
        self.image_rows = [list(rows) for rows in image_rows]
        self.prompt_width = prompt_width
        self.eos_ids = eos_ids
        self.on_release = on_release
        self.policy = classifier.policy.response
        self.tokenizer = tokenizer_of(classifier.processor)
        self.states = [AnswerState() for _ in self.image_rows]
        self._length = 0
        """Generated tokens at the last call."""
        self.judgements = 0
        """Response-head calls made (each judges every answer due at that step in one batch)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        """Per row True when the monitor stops it (the answer was flagged)."""
        length = input_ids.shape[1] - self.prompt_width
        # One new token per row since the last call (plain decoding): only rows whose new token is EOS or whose
        # length is a multiple of the interval need looking at; otherwise (several tokens at once) every row.
        stepwise = length == self._length + 1
        self._length = length
        last = input_ids[:, -1].tolist() if stepwise else []
        generated: list[list[int]] | None = None
        due = []
        for index, state in enumerate(self.states):
            if state.stopped or state.ended:
                continue
            if stepwise and length % self.policy.interval and last[index] not in self.eos_ids:
                continue
            if generated is None:
                generated = input_ids[:, self.prompt_width :].tolist()
            row = generated[index]
            state.tokens = until_eos(row, self.eos_ids)
            ended = len(state.tokens) < len(row) or (state.tokens and state.tokens[-1] in self.eos_ids)
            if ended or len(state.tokens) % self.policy.interval == 0:
                state.ended = bool(ended)
                due.append(index)
        if due:
            self._judge(due)
        return torch.tensor([state.stopped for state in self.states], dtype=torch.bool, device=input_ids.device)

    def finish(self, sequences: torch.Tensor | None) -> None:
        """After ``generate``: judge every answer not judged at its last token, then release what passed."""
        if sequences is not None:
            for state, row in zip(self.states, sequences[:, self.prompt_width :].tolist()):
                if not state.stopped and not state.ended:
                    state.tokens = until_eos(row, self.eos_ids)
        due = [i for i, s in enumerate(self.states) if not s.stopped and (s.judged < len(s.tokens) or not s.verdict)]
        if due:
            self._judge(due)
        for index, state in enumerate(self.states):
            if not state.stopped:
                self._release(index, len(state.tokens))

    # ------------------------------------------------------------------ helpers
    def _judge(self, answers: list[int]) -> None:
        """One response-head call for the answers due; a flagged answer stops, a passed one releases."""
        start = time.perf_counter()
        rows = [row for index in answers for row in self.image_rows[index]]
        texts = [self._text(self.states[index].tokens) for index in answers for _ in self.image_rows[index]]
        counts = [len(self.states[index].tokens) for index in answers]
        verdicts = self.classifier.judge_responses(self.context, texts, start, rows=rows)
        self.judgements += 1
        offset = 0
        for index, count in zip(answers, counts):
            per_image = verdicts[offset : offset + len(self.image_rows[index])]
            offset += len(per_image)
            worst = max(per_image, key=lambda v: (_SEVERITY[v.action], v.harm_prob))
            state = self.states[index]
            state.verdict = worst.model_copy(update={"tokens_judged": count})
            if worst.flagged:
                state.stopped_at = count
                continue
            state.judged = count
            self._release(index, count - self.policy.window)

    def _release(self, index: int, upto: int) -> None:
        state = self.states[index]
        upto = min(upto, state.judged, len(state.tokens))
        if upto <= state.released:
            return
        text = self._text(state.tokens[:upto])
        if text.endswith("\ufffd") and upto < len(state.tokens):
            return  # a character split across tokens: wait for its last byte
        if not text.startswith(state.text):  # a tokenizer that rewrites earlier text: release only the new end
            text = state.text + text[len(state.text) :]
        delta, state.text, state.released = text[len(state.text) :], text, upto
        if delta and self.on_release is not None:
            self.on_release(index, delta)

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
