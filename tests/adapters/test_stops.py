"""Stop strings: cut before the first one, also when it straddles streamed chunks."""

from __future__ import annotations

from psaguard.adapters.stops import StopBuffer, truncate_at_stop


def test_truncate_cuts_before_the_earliest_stop():
    assert truncate_at_stop("a b STOP c END", ["END", "STOP"]) == ("a b ", True)
    assert truncate_at_stop("nothing here", ["STOP", ""]) == ("nothing here", False)


def test_buffer_never_emits_part_of_a_stop_split_over_chunks():
    buffer = StopBuffer(["<end>"])
    emitted = [buffer.push(chunk) for chunk in ["hello wor", "ld <e", "nd> ignored", " more"]]
    assert "".join(emitted) + buffer.flush() == "hello world "
    assert buffer.stopped and all("<" not in piece for piece in emitted)


def test_buffer_without_stops_passes_text_through():
    buffer = StopBuffer([])
    assert [buffer.push(c) for c in ["ab", "cd"]] == ["ab", "cd"] and buffer.flush() == ""
