"""examples/classify_remote_vlm.py runs offline: a classifier-only guard in front of a stand-in hosted VLM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "classify_remote_vlm.py"


def test_classify_remote_vlm_example_forwards_refuses_and_cannot_generate():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("classifier-only guard: ") and "parameters loaded (vision tower" in lines[0]
    assert any(line.startswith("default policy: action=") and "hosted model's answer" in line for line in lines)
    assert any(line.startswith("strict policy: action=refuse") and "hosted" not in line for line in lines)
    assert lines[-1] == "generate(): GenerationUnavailableError"
