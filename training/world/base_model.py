"""A tiny base VLM that can do the world's safe VQA, so the guard has a capability to keep.

:func:`build_base_vlm` makes a tiny LLaVA (:mod:`psaguard.testing.llava`) whose tokenizer knows every world word;
:func:`train_safe_vqa` teaches it the safe rows of a world with a plain supervised loop (all weights
trainable, loss on the answer tokens only); :func:`vqa_accuracy` measures exact-match accuracy with
greedy decoding. Both training runs go through the trainer's plain loop
(:func:`psaguard.training.plain_loop.train_steps`), with batches drawn from their own generators, so nothing here
touches the global random state. Sized to run on a laptop CPU in about a minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from psaguard.injection import IGNORE_INDEX
from psaguard.testing.llava import TinyLlavaSpec, build_tiny_llava, build_tiny_processor
from psaguard.tokenization import pad_token_id, render_chat, tokenizer_of
from psaguard.training.collate import pad_batch
from psaguard.training.plain_loop import train_steps
from psaguard.training.world.build import SPLITS, WorldRow, WorldSpec, read_rows, read_summary
from psaguard.training.world.concepts import (
    ALL_STYLES,
    COLOURS,
    RISK_CONCEPTS,
    SAFE_NOUNS,
    SAFE_WORDS,
    Scene,
    render_scene,
    sample_risk_scene,
    sample_safe_scene,
)
from psaguard.training.world.language import LanguageCorpus, encode_pairs, paraphrase_pairs
from psaguard.training.world.vocabulary import split_words, world_vocabulary

__all__ = [
    "BaseVlmConfig",
    "BaseVlmResult",
    "SftResult",
    "VisionStyles",
    "build_base_vlm",
    "encode_rows",
    "pretrain_vision",
    "teach_base_vlm",
    "train_safe_vqa",
    "vision_corpus",
    "vqa_accuracy",
]

logger = logging.getLogger(__name__)

VisionStyles = Literal["train", "all"]
"""Styles of the vision pre-training corpus: the world's training styles, or every style."""


