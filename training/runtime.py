"""Set-up and wrap-up both stages share: accelerator, base model, data, and the files written at the end."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from psaguard.checkpoints.serialization import atomic_write_text
from psaguard.errors import ConfigError, DatasetError
from psaguard.guard import SafetyGuard
from psaguard.loading import TORCH_DTYPES
from psaguard.training.checkpoint import TrainState
from psaguard.training.collate import Collator
from psaguard.training.config import CONFIG_FILE_NAME, QuantConfig, TrainConfig
from psaguard.training.data import MAX_REPORTED_ERRORS, DatasetReport, Example, balance_safe, read_jsonl
from psaguard.training.diagnostics import count_unknown_tokens, warn_unknown_tokens
from psaguard.training.hints import label_hinter
from psaguard.training.loop import TrainTask, run_training
from psaguard.training.quant import build_bnb_config, unquantized_modules_for

__all__ = [
    "RUN_SUMMARY_NAME",
    "StageSetup",
    "build_collator",
    "enable_checkpointing",
    "final_evaluation",
    "finish",
    "load_data",
    "load_model",
    "load_model_from",
    "make_accelerator",
    "run_stage",
    "run_summary",
    "trainable_summary",
    "write_run_files",
]

logger = logging.getLogger(__name__)


@dataclass
class StageSetup:
    """A stage ready to run: the loop's task, the guard being trained, and how the data was read."""

    task: TrainTask
    guard: SafetyGuard
    reports: dict[str, DatasetReport]


def make_accelerator(cfg: TrainConfig) -> Any:
    """An ``accelerate.Accelerator`` for ``cfg``, and seeded RNGs.

    The loop places tensors itself (a 4-bit model cannot be moved) and autocasts itself (``mixed_precision``).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(cpu=cfg.cpu, device_placement=False)
    set_seed(cfg.seed)
    return accelerator


def load_model(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, Any]:
    """The frozen base model (4-bit language model if ``cfg.quant`` says so) on ``device``, and its processor."""
    model, processor = load_model_from(cfg.model, cfg.processor, cfg.quant, cfg.model_dtype, device)
    for module in model.modules():
        # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer for a faster kernel the first time it runs
        # in eval mode without grad, and that kernel has no backward: after the first evaluation, gradients
        # through the frozen 4-bit model would be silently wrong. Training keeps the differentiable path.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model, processor


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing (works although the model's inputs do not require grad)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_model_from(
    model_id: str, processor_id: str | None, quant_cfg: QuantConfig, model_dtype: str, device: torch.device
) -> tuple[nn.Module, Any]:
    """:func:`load_model` from explicit settings (``model_dtype`` 'auto' = bfloat16 on CUDA, else float32)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    quant = build_bnb_config(quant_cfg, _family_skip_modules(model_id) if quant_cfg.load_in_4bit else ())
    dtype = TORCH_DTYPES.get(model_dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quant is not None:
        # A 4-bit model is placed while loading; an index is the form every transformers version accepts.
        target = torch.cuda.current_device() if device.type == "cuda" and device.index is None else str(device)
        kwargs.update(quantization_config=quant, device_map={"": target})
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs)
        processor = AutoProcessor.from_pretrained(processor_id or model_id)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model {model_id!r}: {err}") from err
    if quant is None:
        model.to(device)
    model.requires_grad_(False)
    model.eval()
    return model, processor


def load_data(
    cfg: TrainConfig, guard: SafetyGuard, collate: Collator
) -> tuple[list[Example], list[Example] | None, dict[str, DatasetReport]]:
    """Training examples (balanced when ``cfg.num_safe`` is set), evaluation examples, and the read reports.

    Every example is also tokenized once, so that template and length problems surface before training
    (as errors, or as skipped rows with ``cfg.skip_invalid_rows``).
    """
    files = {"train": cfg.train_data, "eval": cfg.eval_data}
    examples: dict[str, list[Example]] = {}
    reports: dict[str, DatasetReport] = {}
    for split, path in files.items():
        if path is None:
            continue
        rows, report = read_jsonl(
            path,
            image_root=cfg.image_root,
            taxonomy=guard.classifier.config.taxonomy,
            skip_invalid=cfg.skip_invalid_rows,
        )
        needs_answers = getattr(cfg, "lm_loss_weight", 1.0) > 0  # Stage II, and Stage I unless its LM loss is off
        examples[split], reports[split] = _encodable(rows, report, collate, cfg.skip_invalid_rows, needs_answers)
    unknown = count_unknown_tokens(collate.tokenizer, examples["train"])
    reports["train"] = reports["train"].model_copy(update={"unknown_tokens": unknown})
    warn_unknown_tokens(unknown, cfg.max_unknown_token_rate)
    train = examples["train"]
    if cfg.num_safe is not None:
        train = balance_safe(train, cfg.num_safe, cfg.seed, guard.classifier.config.taxonomy)
        logger.info(
            "balanced training data: %d of %d examples (num_safe=%d)", len(train), len(examples["train"]), cfg.num_safe
        )
    return train, examples.get("eval"), reports


