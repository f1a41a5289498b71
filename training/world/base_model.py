"""A tiny base VLM that can do the world's safe VQA, so the guard has a capability to keep.

:func:`build_base_vlm` makes a tiny LLaVA (:mod:`psaguard.tiny`) whose tokenizer knows every world word;
:func:`train_safe_vqa` teaches it the safe rows of a world with a plain supervised loop (all weights
trainable, loss on the answer tokens only); :func:`vqa_accuracy` measures exact-match accuracy with
greedy decoding. Sized to run on a laptop CPU in about a minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from psaguard.tiny import TinyLlavaSpec, build_tiny_llava, build_tiny_processor
from psaguard.training.world.build import WorldRow, read_rows
from psaguard.training.world.vocabulary import split_words, world_vocabulary

__all__ = [
    "BaseVlmConfig",
    "BaseVlmResult",
    "SftResult",
    "build_base_vlm",
    "encode_rows",
    "pretrain_vision",
    "teach_base_vlm",
    "train_safe_vqa",
    "vqa_accuracy",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class BaseVlmConfig(BaseModel):
    """Size of the tiny base VLM and of its safe-VQA training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(32, description="Model input side in pixels.")
    patch_size: int = Field(8, description="ViT patch side; 32 / 8 gives 16 image tokens, quick on a CPU.")
    text_hidden: int = Field(128, description="Language model width (multiple of 64).")
    text_layers: int = Field(2, description="Language model depth.")
    vision_hidden: int = Field(64, description="Vision tower width.")
    vision_steps: int = Field(1500, ge=0, description="Steps of vision pre-training (stands in for CLIP's).")
    vision_lr: float = Field(3e-3, gt=0, description="Learning rate of vision pre-training.")
    steps: int = Field(500, ge=1, description="Optimizer steps of the VQA fine-tuning.")
    batch_size: int = Field(32, ge=1, description="Rows per step.")
    # 3e-3 makes the tiny language model ignore the image (attention collapses); 1e-3 does not.
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup: int = Field(20, ge=0, description="Warm-up steps.")
    seed: int = Field(0, description="Seed of the weights and of the batch order.")
    eval_rows: int = Field(400, ge=1, description="Most safe rows evaluated per set in teach_base_vlm.")

    def tiny_spec(self) -> TinyLlavaSpec:
        return TinyLlavaSpec(
            image_size=self.image_size,
            patch_size=self.patch_size,
            text_hidden=self.text_hidden,
            text_layers=self.text_layers,
            intermediate=2 * self.text_hidden,
            vision_hidden=self.vision_hidden,
            extra_words=world_vocabulary(),
            seed=self.seed,
        )


