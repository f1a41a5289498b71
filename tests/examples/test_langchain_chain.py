"""examples/langchain_chain.py runs offline on the tiny model and shows every adapter working."""

from __future__ import annotations

from script_runner import run_script


def test_langchain_example_runs_offline():
    lines = run_script("examples", "langchain_chain.py").splitlines()
    prefixes = [
        "verdict: action=",
        "guarded hosted model:",
        "risky request, strict policy: I'm sorry",
        "local model:",
        "streamed:",
    ]
    for prefix in prefixes:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    local = next(line for line in lines if line.startswith("local model:"))
    streamed = next(line for line in lines if line.startswith("streamed:"))
    # Greedy decoding: the streamed answer is the invoked one.
    assert local.split(": ", 1)[1].split(" (action=")[0] == streamed.split(":", 1)[1].strip()
