"""examples/langchain_chain.py runs offline on the tiny model and shows every adapter working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langchain_chain.py"


def test_langchain_example_runs_offline():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    prefixes = ["verdict: action=", "guarded hosted model:", "with a strict policy:", "local model:", "streamed:"]
    for prefix in prefixes:
        assert any(line.startswith(prefix) for line in lines), (prefix, result.stdout)
    local = next(line for line in lines if line.startswith("local model:"))
    streamed = next(line for line in lines if line.startswith("streamed:"))
    # Greedy decoding: the streamed answer is the invoked one.
    assert local.split(": ", 1)[1].split(" (action=")[0] == streamed.split(":", 1)[1].strip()
