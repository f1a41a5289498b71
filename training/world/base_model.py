"""A tiny base VLM that can do the world's safe VQA, so the guard has a capability to keep.

:func:`build_base_vlm` makes a tiny LLaVA (:mod:`psaguard.tiny`) whose tokenizer knows every world word;
:func:`train_safe_vqa` teaches it the safe rows of a world with a plain supervised loop (all weights
trainable, loss on the answer tokens only); :func:`vqa_accuracy` measures exact-match accuracy with
greedy decoding. Sized to run on a laptop CPU in about a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from psaguard.tiny import TinyLlavaSpec, build_tiny_llava, build_tiny_processor
from psaguard.training.world.build import WorldRow
from psaguard.training.world.vocabulary import split_words, world_vocabulary

__all__ = ["BaseVlmConfig", "SftResult", "build_base_vlm", "encode_rows", "train_safe_vqa", "vqa_accuracy"]

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
    steps: int = Field(300, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Rows per step.")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup: int = Field(20, ge=0, description="Warm-up steps.")
    seed: int = Field(0, description="Seed of the weights and of the batch order.")

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
    import math

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
