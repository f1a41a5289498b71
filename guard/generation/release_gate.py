"""The release gate: the pieces of a streamed answer (chunks, server-sent events) held back until judged.

An answer from a model the guard does not run arrives as pieces, each carrying some text (or none: a role
chunk, a tool-call chunk, a finish event). :class:`ReleaseGate` feeds each piece's text to a monitor
(:class:`~psaguard.generation.monitor.AnswerMonitor`: judges the answer every ``policy.response.interval`` tokens of the
guard's tokenizer, releases text up to ``policy.response.window`` tokens behind the last judged position) and
lets a piece out only once the monitor has released all the answer's text up to the piece's end. The LangChain
adapters (``guarded()``, ``PsaGuardMiddleware``) and the server's proxy mode both hold back through it, so the
two release by the same rule as the guard's own generation monitor. Torch-free and client-free: the gate only
counts characters.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

__all__ = ["ReleaseGate", "TextMonitor"]

Piece = TypeVar("Piece")


class TextMonitor(Protocol):
    """What the gate needs of a monitor (:class:`~psaguard.generation.monitor.AnswerMonitor` is one)."""

    @property
    def text(self) -> str:
        """The answer so far."""
        ...

    @property
    def released(self) -> int:
        """Characters of ``text`` judged and released."""
        ...

    @property
    def stopped(self) -> bool:
        """True once a judgement flagged the answer."""
        ...

    def push(self, chunk: str) -> str:
        """Add ``chunk`` to the answer (judging it when due); the text newly released."""
        ...

    def finish(self) -> str:
        """Judge the rest of the answer; the text newly released."""
        ...


class ReleaseGate(Generic[Piece]):
    """Holds the pieces of one streamed answer until ``monitor`` has released the text up to their end.

    :meth:`push` adds a piece with its text and returns the pieces now released, in order; :meth:`hold` adds a
    piece without text, which comes out only with a later release (or at the end), once the text before it is
    released, so it never overtakes text held before it. :meth:`finish` judges the rest of the answer (one
    without text, or only whitespace, is not judged) and releases every piece held when it passes. Once the
    monitor stops the answer nothing more comes out and the held pieces are dropped. Not thread-safe: one
    answer's pieces come one at a time.
    """

    def __init__(self, monitor: TextMonitor) -> None:
        self.monitor = monitor
        self._held: deque[tuple[Piece, int]] = deque()

    @property
    def stopped(self) -> bool:
        """True once the monitor flagged the answer."""
        return self.monitor.stopped

    @property
    def held(self) -> int:
        """Pieces held back now."""
        return len(self._held)

    def push(self, piece: Piece, text: str) -> list[Piece]:
        """Add ``piece`` carrying ``text`` (judged when due); the pieces now released (none after a stop)."""
        if self.stopped:
            return self.drop()
        self.monitor.push(text)
        if self.stopped:
            return self.drop()
        self._held.append((piece, len(self.monitor.text)))
        return self._release(self.monitor.released)

    def hold(self, piece: Piece) -> None:
        """Add ``piece`` (without text); a later :meth:`push` or :meth:`finish` releases it."""
        if not self.stopped:
            self._held.append((piece, len(self.monitor.text)))

    def finish(self) -> list[Piece]:
        """At the end of the answer: judge the rest; every piece held when the answer passed, else none."""
        if not self.stopped and self.monitor.text.strip():
            self.monitor.finish()
        if self.stopped:
            return self.drop()
        return self._release(len(self.monitor.text))

    def drop(self) -> list[Piece]:
        """Forget the held pieces (a stopped or broken answer); nothing released."""
        self._held.clear()
        return []

    def _release(self, upto: int) -> list[Piece]:
        released = []
        while self._held and self._held[0][1] <= upto:
            released.append(self._held.popleft()[0])
        return released
