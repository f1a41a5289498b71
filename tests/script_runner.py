"""Run the project's scripts (examples, benchmarks) as a user would: a fresh Python process, offline."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _kill_group(process: subprocess.Popen) -> None:
    """Kill what is left of the script's process group (its workers too), then reap the script."""
    with contextlib.suppress(ProcessLookupError):  # the script and everything it started have already exited
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_script(folder: str, name: str, *args: str, timeout: int = 300) -> str:
    """stdout of ``python <folder>/<name> <args>``; fails the test with the stderr tail if it exits non-zero.

    The script runs in a process group of its own, killed whole when it outlives ``timeout`` (or the test is
    interrupted), so no worker it started keeps running after the test.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / folder / name), *args]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            _kill_group(process)
    assert process.returncode == 0, stderr[-3000:]
    return stdout
