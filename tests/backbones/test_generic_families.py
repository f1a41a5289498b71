"""Every image-text-to-text family of the installed transformers, through the generic adapter alone.

The list is transformers' own ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``, so a family a newer release
adds is tested here without a line of family code. Each family's tiny random model is built from its
configs (:mod:`psaguard.testing`); on it the guard, with the registry restricted to
:class:`~psaguard.backbones.GenericBackbone`, must attach, classify, give the same verdicts batched as
alone, generate token for token what the model's own ``generate`` gives on its processor's output with
injection off (guarded ``generate`` and the drop-in ``wrap()``), widen each image run by the safety tokens
with injection on, and save and load. A family
that cannot be built here is skipped with the reason; one the generic adapter refuses must say why.
``python benchmarks/family_support.py`` writes the table of docs/adapters.md from the same checks.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from generation_helpers import QUESTION, guard_for, plain_generate, spy_generate, user_turn
from PIL import Image

import psaguard.backbones.encoder_checkpoint
import psaguard.classifier
import psaguard.guard
import psaguard.loading
from psaguard import SafetyGuard
from psaguard.backbones import ClassifierOnlyGenericBackbone, GenericBackbone, resolve_backbone
from psaguard.errors import GenerationUnavailableError, UnsupportedModelError
from psaguard.testing import TinyBuildError, build_meta_model, build_tiny_family, image_text_to_text_types

GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
SIZES = ((32, 32), (40, 56), (64, 48))  # (height, width): square, wide, tall

KNOWN_GAPS: dict[str, str] = {}
"""Families that build and follow the interface but fail a check, with what is known of why (strict xfail)."""

WRAP_GAPS: dict[str, str] = {
    "granite_docling": "wrap() reads each image's run from the ids as image tokens alone; Granite-Docling's "
    "processor writes tile separators between one image's tokens, so the run does not match",
    "video_llava": "its processor gives the images as pixel_values_images, which wrap() refuses (it judges "
    "pixel_values), failing closed",
    "mistral3": "wrap() reads each image's run from the ids as image tokens alone; Pixtral's processor writes "
    "[IMG_BREAK] row breaks between one image's tokens, so the run does not match (failing closed)",
    "mistral_large4": "wrap() reads each image's run from the ids as image tokens alone; Pixtral's processor "
    "writes [IMG_BREAK] row breaks between one image's tokens, so the run does not match (failing closed)",
}
"""Families whose guarded generate passes but whose drop-in wrap() does not, and why (strict xfail)."""

CLASSIFIER_ONLY_GAPS: dict[str, str] = {
    "qianfan_ocr": "transformers converts its vision tower's checkpoint tensors on load (fused qkv split), which "
    "classifier-only loading refuses (CheckpointError: needs converting) rather than reimplement",
    "kimi_k25": "transformers converts its vision tower's fused qkv tensors on load, which classifier-only loading "
    "refuses (CheckpointError: needs converting)",
    "mistral_large4": "transformers renames and permutes its Pixtral tower's wq/wk tensors on load, which "
    "classifier-only loading refuses (CheckpointError: needs converting)",
    "gemma4_unified": "its vision config has per-layer widths and no single hidden_size, so the fingerprint's tower "
    "width is only known from a probe pass of the full model (UnsupportedModelError)",
}
"""Families whose classifier-only guard cannot be loaded, and why (strict xfail)."""


def _params(gaps: dict[str, str] = KNOWN_GAPS) -> list:
    return [
        pytest.param(t, marks=pytest.mark.xfail(reason=gaps[t], strict=True)) if t in gaps else t
        for t in image_text_to_text_types()
    ]


_BUILDS: dict[str, object] = {}


def _build(model_type: str):
    """The family's generic tiny pair (no per-family layout), built once per session (a TinyBuildError is
    remembered and raised again)."""
    if model_type not in _BUILDS:
        try:
            _BUILDS[model_type] = build_tiny_family(model_type, layout=False)
        except TinyBuildError as err:
            _BUILDS[model_type] = err
    if isinstance(built := _BUILDS[model_type], TinyBuildError):
        raise built
    return built


def family_images() -> list[Image.Image]:
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def generic_only(monkeypatch: pytest.MonkeyPatch, adapters: tuple[type, ...] = (GenericBackbone,)) -> None:
    """Resolve every model with the generic ``adapters`` alone (family adapters have their own tests)."""

    def generic(model, backbones=None):
        return resolve_backbone(model, list(adapters))

    for module in (psaguard.guard, psaguard.loading, psaguard.classifier, psaguard.backbones.encoder_checkpoint):
        monkeypatch.setattr(module, "resolve_backbone", generic)


def _skip_unbuilt(model_type: str, err: TinyBuildError) -> None:
    """Skip a family whose tiny pair cannot be built, saying why: refused by the adapter where it would be."""
    try:
        reason = GenericBackbone.why_unsupported(build_meta_model(model_type))
    except TinyBuildError:
        reason = None
    if reason:
        pytest.skip(f"refused: {reason} (its tiny pair cannot be built here either: {err})")
    pytest.skip(f"cannot be built here: {err}")


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_type", _params())
def test_family_meets_the_bar_through_the_generic_adapter(model_type, monkeypatch, tmp_path, single_thread) -> None:
    try:
        build = _build(model_type)
    except TinyBuildError as err:
        _skip_unbuilt(model_type, err)
    model, processor = build.model, build.processor
    if reason := GenericBackbone.why_unsupported(model):
        with pytest.raises(UnsupportedModelError, match=re.escape(reason)):
            resolve_backbone(model, [GenericBackbone])
        pytest.skip(f"refused: {reason}")
    generic_only(monkeypatch)
    images = family_images()

    guard = guard_for(model, processor, inject=False, level=0)
    assert type(guard.backbone) is GenericBackbone
    assert guard.config.fingerprint.family == model_type
    verdict = guard.classify(images[1], QUESTION)
    assert verdict.error is None and abs(sum(verdict.level_probs.values()) - 1) < 1e-4
    batch = guard.classify_batch(images, [QUESTION] * len(images))
    for image, together in zip(images, batch):
        assert guard.classify(image, QUESTION).level_probs == pytest.approx(together.level_probs, abs=1e-5)

    with spy_generate(model) as outputs:
        result = guard.generate(images[1], QUESTION, **GREEDY)
    expected = plain_generate(model, processor, images[1:2], [user_turn(QUESTION)], **GREEDY)
    assert (result.action, result.generated) == ("allow", True)
    assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected

    injected = guard_for(model, processor, inject=True, level=0)
    with_tokens = injected.generate(images[1], QUESTION, max_new_tokens=1).prompt_tokens
    without = guard.generate(images[1], QUESTION, max_new_tokens=1).prompt_tokens
    assert with_tokens - without == injected.config.tokens.num_tokens

    path = guard.save_pretrained(tmp_path / "guard")
    loaded = SafetyGuard.from_pretrained(path, model=model, processor=processor)
    for a, b in zip(batch, loaded.classify_batch(images, [QUESTION] * len(images))):
        assert a.model_dump(exclude={"latency_ms"}) == b.model_dump(exclude={"latency_ms"})


@pytest.mark.parametrize("model_type", _params(WRAP_GAPS))
def test_wrap_generates_exactly_what_the_model_does_on_its_processor_output(model_type, monkeypatch, single_thread):
    """The drop-in wrapper on the processor's own batch (a wide and a tall image): judged, then token for token
    the model's ``generate`` (families that cannot be built or are refused are covered above)."""
    try:
        build = _build(model_type)
    except TinyBuildError as err:
        pytest.skip(f"cannot be built here: {err}")
    model, processor = build.model, build.processor
    if reason := GenericBackbone.why_unsupported(model):
        pytest.skip(f"refused: {reason}")
    generic_only(monkeypatch)
    images = family_images()[1:]
    text = processor.apply_chat_template([user_turn(QUESTION)], add_generation_prompt=True)
    try:
        inputs = processor(images=[[i] for i in images], text=[text, text], return_tensors="pt", padding=True)
    except ValueError:  # a processor that takes a flat list of images only
        inputs = processor(images=images, text=[text, text], return_tensors="pt", padding=True)
    with torch.inference_mode():
        expected = model.generate(**inputs, **GREEDY)
    guard = guard_for(model, processor, inject=False, level=0)
    wrapped, results = guard.wrap().generate_with_results(**inputs, **GREEDY)
    assert [r.action for r in results] == ["allow", "allow"]
    assert torch.equal(wrapped, expected)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", _params(CLASSIFIER_ONLY_GAPS))
