"""Classifier-only mode for families the generic adapter handles: only the vision tower, projector and input
embeddings are read from a sharded checkpoint, and the guard judges exactly as on the full model.

The families: Qwen3.5 (hybrid linear-attention LM, M-RoPE), Gemma 4 (per-layer embeddings, its own vision
tower and embedder), Qwen3-VL-MoE (DeepStack) and GLM-4.6V; none has family code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from generation_helpers import QUESTION, guard_for
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from psaguard import CheckpointError, CheckpointMismatchError, GenerationUnavailableError, SafetyGuard
from psaguard.backbones import ClassifierOnlyGenericBackbone, GenericBackbone
from psaguard.backbones.encoder_checkpoint import load_encoder_only
from psaguard.checkpoints.reader import SAFE_INDEX_NAME, CheckpointReader
from psaguard.errors import UnsupportedModelError
from psaguard.testing import build_meta_model, build_tiny_family

FAMILIES = ("qwen3_5", "gemma4", "qwen3_vl_moe", "glm46v")
SIZES = ((32, 32), (40, 56), (64, 48))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """The family's tiny model, its processor, and the model saved in shards."""
    build = build_tiny_family(request.param)
    path = tmp_path_factory.mktemp(request.param)
    build.model.save_pretrained(path, max_shard_size="200KB")
    return build.model.eval(), build.processor, path


@pytest.fixture
def reads(monkeypatch):
    """Every checkpoint key a CheckpointReader reads during the test."""
    names: list[str] = []
    read = CheckpointReader.read

    def spy(self, wanted):
        wanted = list(wanted)
        names.extend(wanted)
        return read(self, wanted)

    monkeypatch.setattr(CheckpointReader, "read", spy)
    return names


def images() -> list[Image.Image]:
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def verdict_parts(model) -> set[str]:
    """The full model's tensors the verdicts read: all of the multimodal model but its language model's and its
    audio parts' (Gemma 4), and the language model's input embeddings (named as the model names them)."""
    embedding = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    lm = model.model.language_model
    lm_names = {f"model.language_model.{n}" for n in lm.state_dict()}
    return {n for n in model.state_dict() if n.startswith("model.") and n not in lm_names and "audio" not in n} | {
        embedding
    }


def test_classifier_only_judges_as_the_full_model_reading_only_what_it_needs(family, reads, tmp_path) -> None:
    model, processor, path = family
    with open(path / SAFE_INDEX_NAME) as index:
        assert len(set(json.load(index)["weight_map"].values())) > 2  # sharded
    guard = guard_for(model, processor, inject=False, level=0)
    assert type(guard.backbone) is GenericBackbone
    light = SafetyGuard.from_pretrained_classifier(guard.save_pretrained(tmp_path / "guard"), path, processor)
    assert type(light.backbone) is ClassifierOnlyGenericBackbone
    assert sorted(reads) == sorted(verdict_parts(model))  # each needed tensor once, no other
    assert sum(p.numel() for p in light.model.parameters()) < sum(p.numel() for p in model.parameters())
    batch = [QUESTION] * len(SIZES)
    for full, ours in zip(guard.classify_batch(images(), batch), light.classify_batch(images(), batch)):
        assert (ours.error, ours.level, ours.action) == (full.error, full.level, full.action)
        assert ours.level_probs == pytest.approx(full.level_probs, abs=1e-5)
    with pytest.raises(GenerationUnavailableError):
        light.generate(images()[0], QUESTION, max_new_tokens=2)
    with pytest.raises(GenerationUnavailableError):
        light.model(input_ids=torch.tensor([[1, 2]]))


def test_a_guard_for_another_model_fails_before_any_tensor_is_read(family, reads, tmp_path) -> None:
    model, processor, path = family
    other = build_tiny_family("qwen3_vl_moe" if model.config.model_type != "qwen3_vl_moe" else "glm46v")
    guard = guard_for(other.model, other.processor, inject=False, level=0)
    with pytest.raises(CheckpointMismatchError):
        SafetyGuard.from_pretrained_classifier(guard.save_pretrained(tmp_path / "guard"), path, processor)
    assert reads == []


def test_a_checkpoint_lacking_a_tower_tensor_is_refused(family, tmp_path) -> None:
    _, _, path = family
    broken = tmp_path / "broken"
    broken.mkdir()
    with open(path / SAFE_INDEX_NAME) as index:
        weight_map = json.load(index)["weight_map"]
    dropped = next(k for k in sorted(weight_map) if "vision" in k or "visual" in k)
    tensors = {}
    for file in sorted(set(weight_map.values())):
        with safe_open(str(path / file), framework="pt") as handle:
            tensors.update({k: handle.get_tensor(k) for k in handle.keys() if k != dropped})  # noqa: SIM118
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    (broken / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="lacks 1 of the tensors"):
        load_encoder_only(broken)


def test_a_model_outside_the_generic_interface_is_refused_with_the_reason(tmp_path) -> None:
    build_meta_model("mllama").config.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="cross-attention"):
        load_encoder_only(tmp_path)
