"""Every image-text-to-text family of the installed transformers, through the generic adapter alone.

The list is transformers' own ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``, so a family a newer release
adds is tested here without a line of family code. Each family's tiny random model is built from its
configs (:mod:`psaguard.testing`); on it the guard, with the registry restricted to
:class:`~psaguard.backbones.GenericBackbone`, must attach, classify, give the same verdicts batched as
alone, generate token for token what the model's own ``generate`` gives on its processor's output with
injection off, widen each image run by the safety tokens with injection on, and save and load. A family
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

import psaguard.classifier
import psaguard.guard
from psaguard import SafetyGuard
from psaguard.backbones import GenericBackbone, resolve_backbone
from psaguard.errors import UnsupportedModelError
from psaguard.testing import TinyBuildError, build_meta_model, build_tiny_family, image_text_to_text_types

GREEDY = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
SIZES = ((32, 32), (40, 56), (64, 48))  # (height, width): square, wide, tall

KNOWN_GAPS: dict[str, str] = {}
"""Families that build and follow the interface but fail a check, with what is known of why (strict xfail)."""


def _params() -> list:
    return [
        pytest.param(t, marks=pytest.mark.xfail(reason=KNOWN_GAPS[t], strict=True)) if t in KNOWN_GAPS else t
        for t in image_text_to_text_types()
    ]


def family_images() -> list[Image.Image]:
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def generic_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve every model with the generic adapter alone (family adapters have their own tests)."""

    def generic(model, backbones=None):
        return resolve_backbone(model, [GenericBackbone])

    for module in (psaguard.guard, psaguard.classifier):
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
        build = build_tiny_family(model_type)
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

    for image in images[1:3]:  # wide and tall
        with spy_generate(model) as outputs:
            result = guard.generate(image, QUESTION, **GREEDY)
        expected = plain_generate(model, processor, [image], [user_turn(QUESTION)], **GREEDY)
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