def test_classifier_only_judges_as_the_full_model(model_type, monkeypatch, tmp_path, single_thread) -> None:
    """From the model saved in shards, the classifier-only guard (vision tower, projector and input embeddings
    only) gives the full model's guard's verdicts and refuses to generate (tests/backbones/
    test_generic_classifier_only.py checks which tensors it reads, on four families, in the fast suite)."""
    try:
        build = _build(model_type)
    except TinyBuildError as err:
        pytest.skip(f"cannot be built here: {err}")
    model, processor = build.model, build.processor
    if reason := GenericBackbone.why_unsupported(model):
        pytest.skip(f"refused: {reason}")

    generic_only(monkeypatch, (ClassifierOnlyGenericBackbone, GenericBackbone))
    model.save_pretrained(tmp_path / "model", max_shard_size="200KB")
    images = family_images()
    guard = guard_for(model, processor, inject=False, level=0)
    light = SafetyGuard.from_pretrained_classifier(
        guard.save_pretrained(tmp_path / "guard"), tmp_path / "model", processor
    )
    assert type(light.backbone) is ClassifierOnlyGenericBackbone
    assert sum(p.numel() for p in light.model.parameters()) < sum(p.numel() for p in model.parameters())
    for full, ours in zip(guard.classify_batch(images, [QUESTION] * 3), light.classify_batch(images, [QUESTION] * 3)):
        assert (ours.error, ours.level) == (full.error, full.level)
        assert ours.level_probs == pytest.approx(full.level_probs, abs=1e-5)
    with pytest.raises(GenerationUnavailableError):
        light.generate(images[0], QUESTION, max_new_tokens=2)