class SftResult(BaseModel):
    """What a safe-VQA training run did."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(description="Optimizer steps taken.")
    rows: int = Field(description="Training rows (safe rows of the split).")
    first_loss: float = Field(description="Mean loss of the first 10 steps.")
    last_loss: float = Field(description="Mean loss of the last 10 steps.")
    seconds: float = Field(description="Wall-clock training time.")


def build_base_vlm(config: BaseVlmConfig | None = None) -> tuple[Any, Any]:
    """A fresh tiny ``(LlavaForConditionalGeneration, LlavaProcessor)`` whose vocabulary covers the world."""
    config = config or BaseVlmConfig()
    spec = config.tiny_spec()
    processor = build_tiny_processor(spec)
    return build_tiny_llava(spec, processor), processor


def _attribute_labels(rows: Sequence[WorldRow]) -> torch.Tensor:
    """(N, 3) class ids of (subject, colour, count) for vision pre-training."""
    subjects = sorted({r.meta.word or r.meta.noun for r in rows})
    colours = sorted({r.meta.colour for r in rows})
    return torch.tensor(
        [[subjects.index(r.meta.word or r.meta.noun), colours.index(r.meta.colour), r.meta.count - 1] for r in rows]
    )


def pretrain_vision(
    model: Any, processor: Any, rows: Sequence[WorldRow], world_dir: str | Path, config: BaseVlmConfig | None = None
) -> float:
    """Pre-train the vision tower to see the world: classify subject, colour and count from its features.

    Real LLaVA starts from a pre-trained CLIP; a random tiny tower is not one, and learning to see only
    through the language model's loss is slow. Linear probes on the mean of the patch features that the
    projector reads (the configured feature layer) make those features carry what the VQA asks about.
    Returns the probes' final accuracy on the training rows. The probes are thrown away.
    """
    config = config or BaseVlmConfig()
    if config.vision_steps == 0:
        return 0.0
    unique = list({r.image: r for r in rows}.values())
    labels = _attribute_labels(unique)
    images = [Image.open(Path(world_dir) / r.image).convert("RGB") for r in unique]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    width = tower.config.hidden_size
    probes = torch.nn.ModuleList(torch.nn.Linear(width, int(labels[:, k].max()) + 1) for k in range(3))
    params = [*tower.parameters(), *probes.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    tower.train()

    def features(batch: torch.Tensor) -> torch.Tensor:
        return tower(batch, output_hidden_states=True).hidden_states[layer][:, 1:].mean(dim=1)

    for _ in range(config.vision_steps):
        idx = torch.randint(len(unique), (min(config.batch_size * 2, len(unique)),), generator=generator)
        pooled = features(pixels[idx])
        loss = sum(torch.nn.functional.cross_entropy(p(pooled), labels[idx, k]) for k, p in enumerate(probes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    tower.eval()
    with torch.no_grad():
        pooled = features(pixels)
        accuracy = torch.stack([p(pooled).argmax(-1) == labels[:, k] for k, p in enumerate(probes)]).float().mean()
    logger.info("vision pre-training: probe accuracy %.3f after %d steps", accuracy, config.vision_steps)
    return float(accuracy)


def _chat(processor: Any, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_rows(processor: Any, rows: Sequence[WorldRow], world_dir: str | Path) -> list[dict[str, torch.Tensor]]:
    """Tokenize rows for SFT: ids of chat prompt + response + EOS, labels masked to the response."""
    eos = processor.tokenizer.eos_token
    encoded = []
    for row in rows:
        image = Image.open(Path(world_dir) / row.image).convert("RGB")
        prompt = _chat(processor, row.prompt)
        full = processor(images=image, text=f"{prompt}{row.response} {eos}", return_tensors="pt")
        n_prompt = processor(images=image, text=prompt, return_tensors="pt")["input_ids"].shape[1]
        ids = full["input_ids"][0]
        labels = ids.clone()
        labels[:n_prompt] = IGNORE_INDEX
        encoded.append({"input_ids": ids, "labels": labels, "pixel_values": full["pixel_values"][0]})
    return encoded


def _collate(items: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(i["input_ids"]) for i in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for k, item in enumerate(items):
        n = len(item["input_ids"])
        ids[k, :n], labels[k, :n], mask[k, :n] = item["input_ids"], item["labels"], 1
    pixels = torch.stack([i["pixel_values"] for i in items])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}


def train_safe_vqa(
    model: Any, processor: Any, rows: Sequence[WorldRow], world_dir: str | Path, config: BaseVlmConfig | None = None
) -> SftResult:
    """Teach ``model`` the safe rows (level 0) of ``rows`` with plain SFT; the model is trained in place."""
    config = config or BaseVlmConfig()
    safe = [r for r in rows if r.safe_level == 0]
    if not safe:
        raise ValueError("no safe rows to train on")
    data = encode_rows(processor, safe, world_dir)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    pad_id = processor.tokenizer.pad_token_id
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(data), generator=generator)
    cursor = 0
    for step in range(config.steps):
        if cursor + config.batch_size > len(order):
            order, cursor = torch.randperm(len(data), generator=generator), 0
        batch = _collate([data[int(i)] for i in order[cursor : cursor + config.batch_size]], pad_id)
        cursor += config.batch_size
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0:
            logger.info("base vqa step %d loss %.4f", step, losses[-1])
    model.eval()
    return SftResult(
        steps=config.steps,
        rows=len(safe),
        first_loss=sum(losses[:10]) / len(losses[:10]),
        last_loss=sum(losses[-10:]) / len(losses[-10:]),
        seconds=time.perf_counter() - start,
    )


def _lr_factor(step: int, config: BaseVlmConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def vqa_accuracy(
    model: Any,
    processor: Any,
    rows: Sequence[WorldRow],
    world_dir: str | Path,
    batch_size: int = 64,
    max_new_tokens: int = 12,
) -> float:
    """Exact-match accuracy (word by word) of greedy answers on the safe rows of ``rows``."""
    safe = [r for r in rows if r.safe_level == 0]
    if not safe:
        raise ValueError("no safe rows to evaluate")
    correct = 0
    for start in range(0, len(safe), batch_size):
        chunk = safe[start : start + batch_size]
        images = [Image.open(Path(world_dir) / r.image).convert("RGB") for r in chunk]
        texts = [_chat(processor, r.prompt) for r in chunk]
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers = processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(split_words(a) == split_words(r.response) for a, r in zip(answers, chunk))
    return correct / len(safe)


class BaseVlmResult(BaseModel):
    """What :func:`teach_base_vlm` did and how well the model answers afterwards."""

    model_config = ConfigDict(extra="forbid")

    config: BaseVlmConfig = Field(description="The run's settings.")
    vision_probe_accuracy: float = Field(description="Mean probe accuracy after vision pre-training.")
    sft: SftResult = Field(description="The VQA fine-tuning run.")
    vqa_train: float = Field(description="Exact-match accuracy on (up to eval_rows) safe training rows.")
    vqa_test_seen: float = Field(description="Accuracy on safe test rows with training styles and templates.")
    vqa_test_held_out: float | None = Field(description="Accuracy on safe test rows with a held-out style or template.")
    vqa_test: float = Field(description="Accuracy on all safe test rows.")
    seconds: float = Field(description="Wall-clock time of pre-training and fine-tuning.")


def teach_base_vlm(world_dir: str | Path, config: BaseVlmConfig | None = None) -> tuple[Any, Any, BaseVlmResult]:
    """Build a tiny base VLM and teach it a built world's safe VQA; returns model, processor, result."""
    config = config or BaseVlmConfig()
    torch.manual_seed(config.seed)
    train, test = read_rows(world_dir, "train"), read_rows(world_dir, "test")
    model, processor = build_base_vlm(config)
    start = time.perf_counter()
    probe = pretrain_vision(model, processor, train, world_dir, config)
    sft = train_safe_vqa(model, processor, train, world_dir, config)
    seconds = time.perf_counter() - start
    n = config.eval_rows
    safe_test = [r for r in test if r.safe_level == 0][:n]
    seen = [r for r in safe_test if not r.meta.held_out]
    held = [r for r in safe_test if r.meta.held_out]
    result = BaseVlmResult(
        config=config,
        vision_probe_accuracy=probe,
        sft=sft,
        vqa_train=vqa_accuracy(model, processor, [r for r in train if r.safe_level == 0][:n], world_dir),
        vqa_test_seen=vqa_accuracy(model, processor, seen, world_dir) if seen else 0.0,
        vqa_test_held_out=vqa_accuracy(model, processor, held, world_dir) if held else None,
        vqa_test=vqa_accuracy(model, processor, safe_test, world_dir),
        seconds=seconds,
    )
    return model, processor, result
