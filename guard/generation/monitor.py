"""The streaming monitor: judge the growing answer while the model decodes, and hold text back until judged.

Two monitors share the response policy's ``interval`` and ``window``: :class:`ResponseMonitor` inside the
guard's own ``generate`` (tokens of the model), and :class:`AnswerMonitor` for an answer that arrives as text
from a model the guard does not run (a hosted chat model behind the LangChain adapters), counted in tokens of
the guard's tokenizer.

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

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from psaguard.classifier import Classifier
from psaguard.errors import GuardInternalError, InvalidInputError
from psaguard.request import GuardRequest
from psaguard.responses.judge import RequestContext
from psaguard.responses.policy import response_error_verdict, worst_response
from psaguard.tokenization import tokenizer_of, until_eos
from psaguard.verdict import ResponseVerdict

__all__ = ["AnswerMonitor", "AnswerState", "ReleaseCallback", "ResponseMonitor"]

ReleaseCallback = Callable[[int, str], None]
"""``(answer index, text)``: called with each piece of text the monitor releases, in order."""


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
        lasts = input_ids[:, -1].tolist() if stepwise else [None] * len(self.states)
        generated: list[list[int]] | None = None
        due = []
        for index, (state, last) in enumerate(zip(self.states, lasts)):
            if self._skips(state, length, last):
                continue
            if generated is None:
                generated = input_ids[:, self.prompt_width :].tolist()
            if self._read(state, generated[index]):
                due.append(index)
        if due:
            self._judge(due)
        return torch.tensor([state.stopped for state in self.states], dtype=torch.bool, device=input_ids.device)

    def finish(self, sequences: torch.Tensor | None) -> None:
        """After ``generate``: judge every answer not judged at its last token, then release what passed."""
        if sequences is not None:
            self._read_open(sequences)
        due = [i for i, s in enumerate(self.states) if not s.stopped and (s.judged < len(s.tokens) or not s.verdict)]
        if due:
            self._judge(due)
        for index, state in enumerate(self.states):
            if not state.stopped:
                self._release(index, len(state.tokens))

    # ------------------------------------------------------------------ helpers
    def _skips(self, state: AnswerState, length: int, last: int | None) -> bool:
        """Whether a row needs no look: it stopped or ended, or its one new token ``last`` (None: several tokens
        came at once) is no EOS at a length that is no multiple of the interval."""
        if state.stopped or state.ended:
            return True
        return last is not None and bool(length % self.policy.interval) and last not in self.eos_ids

    def _read(self, state: AnswerState, row: list[int]) -> bool:
        """Read a row's answer into ``state``; True when it is due for a judgement (it ended, or its length is a
        multiple of the interval)."""
        state.tokens = until_eos(row, self.eos_ids)
        ended = len(state.tokens) < len(row) or (state.tokens and state.tokens[-1] in self.eos_ids)
        if ended or len(state.tokens) % self.policy.interval == 0:
            state.ended = bool(ended)
            return True
        return False

    def _read_open(self, sequences: torch.Tensor) -> None:
        """Read the final answer of each row neither stopped nor ended (generation stopped it)."""
        for state, row in zip(self.states, sequences[:, self.prompt_width :].tolist()):
            if not state.stopped and not state.ended:
                state.tokens = until_eos(row, self.eos_ids)

    def _judge(self, answers: list[int]) -> None:
        """One response-head call for the answers due; a flagged answer stops, a passed one releases."""
        start = time.perf_counter()
        rows = [row for index in answers for row in self.image_rows[index]]
        texts = [self._text(self.states[index].tokens) for index in answers for _ in self.image_rows[index]]
        counts = [len(self.states[index].tokens) for index in answers]
        verdicts = self.classifier.responses.judge_responses(self.context, texts, start, rows=rows)
        self.judgements += 1
        offset = 0
        for index, count in zip(answers, counts):
            per_image = verdicts[offset : offset + len(self.image_rows[index])]
            offset += len(per_image)
            worst = worst_response(per_image)
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


class AnswerMonitor:
    """Judges one answer to ``request`` that arrives as text chunks, and says how much of it may be released.

    For answers of a model the guard does not run (``guarded()`` and ``PsaGuardMiddleware`` in
    :mod:`psaguard.adapters`). ``interval`` and ``window`` of the response policy count tokens of the guard's
    tokenizer: :meth:`push` appends a chunk and judges the whole answer so far once ``interval`` tokens have
    arrived since the last judgement; text is released (``released``, in characters) only up to ``window``
    tokens behind the end of the last text judged safe, so it never runs past a judged prefix.
    :meth:`finish` judges what is left at the end of the answer and releases it all when it passes. A flagged
    judgement sets ``stopped``; nothing more is released. ``verdict`` is the last judgement.

    The request's images go through the vision tower once, at the first judgement. When they, the prompt or
    the answer cannot be judged, ``policy.on_error`` decides: 'block' (the default) raises the typed error,
    'refuse' flags the answer (replaced), 'allow' lets it through unjudged.
    """

    def __init__(self, classifier: Classifier, request: GuardRequest) -> None:
        classifier.require_response_head()
        self.classifier = classifier
        self.request = request
        self.policy = classifier.policy.response
        self.tokenizer = tokenizer_of(classifier.processor)
        self.text = ""
        """The answer so far."""
        self.released = 0
        """Characters of ``text`` that may be released."""
        self.verdict: ResponseVerdict | None = None
        self.judgements = 0
        """Response-head calls made."""
        self._judged_tokens = 0
        self._judged_chars = 0
        self._context: RequestContext | None = None
        self._fallback: ResponseVerdict | None = None

    @property
    def stopped(self) -> bool:
        """True once a judgement flagged the answer."""
        return self.verdict is not None and self.verdict.flagged

    def push(self, chunk: str) -> str:
        """Add ``chunk`` to the answer; the text newly released (empty while held back or after a stop)."""
        if self.stopped:
            return ""
        self.text += chunk
        if len(self.text) - self._judged_chars < self.policy.interval:
            return ""  # fewer new characters than `interval`: not `interval` new tokens yet (no tokenizing)
        ends = self._token_ends()
        if len(ends) - self._judged_tokens < self.policy.interval:
            return ""
        return self._judge(ends, final=False)

    def finish(self) -> str:
        """Judge the whole answer (unless its last judgement covered it) and release the rest when it passes."""
        if self.stopped:
            return ""
        if self.verdict is not None and self._judged_chars == len(self.text):  # judged at its last chunk
            return self._release(len(self.text))
        return self._judge(self._token_ends(), final=True)

    def judge(self, answer: str) -> ResponseVerdict:
        """Judge a whole answer at once (one judgement); the verdict. Several answers to the same request (the
        choices of one completion) may be judged in turn: the request's images are encoded once."""
        self.text = answer
        self._judge(self._token_ends(), final=True)
        if self.verdict is None:  # unreachable: _judge always sets it
            raise GuardInternalError("the answer was not judged")
        return self.verdict

    # ------------------------------------------------------------------ helpers
    def _judge(self, ends: list[int], *, final: bool) -> str:
        verdict = self._fallback or self._verdict()
        self.verdict = verdict.model_copy(update={"tokens_judged": len(ends)})
        self.judgements += 1
        self._judged_tokens, self._judged_chars = len(ends), len(self.text)
        if self.verdict.flagged:
            return ""
        if final or self.policy.window == 0:
            return self._release(len(self.text))
        keep = len(ends) - self.policy.window
        return self._release(ends[keep - 1] if keep > 0 else 0)

    def _verdict(self) -> ResponseVerdict:
        """The response head's verdict on the answer so far (the worst over the request's images); a fallback
        per ``policy.on_error`` when it cannot be judged (kept for the rest of the answer)."""
        start = time.perf_counter()
        try:
            if self._context is None:
                self._context = self.classifier.responses.response_context(self.request)
            rows = len(self._context.prompts)
            return worst_response(self.classifier.responses.judge_responses(self._context, [self.text] * rows, start))
        except (InvalidInputError, GuardInternalError) as err:
            on_error = self.classifier.policy.on_error
            if on_error == "block":
                raise
            reason = f"{type(err).__name__}: {err}"
            self._fallback = response_error_verdict(reason, on_error, self.policy, self.classifier.config.taxonomy)
            return self._fallback

    def _release(self, upto: int) -> str:
        """Release the text up to character ``upto`` (never back, never past the text judged last)."""
        upto = min(upto, self._judged_chars)
        if upto <= self.released:
            return ""
        delta, self.released = self.text[self.released : upto], upto
        return delta

    def _token_ends(self) -> list[int]:
        """Where each token of the answer ends (characters), by the guard's tokenizer; whitespace-separated words
        for a tokenizer without offsets."""
        try:
            encoded = self.tokenizer(self.text, add_special_tokens=False, return_offsets_mapping=True)
            return [end for begin, end in encoded["offset_mapping"] if end > begin]
        except (NotImplementedError, TypeError, KeyError, ValueError):
            return [match.end() for match in re.finditer(r"\S+", self.text)]