class BaseVlmConfig(BaseModel):
    """Size of the tiny base VLM and of its safe-VQA training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(32, description="Model input side in pixels.")
    patch_size: int = Field(8, description="ViT patch side; 32 / 8 gives 16 image tokens, quick on a CPU.")
    text_hidden: int = Field(128, description="Language model width (multiple of 64).")
    text_layers: int = Field(2, description="Language model depth.")
    vision_hidden: int = Field(128, description="Vision tower width.")
    vision_layers: int = Field(4, ge=2, description="Vision tower depth (the projector reads the second to last).")
    vision_corpus: int = Field(20_000, ge=1, description="Fresh images drawn for vision pre-training.")
    vision_styles: VisionStyles = Field(
        "train",
        description="Styles of the vision pre-training images: the world's training styles, or all of them (a "
        "CLIP has seen every kind of image; the guard's training still leaves the held-out styles out).",
    )
    vision_steps: int = Field(3000, ge=0, description="Steps of vision pre-training (stands in for CLIP's).")
    vision_batch: int = Field(64, ge=1, description="Images per vision pre-training step.")
    vision_lr: float = Field(3e-3, gt=0, description="Peak learning rate of vision pre-training (cosine decay).")
    steps: int = Field(500, ge=1, description="Optimizer steps of the VQA fine-tuning.")
    language: LanguageCorpus = Field(
        "none",
        description="Text read beside the VQA rows: none, or every template paraphrase rewritten as another "
        "(psaguard.training.world.language; no safety labels), so held-out words get a meaning.",
    )
    language_batch: int = Field(16, ge=1, description="Paraphrase pairs per step when language is on.")
    tie_embeddings: bool = Field(
        False,
        description="Tie the language model's input and output embeddings (as small LLMs often do): words "
        "predicted in the same contexts get similar input embeddings, which the guard's head reads.",
    )
    batch_size: int = Field(32, ge=1, description="Rows per step.")
    # 3e-3 makes the tiny language model ignore the image (attention collapses); 1e-3 does not.
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup: int = Field(20, ge=0, description="Warm-up steps.")
    seed: int = Field(0, description="Seed of the weights and of the batch order.")
    eval_rows: int = Field(400, ge=1, description="Most safe rows evaluated per set in teach_base_vlm.")
    progress_bar: bool = Field(True, description="Show a progress bar during vision pre-training.")

    def tiny_spec(self) -> TinyLlavaSpec:
        return TinyLlavaSpec(
            image_size=self.image_size,
            patch_size=self.patch_size,
            text_hidden=self.text_hidden,
            text_layers=self.text_layers,
            intermediate=2 * self.text_hidden,
            vision_hidden=self.vision_hidden,
            vision_layers=self.vision_layers,
            extra_words=world_vocabulary(),
            tie_embeddings=self.tie_embeddings,
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


_SUBJECTS: tuple[str, ...] = tuple(
    sorted({*SAFE_NOUNS, *SAFE_WORDS, *(w for c in RISK_CONCEPTS.values() for w in (c.noun, c.word))})
)
_VISION_EVAL_IMAGES = 512


def vision_corpus(world: WorldSpec, n: int, stream: int = 0, styles: VisionStyles = "train") -> list[Scene]:
    """``n`` fresh scenes of the world, half of them risk concepts, for vision pre-training.

    Stands in for the web-scale data CLIP learns to see from: it is labelled with generic attributes only
    (subject, colour, count; no safety labels), drawn from its own random stream (``stream`` picks one; the
    world's splits never share it) and by default only in the world's training styles, so held-out styles stay
    unseen by every part of the experiment (``styles="all"``: every style, as a web-scale corpus would have).
    """
    rng = np.random.default_rng([world.seed, len(SPLITS) + 1, stream])
    drawn = world.train_styles if styles == "train" else ALL_STYLES
    return [sample_risk_scene(rng, drawn) if rng.random() < 0.5 else sample_safe_scene(rng, drawn) for _ in range(n)]


def _attributes(scenes: Sequence[Scene]) -> torch.Tensor:
    """(N, 3) class ids of (subject, colour, count)."""
    colours = list(COLOURS)
    labels = [[_SUBJECTS.index(s.subject), colours.index(s.colour), s.count - 1] for s in scenes]
    return torch.tensor(labels, dtype=torch.long).reshape(len(scenes), 3)


def _pixels(processor: Any, scenes: Sequence[Scene], size: int) -> torch.Tensor:
    return processor.image_processor([render_scene(s, size) for s in scenes], return_tensors="pt")["pixel_values"]


def pretrain_vision(model: Any, processor: Any, world: WorldSpec, config: BaseVlmConfig | None = None) -> float:
    """Pre-train the vision tower to see the world: classify subject, colour and count from its features.

    Real LLaVA starts from a pre-trained CLIP; a random tiny tower is not one, and learning to see only
    through the language model's loss is slow. Linear probes on the mean of the patch features that the
    projector reads (the configured feature layer) make those features carry what the VQA and the guard ask
    about; :func:`vision_corpus` draws ``config.vision_corpus`` fresh images for it, so the tower learns
    concepts rather than memorising the few training images. Returns the probes' mean accuracy on images
    it never trained on. The probes are thrown away.
    """
    config = config or BaseVlmConfig()
    if config.vision_steps == 0:
        return 0.0
    styles = config.vision_styles
    scenes = vision_corpus(world, config.vision_corpus, styles=styles)
    fresh_scenes = vision_corpus(world, _VISION_EVAL_IMAGES, 1, styles=styles)
    pixels, labels = _pixels(processor, scenes, config.image_size), _attributes(scenes)
    fresh, fresh_labels = _pixels(processor, fresh_scenes, config.image_size), _attributes(fresh_scenes)
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    width = tower.config.hidden_size
    sizes = (len(_SUBJECTS), len(COLOURS), 3)
    probes = _probes(width, sizes, torch.Generator().manual_seed(config.seed + 1))
    generator = torch.Generator().manual_seed(config.seed)
    tower.train()

    def features(batch: torch.Tensor) -> torch.Tensor:
        return tower(batch, output_hidden_states=True).hidden_states[layer][:, 1:].mean(dim=1)

    def loss_of(_step: int) -> torch.Tensor:
        idx = torch.randint(len(scenes), (min(config.vision_batch, len(scenes)),), generator=generator)
        pooled = features(pixels[idx])
        return sum(torch.nn.functional.cross_entropy(p(pooled), labels[idx, k]) for k, p in enumerate(probes))

    train_steps(
        [*tower.parameters(), *probes.parameters()],
        config.vision_steps,
        loss_of,
        lr=config.vision_lr,
        warmup_steps=min(100, config.vision_steps // 10),
        weight_decay=0.01,
        desc="vision pre-training",
        progress_bar=config.progress_bar,
    )
    tower.eval()
    with torch.no_grad():
        pooled = features(fresh)
        hits = torch.stack([p(pooled).argmax(-1) == fresh_labels[:, k] for k, p in enumerate(probes)])
    accuracy = float(hits.float().mean())
    logger.info("vision pre-training: probe accuracy %.3f on fresh images", accuracy)
    return accuracy


def _probes(width: int, sizes: Sequence[int], generator: torch.Generator) -> torch.nn.ModuleList:
    """Linear probes with PyTorch's default init (uniform in +-1/sqrt(width)) drawn from ``generator``."""
    probes = torch.nn.ModuleList(torch.nn.utils.skip_init(torch.nn.Linear, width, k) for k in sizes)
    bound = 1 / math.sqrt(width)
    with torch.no_grad():
        for parameter in probes.parameters():
            parameter.uniform_(-bound, bound, generator=generator)
    return probes


def _chat(processor: Any, prompt: str) -> str:
    return render_chat(processor, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}])


