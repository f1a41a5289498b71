"""Run the project's scripts (examples, benchmarks) as a user would: a fresh Python process, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(folder: str, name: str, *args: str, timeout: int = 300) -> str:
    """stdout of ``python <folder>/<name> <args>``; fails the test with the stderr tail if it exits non-zero."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / folder / name), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
