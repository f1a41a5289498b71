"""Two-stage PSA-VLM trainer (needs the ``train`` extra: peft, bitsandbytes, accelerate, matplotlib, pyyaml).

Stage I trains the safety modules on a frozen model; Stage II adds LoRA to the language model. Both read
validated JSONL data, run one shared loop with resumable checkpoints, and write metrics and plots.
Importing this package loads none of the heavy dependencies; they load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psaguard._lazy import lazy_exports

_EXPORTS = {
    "CalibrationResult": "psaguard.training.calibration",
    "DatasetReport": "psaguard.training.data",
    "EarlyStopping": "psaguard.training.config",
    "EvalReport": "psaguard.training.evaluate",
    "Example": "psaguard.training.data",
    "LoraSettings": "psaguard.training.config",
    "QuantConfig": "psaguard.training.config",
    "SampleRow": "psaguard.training.rows",
    "Stage1Config": "psaguard.training.config",
    "Stage2Config": "psaguard.training.config",
    "balance_safe": "psaguard.training.data",
    "build_bnb_config": "psaguard.training.quant",
    "build_lora_config": "psaguard.training.quant",
    "calibrate_guard": "psaguard.training.calibration",
    "calibrated_guard": "psaguard.training.calibration",
    "evaluate_guard": "psaguard.training.evaluate",
    "load_config": "psaguard.training.config",
    "read_jsonl": "psaguard.training.data",
    "threshold_sweep": "psaguard.training.sweep",
    "train_stage1": "psaguard.training.stage1",
    "train_stage2": "psaguard.training.stage2",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from psaguard.training.calibration import CalibrationResult, calibrate_guard, calibrated_guard
    from psaguard.training.config import (
        EarlyStopping,
        LoraSettings,
        QuantConfig,
        Stage1Config,
        Stage2Config,
        load_config,
    )
    from psaguard.training.data import DatasetReport, Example, balance_safe, read_jsonl
    from psaguard.training.evaluate import EvalReport, evaluate_guard
    from psaguard.training.quant import build_bnb_config, build_lora_config
    from psaguard.training.rows import SampleRow
    from psaguard.training.stage1 import train_stage1
    from psaguard.training.stage2 import train_stage2
    from psaguard.training.sweep import threshold_sweep


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