def encode_rows(processor: Any, rows: Sequence[WorldRow], world_dir: str | Path) -> list[dict[str, torch.Tensor]]:
    """Tokenize rows for SFT: ids of chat prompt + response + EOS, labels masked to the response."""
    eos = tokenizer_of(processor).eos_token
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
    """A padded batch; ``pixel_values`` stacked when the items have them (text-only items have none)."""
    ids, labels, mask = pad_batch([i["input_ids"] for i in items], [i["labels"] for i in items], pad_id)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if "pixel_values" in items[0]:
        batch["pixel_values"] = torch.stack([i["pixel_values"] for i in items])
    return batch


def _batches(
    data: Sequence[dict[str, torch.Tensor]], batch_size: int, pad_id: int, generator: torch.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of ``data``: a seeded permutation, drawn again when the rest cannot fill a batch."""
    order, cursor = torch.randperm(len(data), generator=generator), 0
    while True:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(data), generator=generator), 0
        yield _collate([data[int(i)] for i in order[cursor : cursor + batch_size]], pad_id)
        cursor += batch_size


def train_safe_vqa(
    model: Any, processor: Any, rows: Sequence[WorldRow], world_dir: str | Path, config: BaseVlmConfig | None = None
) -> SftResult:
    """Teach ``model`` the safe rows (level 0) of ``rows`` with plain SFT; the model is trained in place.

    The vision tower stays frozen, as in LLaVA's own fine-tuning: a few thousand rows would teach it to
    memorise their images instead of seeing concepts (measured: fresh-image subject accuracy falls). With
    ``config.language="paraphrases"`` every step also takes a batch of paraphrase pairs (text only), and the
    step's loss is the sum of the two means.
    """
    config = config or BaseVlmConfig()
    safe = [r for r in rows if r.safe_level == 0]
    if not safe:
        raise ValueError("no safe rows to train on")
    data = encode_rows(processor, safe, world_dir)
    tower = model.model.vision_tower
    tower.requires_grad_(False)
    start = time.perf_counter()
    model.train()
    tower.eval()
    generator = torch.Generator().manual_seed(config.seed)
    pad_id = pad_token_id(tokenizer_of(processor))
    batches = _batches(data, config.batch_size, pad_id, generator)
    text_batches = None
    if config.language == "paraphrases":
        text = encode_pairs(processor, paraphrase_pairs())
        text_generator = torch.Generator().manual_seed(config.seed + 1)
        text_batches = _batches(text, min(config.language_batch, len(text)), pad_id, text_generator)

    def loss_of(_step: int) -> torch.Tensor:
        loss = model(**next(batches)).loss
        return loss + model(**next(text_batches)).loss if text_batches is not None else loss

    losses = train_steps(
        [p for p in model.parameters() if p.requires_grad],
        config.steps,
        loss_of,
        lr=config.lr,
        warmup_steps=config.warmup,
        desc="base vqa",
    )
    model.eval()
    tower.requires_grad_(True)
    return SftResult(
        steps=config.steps,
        rows=len(safe),
        first_loss=sum(losses[:10]) / len(losses[:10]),
        last_loss=sum(losses[-10:]) / len(losses[-10:]),
        seconds=time.perf_counter() - start,
    )


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
        answers = tokenizer_of(processor).batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(split_words(a) == split_words(r.response) for a, r in zip(answers, chunk))
    return correct / len(safe)


class BaseVlmResult(BaseModel):
    """What :func:`teach_base_vlm` did and how well the model answers afterwards."""

    model_config = ConfigDict(extra="forbid")

    config: BaseVlmConfig = Field(description="The run's settings.")
    vision_probe_accuracy: float = Field(description="Mean probe accuracy on fresh images after vision pre-training.")
    sft: SftResult = Field(description="The VQA fine-tuning run.")
    vqa_train: float = Field(description="Exact-match accuracy on (up to eval_rows) safe training rows.")
    vqa_test_seen: float = Field(description="Accuracy on safe test rows with training styles and templates.")
    vqa_test_held_out: float | None = Field(description="Accuracy on safe test rows with a held-out style or template.")
    vqa_test: float = Field(description="Accuracy on all safe test rows.")
    seconds: float = Field(description="Wall-clock time of pre-training and fine-tuning.")


def teach_base_vlm(world_dir: str | Path, config: BaseVlmConfig | None = None) -> tuple[Any, Any, BaseVlmResult]:
    """Build a tiny base VLM and teach it a built world's safe VQA; returns model, processor, result."""
    config = config or BaseVlmConfig()
    train, test = read_rows(world_dir, "train"), read_rows(world_dir, "test")
    model, processor = build_base_vlm(config)
    start = time.perf_counter()
    probe = pretrain_vision(model, processor, read_summary(world_dir).spec, config)
    sft = train_safe_vqa(model, processor, train, world_dir, config)
    seconds = time.perf_counter() - start
    vqa = _vqa_by_split(model, processor, train, test, world_dir, config.eval_rows)
    result = BaseVlmResult(config=config, vision_probe_accuracy=probe, sft=sft, seconds=seconds, **vqa)
    return model, processor, result


def _vqa_by_split(
    model: Any, processor: Any, train: list[WorldRow], test: list[WorldRow], world_dir: str | Path, n: int
) -> dict[str, float | None]:
    """:class:`BaseVlmResult`'s VQA fields: accuracy on up to ``n`` safe rows of train and of test (all, seen
    styles and templates, held-out ones)."""
    safe_test = _safe_rows(test, n)
    held = {r.id for r in safe_test if r.meta.held_out}

    def accuracy(rows: list[WorldRow]) -> float | None:
        return vqa_accuracy(model, processor, rows, world_dir) if rows else None

    return {
        "vqa_train": vqa_accuracy(model, processor, _safe_rows(train, n), world_dir),
        "vqa_test_seen": accuracy([r for r in safe_test if r.id not in held]) or 0.0,
        "vqa_test_held_out": accuracy([r for r in safe_test if r.id in held]),
        "vqa_test": vqa_accuracy(model, processor, safe_test, world_dir),
    }


def _safe_rows(rows: list[WorldRow], n: int) -> list[WorldRow]:
    """The first ``n`` safe (level 0) rows."""
    return [r for r in rows if r.safe_level == 0][:n]
