"""Checks of a saved Stage II LoRA adapter before PEFT reads it: safetensors weights only, a typed config.

PEFT falls back to ``adapter_model.bin`` (a pickle, read with torch's restricted unpickler) when there is no
safetensors file, and it trusts the types in ``adapter_config.json`` (``"r": "x"`` surfaced as a bare
``TypeError`` deep inside layer construction). psaguard never unpickles, so the adapter must be the
safetensors file, and the config's main LoRA fields are type-checked here first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from psaguard.checkpoints.files import read_json_file
from psaguard.errors import CheckpointError

__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "check_adapter_files"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_PICKLED_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pkl")
_MAX_CONFIG_BYTES = 1024 * 1024


class _LoraFields(BaseModel):
    """The fields of a LoRA ``adapter_config.json`` whose types PEFT relies on (others pass through to it)."""

    model_config = ConfigDict(extra="allow")

    peft_type: StrictStr = Field(description="PEFT method, e.g. 'LORA'.")
    r: StrictInt | None = Field(None, ge=1, le=65_536, description="LoRA rank.")
    lora_alpha: StrictInt | StrictFloat | None = Field(None, description="LoRA scaling numerator.")
    lora_dropout: StrictFloat | StrictInt | None = Field(None, ge=0, le=1, description="Dropout probability.")
    target_modules: StrictStr | list[StrictStr] | None = Field(None, description="Modules the adapter wraps.")
    inference_mode: StrictBool | None = Field(None, description="Whether the adapter was saved for inference.")


def check_adapter_files(adapter: Path) -> dict[str, Any]:
    """Raise :class:`CheckpointError` unless ``adapter`` holds safetensors weights and a well-typed config.

    Returns the parsed config.
    """
    pickled = [name for name in _PICKLED_NAMES if (adapter / name).exists()]
    if pickled:
        raise CheckpointError(
            f"{adapter} holds pickled adapter weights {pickled}; psaguard never unpickles: save the adapter "
            f"as {ADAPTER_WEIGHTS_NAME} (PEFT's default) and remove the pickle"
        )
    if not (adapter / ADAPTER_WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{adapter} has an {ADAPTER_CONFIG_NAME} but no {ADAPTER_WEIGHTS_NAME}")
    raw = read_json_file(adapter / ADAPTER_CONFIG_NAME, _MAX_CONFIG_BYTES, CheckpointError, "adapter config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{adapter / ADAPTER_CONFIG_NAME} must hold a JSON object")
    try:
        _LoraFields.model_validate(raw)
    except ValidationError as err:
        raise CheckpointError(f"invalid adapter config {adapter / ADAPTER_CONFIG_NAME}:\n{err}") from err
    return raw
