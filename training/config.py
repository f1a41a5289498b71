"""Configs of the two training stages, read from YAML or JSON with ``key=value`` overrides.

Defaults follow the paper (supplementary Table 1 and the official ``train.py``): lr 1e-5, 3 epochs,
per-device batch 2 x 8 accumulation, AdamW without weight decay, grad-norm clip 1.0, 20 (Stage I) and
300 (Stage II) warmup steps, seed 256, lambda = 10, LoRA r=256 / alpha=16 / dropout 0.05. The 4-bit
settings are psaguard's addition for single-GPU use; the paper trains in bf16.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from psaguard.config import SafetyGuardConfig
from psaguard.errors import ConfigError
from psaguard.training.config_files import parse_yaml, read_config_mapping

__all__ = [
    "CONFIG_FILE_NAME",
    "LLM_LINEAR_PATTERN",
    "EarlyStopping",
    "LoraSettings",
    "QuantConfig",
    "Stage1Config",
    "Stage2Config",
    "TrainConfig",
    "apply_overrides",
    "llm_linear_pattern",
    "load_config",
]

CONFIG_FILE_NAME = "training_config.json"
"""Name of the copy of the config written into a stage's output directory."""


def llm_linear_pattern(language_model_name: str = "language_model") -> str:
    """Every attention and MLP projection under the module ``language_model_name``, nothing in the vision tower."""
    return rf".*{re.escape(language_model_name)}.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


LLM_LINEAR_PATTERN = llm_linear_pattern()
"""The LoRA targets of models that keep their language model in ``language_model`` (most families)."""

Config = TypeVar("Config", bound="TrainConfig")


class QuantConfig(BaseModel):
    """bitsandbytes 4-bit quantization of the frozen language model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    load_in_4bit: bool = Field(False, description="Load the language model in 4 bits (QLoRA style).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (NF4 as in QLoRA).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype the 4-bit layers compute in."
    )
    skip_modules: tuple[str, ...] | None = Field(
        None,
        description="Full module names kept unquantized; None: the model family adapter's unquantized_modules "
        "(vision tower, projector, output layer).",
    )


class LoraSettings(BaseModel):
    """LoRA adapters on the language model (Stage II)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(256, ge=1, description="Rank (paper: 256).")
    alpha: int = Field(16, ge=1, description="Scaling numerator; the update is scaled by alpha / r (paper: 16).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input (paper: 0.05).")
    target_modules: str | None = Field(
        None,
        description="Regex (full match) of the module names that get adapters; None: every attention and MLP "
        "projection of the language model, wherever the model's family adapter says it lives.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")


StopMetric = Literal["auto", "head_loss", "macro_f1", "lm_loss", "loss"]


class EarlyStopping(BaseModel):
    """Keep-best and early stopping on the evaluation split (only when ``eval_data`` is given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="Save the best evaluated step instead of the last, and stop when it stops improving."
    )
    metric: StopMetric = Field(
        "auto",
        description="What 'best' means: eval head_loss, macro_f1 (mean of both heads, higher is better), "
        "lm_loss or total loss; 'auto' = head_loss in Stage I (lm_loss if the head is not trained), "
        "lm_loss in Stage II.",
    )
    patience: int | None = Field(
        5, ge=1, description="Evaluations without improvement before the run stops; None = never stop early."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest change of the metric that counts as improvement.")
    ties: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Whose weights to keep when a later evaluation is as good as the best (without improving on "
        "it by min_delta): the earliest's, or the latest's, which trained longer (e.g. on a val split the model "
        "soon gets all right). Either way such an evaluation counts towards patience.",
    )


class TrainConfig(BaseModel):
    """Settings shared by both stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Base LLaVA model: a local directory or a hub id.")
    processor: str | None = Field(None, description="Processor location; None uses 'model'.")
    train_data: Path = Field(description="Training JSONL file.")
    eval_data: Path | None = Field(None, description="Evaluation JSONL file, evaluated after every epoch.")
    image_root: Path | None = Field(None, description="Directory image paths are relative to; None = the JSONL's.")
    skip_invalid_rows: bool = Field(False, description="Skip (and count) invalid rows instead of stopping.")
    output_dir: Path = Field(description="Where the result, checkpoints, metrics and plots go.")
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype of the unquantized model weights; 'auto' = bfloat16 on CUDA, else float32."
    )
    cpu: bool = Field(False, description="Train on the CPU even when a GPU is present.")
    quant: QuantConfig = Field(default_factory=QuantConfig, description="4-bit loading of the language model.")
    epochs: int = Field(3, ge=1, description="Passes over the training data (paper: 3).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(2, ge=1, description="Examples per device per micro-batch (paper: 2).")
    grad_accum: int = Field(8, ge=1, description="Micro-batches per optimizer step (paper: 8 on 8 GPUs).")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (paper: 1e-5).")
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW weight decay on matrices and token tables, not biases or norm gains (paper: 0)."
    )
    decay_norms_and_biases: bool = Field(
        False, description="Weight decay on biases and normalization gains too (a stronger regularizer)."
    )
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps, then linear decay to 0.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clip (paper: 1.0).")
    max_length: int = Field(2048, ge=16, description="Text tokens per example (image tokens not counted).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations of the model in backward.")
    mixed_precision: Literal["no", "bf16"] = Field("no", description="bf16 autocast of the forward passes.")
    seed: int = Field(256, description="Seed of initialisation, shuffling and dropout (paper: 256).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    eval_batch_size: int | None = Field(None, ge=1, description="Batch size of evaluation; None = batch_size.")
    eval_every: int | None = Field(
        None, ge=1, description="Optimizer steps between evaluations; None = after every epoch (and at the end)."
    )
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping, description="Keep-best and early stopping on eval_data."
    )
    max_unknown_token_rate: float = Field(
        0.01, ge=0, le=1, description="Warn when more of the training text's tokens than this are the unk token."
    )
    chance_check_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of the steps after which a head loss still at chance (the label entropy) is warned about.",
    )
    log_every: int = Field(10, ge=1, description="Optimizer steps between log lines.")
    checkpoint_every: int = Field(500, ge=1, description="Optimizer steps between resumable checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept on disk.")
    num_safe: int | None = Field(
        None, ge=0, description="Balance the data: all risky examples + this many safe ones; None keeps all."
    )
    progress_bar: bool = Field(True, description="Show a tqdm progress bar.")
    train_with_hints: bool = Field(
        True,
        description="Append to each row the safety hint guarded generation would add for its labels, so the LLM "
        "learns to follow hints (the paper uses hints at inference only).",
    )
    plots: bool = Field(True, description="Write PNG plots of the curves at the end.")

    @property
    def stop_metric(self) -> str:
        """The early-stopping metric with 'auto' resolved (the stages refine 'auto')."""
        return "loss" if self.early_stopping.metric == "auto" else self.early_stopping.metric