def _encodable(
    examples: list[Example], report: DatasetReport, collate: Collator, skip: bool, needs_answers: bool = True
) -> tuple[list[Example], DatasetReport]:
    kept, errors = [], []
    for example in examples:
        try:
            if needs_answers and not example.has_response:
                raise example.error(
                    "request-only row (no 'response'): the LM loss needs an answer to learn "
                    "(use it with lm_loss_weight=0 in Stage I, or skip_invalid_rows)"
                )
            collate.encode(example)
        except DatasetError as err:
            if not skip:
                raise
            errors.append(str(err))
            continue
        kept.append(example)
    if not kept:
        raise DatasetError("no example fits the chat template and max_length", report.path)
    update = {
        "kept": len(kept),
        "skipped": report.skipped + len(errors),
        "errors": [*report.errors, *errors][:MAX_REPORTED_ERRORS],
    }
    return kept, report.model_copy(update=update)


def build_collator(guard: SafetyGuard, cfg: TrainConfig) -> Collator:
    """The collator of ``guard``'s model, with the guard's image preprocessing (vision budget, then the family's)."""
    classifier = guard.classifier
    return Collator(
        classifier.processor,
        classifier.backbone.placeholder_token_id,
        classifier.preprocess,  # within the vision budget, as the guard judges at inference
        cfg.max_length,
        classifier.config.max_image_pixels,
        hint=label_hinter(classifier.policy, classifier.config.taxonomy) if cfg.train_with_hints else None,
    )


def finish(setup: StageSetup, cfg: TrainConfig, state: TrainState) -> None:
    """Write the run files and the final evaluation (call on the main process only)."""
    write_run_files(cfg, state, setup.reports)
    final_evaluation(setup.guard, setup.task.eval_set, cfg)


def write_run_files(cfg: TrainConfig, state: TrainState, reports: dict[str, DatasetReport]) -> None:
    """The config, data reports, metric history and (if enabled) plots, into ``cfg.output_dir``."""
    out = cfg.output_dir
    atomic_write_text(out / CONFIG_FILE_NAME, cfg.model_dump_json(indent=2) + "\n")
    atomic_write_text(
        out / "data_report.json",
        json.dumps({name: report.model_dump() for name, report in reports.items()}, indent=2) + "\n",
    )
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(record) + "\n" for record in state.history))
    atomic_write_text(out / RUN_SUMMARY_NAME, json.dumps(run_summary(state), indent=2) + "\n")
    if cfg.plots:
        from psaguard.training.plots import plot_history

        plot_history(state.history, out / "plots" / "curves.png")


RUN_SUMMARY_NAME = "run_summary.json"
"""Which step the saved result is, and why the run ended."""


def run_summary(state: TrainState) -> dict[str, Any]:
    """Steps run, the best evaluated step (the saved one with keep-best) and why the run ended."""
    return {
        "steps": state.step,
        "total_steps": state.total_steps,
        "stopped_early": state.stop_reason is not None,
        "stop_reason": state.stop_reason or f"all {state.total_steps} steps done",
        "saved_step": state.best.step if state.best is not None else state.step,
        "best": state.best.model_dump() if state.best is not None else None,
    }


def trainable_summary(module: nn.Module) -> str:
    """'N of M parameters trainable' for logs."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return f"{trainable:,} of {sum(p.numel() for p in module.parameters()):,} parameters trainable"


def final_evaluation(guard: SafetyGuard, examples: Sequence[Example] | None, cfg: TrainConfig) -> None:
    """Evaluate the trained guard's head on ``examples`` and write the report and plots to ``output_dir/eval``."""
    if not examples:
        return
    from psaguard.training.evaluate import evaluate_guard, write_report

    guard.classifier.modules.eval()
    report = evaluate_guard(guard, examples, batch_size=cfg.eval_batch_size or cfg.batch_size)
    write_report(report, cfg.output_dir / "eval", plots=cfg.plots)
    logger.info(
        "final evaluation: level accuracy %.3f (macro-F1 %.3f, ECE %.3f), type accuracy %.3f (macro-F1 %.3f, "
        "ECE %.3f), risk F1 %.3f",
        report.level.accuracy,
        report.level.macro_f1,
        report.level.ece,
        report.type.accuracy,
        report.type.macro_f1,
        report.type.ece,
        report.detection.f1,
    )


def run_stage(build: Callable[[Any, Any], StageSetup], cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Build a stage with ``build(cfg, accelerator)``, train it, save its outputs, return the output directory."""
    accelerator = make_accelerator(cfg)
    setup = build(cfg, accelerator)
    state = run_training(setup.task, cfg, accelerator, resume=resume)
    if accelerator.is_main_process:
        finish(setup, cfg, state)
    return cfg.output_dir


def _family_skip_modules(model_id: str) -> tuple[str, ...]:
    """What 4-bit loading keeps in full precision for the model at ``model_id``, from its family adapter."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(model_id).model_type
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the config of model {model_id!r}: {err}") from err
    return unquantized_modules_for(model_type)
