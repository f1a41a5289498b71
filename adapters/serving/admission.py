"""Admission control: a bound on the image pixels the server holds at once, and cancellation of model work.

Each request's images are charged to a :class:`PixelBudget` by their header size, before they are decoded,
and stay charged until the last work on them ends: decoding, waiting in the batcher's queue, the guard's
processor and forward pass, and in local mode the whole generation (the processor's copies of an image, its
model-side cost, grow with its pixels as the decoded image does). A request whose images do not fit in what
is left gets a 503 with ``Retry-After`` at once, so memory and CPU in flight stay bounded whatever the
clients send; the batcher's queue holds only charged images, so it is bounded by the budget too. One image
of the largest size the guard accepts always fits when nothing else is in flight.

A :class:`Ticket` is one request's share. Work that outlives the request handler (a generation whose
request timed out, a stream) retains the ticket and releases it when it really ends, so the budget never
counts as free what a thread still holds. :class:`Cancellation` lets that work stop early: a generation
checks it between tokens, queued work checks it before it starts.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from transformers import StoppingCriteria

from psaguard.serving.metrics import ServeMetrics
from psaguard.serving.protocol import ApiError

__all__ = ["RETRY_AFTER_S", "Cancellation", "PixelBudget", "Ticket"]

RETRY_AFTER_S = 1
"""``Retry-After`` (seconds) of a request refused because the budget is spent."""


class PixelBudget:
    """At most ``capacity`` pixels of request images in flight; thread-safe (tickets end in worker threads)."""

    def __init__(self, capacity: int, metrics: ServeMetrics) -> None:
        if capacity < 1:
            raise ValueError("the pixel budget must be positive")
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()
        self._metrics = metrics

    @property
    def used(self) -> int:
        """Pixels charged now."""
        return self._used

    def ticket(self) -> Ticket:
        """A new request's share (holding nothing yet, held once by the caller)."""
        return Ticket(self)

    def _take(self, pixels: int) -> bool:
        with self._lock:
            if self._used + pixels > self.capacity:
                return False
            self._used += pixels
            self._metrics.pixels_in_flight.set(self._used)
            return True

    def _give(self, pixels: int) -> None:
        with self._lock:
            self._used -= pixels
            self._metrics.pixels_in_flight.set(self._used)


class Ticket:
    """One request's charge on a :class:`PixelBudget`, returned when its last holder releases it."""

    def __init__(self, budget: PixelBudget) -> None:
        self._budget = budget
        self._pixels = 0
        self._holders = 1
        self._lock = threading.Lock()
        self.cancellation = Cancellation()

    @property
    def pixels(self) -> int:
        return self._pixels

    def charge(self, pixels: int, param: str) -> None:
        """Add ``pixels`` to this request's charge, or a 503 with ``Retry-After`` when the budget has no room."""
        if pixels <= 0:
            return
        if not self._budget._take(pixels):
            raise ApiError(
                503,
                f"{param}: the server holds too many image pixels in flight ({self._budget.capacity} at most); "
                "retry later",
                type="server_error",
                code="overloaded",
                param=param,
                headers={"retry-after": str(RETRY_AFTER_S)},
            )
        with self._lock:
            self._pixels += pixels

    def refund(self) -> None:
        """Return the charge now: the request's images are judged and dropped (proxy mode, before the upstream
        answers); later holders hold nothing."""
        with self._lock:
            pixels, self._pixels = self._pixels, 0
        if pixels:
            self._budget._give(pixels)

    def retain(self) -> None:
        """One more holder (work that may outlive the request handler)."""
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        """One holder less; the last one returns the charge to the budget."""
        with self._lock:
            self._holders -= 1
            pixels = self._pixels if self._holders == 0 else 0
            if self._holders == 0:
                self._pixels = 0
        if pixels:
            self._budget._give(pixels)


class Cancellation(StoppingCriteria):
    """Set when the request is abandoned (timed out or disconnected); as a ``stopping_criteria`` entry it ends a
    generation at its next token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancelled, dtype=torch.bool, device=input_ids.device)
