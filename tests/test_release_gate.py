"""The release gate lets a piece of a streamed answer out only once the monitor released the text up to its end."""

from __future__ import annotations

from psaguard.generation.release_gate import ReleaseGate


class WordMonitor:
    """A monitor releasing the answer one word behind its end (whole words only), stopping at 'BAD'."""

    def __init__(self) -> None:
        self.text = ""
        self.released = 0
        self.stopped = False
        self.finished = 0

    def push(self, chunk: str) -> str:
        self.text += chunk
        self.stopped = "BAD" in self.text
        if not self.stopped:
            ends = [index for index, char in enumerate(self.text) if char == " "]
            self.released = max(self.released, ends[-2] + 1 if len(ends) > 1 else 0)
        return ""

    def finish(self) -> str:
        self.finished += 1
        self.stopped = "BAD" in self.text
        if not self.stopped:
            self.released = len(self.text)
        return ""


def test_pieces_come_out_in_order_once_their_text_is_released():
    gate: ReleaseGate[str] = ReleaseGate(WordMonitor())
    gate.hold("role")
    assert gate.push("a ", "a ") == ["role"]  # "role" precedes any text: out at the first release; "a " held
    assert gate.push("b ", "b ") == ["a "]
    gate.hold("tool")  # no text: after "b ", which is not released yet
    assert gate.push("c", "c") == [] and gate.held == 3
    assert gate.push(" ", " ") == ["b ", "tool"]
    assert gate.finish() == ["c", " "] and gate.held == 0


def test_a_stop_drops_what_is_held_and_nothing_more_comes_out():
    monitor = WordMonitor()
    gate: ReleaseGate[str] = ReleaseGate(monitor)
    assert gate.push("a ", "a ") == [] and gate.push("b ", "b ") == ["a "]
    assert gate.push("BAD ", "BAD ") == [] and gate.stopped and gate.held == 0
    gate.hold("finish")
    assert gate.push("c ", "c ") == [] and gate.finish() == [] and gate.held == 0 and monitor.finished == 0


def test_an_answer_without_text_is_released_unjudged():
    monitor = WordMonitor()
    gate: ReleaseGate[str] = ReleaseGate(monitor)
    gate.hold("role")
    assert gate.push("space", " ") == ["role"]
    gate.hold("finish")
    assert gate.finish() == ["space", "finish"] and monitor.finished == 0