class Stage1Config(TrainConfig):
    """Stage I: train the safety modules (projector, both token sets, head); the base model is frozen."""

    guard: SafetyGuardConfig = Field(default_factory=SafetyGuardConfig, description="Config of the fresh guard.")
    init_guard: Path | None = Field(None, description="Start from this saved guard instead of fresh modules.")
    head_loss_weight: float = Field(10.0, ge=0, description="lambda in L = L_LM + lambda (CE_level + CE_type).")
    lm_loss_weight: float = Field(1.0, ge=0, description="Weight of the LM loss (trains llm_tokens).")
    modules_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Dtype the safety modules are trained (and saved) in."
    )
    num_safe: int | None = Field(3000, ge=0, description="All risky examples + this many safe ones (paper: 3000).")

    calibrate: bool = Field(
        True, description="Fit the heads' softmax temperatures on eval_data at the end (needs eval_data)."
    )

    @model_validator(mode="after")
    def _has_a_loss(self) -> Stage1Config:
        if self.lm_loss_weight == 0 and self.head_loss_weight == 0:
            raise ValueError("lm_loss_weight and head_loss_weight are both 0: nothing would be trained")
        return self

    @property
    def stop_metric(self) -> str:
        """The early-stopping metric with 'auto' resolved."""
        if self.early_stopping.metric != "auto":
            return self.early_stopping.metric
        return "head_loss" if self.head_loss_weight > 0 else "lm_loss"


class Stage2Config(TrainConfig):
    """Stage II: LoRA on the language model (QLoRA by default); the safety modules are frozen."""

    guard: Path = Field(description="The Stage I guard directory.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings.")
    quant: QuantConfig = Field(
        default_factory=lambda: QuantConfig(load_in_4bit=True), description="4-bit loading (on by default)."
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations of the model in backward.")
    warmup_steps: int = Field(300, ge=0, description="Linear warmup steps (paper: 300).")

    @model_validator(mode="after")
    def _lm_metric(self) -> Stage2Config:
        if self.early_stopping.metric in ("head_loss", "macro_f1"):
            raise ValueError(
                f"early_stopping.metric {self.early_stopping.metric!r}: Stage II does not train the head; "
                "use 'lm_loss' (or 'auto')"
            )
        return self

    @property
    def stop_metric(self) -> str:
        """The early-stopping metric with 'auto' resolved."""
        return "lm_loss" if self.early_stopping.metric == "auto" else self.early_stopping.metric


def load_config(cls: type[Config], path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a stage config from a YAML or JSON file, then apply ``key=value`` overrides.

    Keys may be dotted (``quant.load_in_4bit=true``); values are parsed as YAML scalars or lists. The file
    and the values are read within bounds (:mod:`psaguard.training.config_files`).

    Raises:
        ConfigError: The file is unreadable, a key is unknown, or a value is invalid.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_config_mapping(Path(path))
    raw = apply_overrides(raw, overrides or [])
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid {cls.__name__}{where}:\n{err}") from err


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``dotted.key=value`` override set; :class:`ConfigError` for anything invalid."""
    result = _plain_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        value = parse_yaml(text, f"the value of override {item[:200]!r}") if text.strip() else None
        *parents, leaf = key.strip().split(".")
        node = result
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return result


def _plain_copy(raw: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``raw`` as plain JSON values (the caller's dict stays as it was)."""
    try:
        return json.loads(json.dumps(raw, default=str))
    # ValueError: a circular reference or an integer too long to print; RecursionError: nested too deep.
    except (ValueError, TypeError, RecursionError) as err:
        raise ConfigError(f"the config cannot be copied as plain data: {type(err).__name__}: {err}") from err
