"""What a user sees from ``psaguard train`` in a fresh process: step lines by default, hints for missing extras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def _psaguard(*argv: str, block: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command in a new process (logging starts unconfigured), optionally with a module missing."""
    prelude = f"import sys; sys.modules[{block!r}] = None; " if block else "import sys; "
    code = prelude + "from psaguard.cli.main import main; raise SystemExit(main(sys.argv[1:]))"
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, env=env, check=False
    )


def test_train_logs_its_step_lines_by_default_without_progress_bar_spam(
    stage1_settings: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "s1.yaml"
    config.write_text(yaml.safe_dump({**stage1_settings, "progress_bar": True, "max_steps": 3}), encoding="utf-8")
    done = _psaguard("train", "stage1", "--config", str(config))
    assert done.returncode == 0, done.stderr
    for step in (1, 2, 3):
        assert f"step {step}/3 | loss" in done.stderr
    assert "INFO psaguard.training.loop" in done.stderr
    assert "\r" not in done.stderr  # stderr is not a terminal: no tqdm redraws


def test_a_missing_training_extra_is_a_one_line_install_hint_and_exit_2(
    stage1_settings: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "s1.yaml"
    config.write_text(yaml.safe_dump(stage1_settings), encoding="utf-8")
    for argv in (("train", "stage1", "--config", str(config)), ("world", "run", "--out", str(tmp_path / "w"))):
        done = _psaguard(*argv, block="accelerate")
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            "psaguard: error: this command needs 'accelerate', which is not installed: pip install 'psaguard[train]'"
        ]
