"""Every further family on one conformance suite: tiny random models with their own processors, offline.

Each case is a model and its processor; the tests never branch on the family. A family added to
``CASES`` gets: attach and classify (batches of different image sizes equal to single calls, async),
guarded generate / stream / wrap() with and without safety tokens (token-for-token the model's own
``generate`` when allowed without them), save/load, refusal of and by another family's guard,
classifier-only mode or its typed error, a Stage I head that learns, and Stage II LoRA on the LLM only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from generation_helpers import QUESTION, guard_for, plain_generate, spy_generate, user_turn
from PIL import Image

from psaguard import (
    CheckpointMismatchError,
    GenerationUnavailableError,
    InvalidInputError,
    SafetyGuard,
    SafetyGuardConfig,
    UnsupportedModelError,
)
from psaguard.backbones import unwrap_model
from psaguard.tiny import build_tiny_llava
from psaguard.tiny_families import build_tiny_llava_onevision, build_tiny_llava_pixtral, build_tiny_vipllava
from psaguard.training.config import LoraSettings, Stage1Config
from psaguard.training.data import Example
from psaguard.training.objective import GuardObjective
from psaguard.training.quant import build_lora_config
from psaguard.training.runtime import build_collator

# min_new_tokens keeps EOS away so the comparison covers every step, not just an early stop.
GREEDY = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
PROMPTS = ["what is in this image ?", "describe the picture", "how many circle are there ?"]


def _peft_llava() -> tuple[Any, Any]:
    """A LLaVA the user has already wrapped with PEFT (LoRA on the language model)."""
    from peft import get_peft_model

    from psaguard.tiny import build_tiny_processor

    processor = build_tiny_processor()
    model = build_tiny_llava(processor=processor)
    return get_peft_model(model, build_lora_config(LoraSettings(r=4))).eval(), processor


@dataclass(frozen=True)
class Case:
    build: Callable[[], tuple[Any, Any]]
    classifier_only: bool  # whether the checkpoint layout has a classifier-only adapter
    multi_image: bool  # whether guarded generate takes several images in one request


CASES = {
    "vipllava": Case(build_tiny_vipllava, classifier_only=False, multi_image=True),
    "llava_onevision": Case(build_tiny_llava_onevision, classifier_only=False, multi_image=False),
    "llava_pixtral": Case(build_tiny_llava_pixtral, classifier_only=True, multi_image=True),
    "peft_llava": Case(_peft_llava, classifier_only=True, multi_image=True),
}


@dataclass(frozen=True)
class Family:
    name: str
    case: Case
    model: Any
    processor: Any


@pytest.fixture(scope="module", params=sorted(CASES))
def family(request: pytest.FixtureRequest) -> Family:
    case = CASES[request.param]
    model, processor = case.build()
    return Family(request.param, case, model, processor)


@pytest.fixture
def sized_images() -> list[Image.Image]:
    """Square, wide and tall images."""
    gen = torch.Generator().manual_seed(3)
    shapes = ((32, 32), (24, 40), (48, 28))
    return [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()) for h, w in shapes
    ]


def _chat_inputs(family: Family, images: list[Image.Image], num_images: int = 1) -> dict[str, torch.Tensor]:
    text = family.processor.apply_chat_template(
        [user_turn(QUESTION, num_images)], add_generation_prompt=True, tokenize=False
    )
    return dict(family.processor(images=images, text=[text], return_tensors="pt"))


# ---------------------------------------------------------------------------------------------- classification
def test_attach_fingerprints_the_family_and_classifies(family: Family, sized_images):
    guard = guard_for(family.model, family.processor)
    fingerprint = guard.config.fingerprint
    assert fingerprint.family == guard.backbone.family and fingerprint.patch_grid == guard.backbone.patch_grid
    verdict = guard.classify(sized_images[1], PROMPTS[0])
    assert verdict.error is None and abs(sum(verdict.level_probs.values()) - 1) < 1e-4


def test_batches_over_image_sizes_equal_single_calls(family: Family, sized_images):
    torch.manual_seed(0)
    guard = SafetyGuard.attach(family.model, family.processor)
    batch = guard.classify_batch(sized_images, PROMPTS)
    for verdict, image, prompt in zip(batch, sized_images, PROMPTS):
        single = guard.classify(image, prompt)
        assert verdict.level_probs == pytest.approx(single.level_probs, abs=1e-5)
        assert verdict.type_probs == pytest.approx(single.type_probs, abs=1e-5)


async def test_aclassify_equals_classify(family: Family, sized_images):
    torch.manual_seed(0)
    guard = SafetyGuard.attach(family.model, family.processor)
    ours = await guard.aclassify(sized_images[2], PROMPTS[1])
    assert ours.level_probs == pytest.approx(guard.classify(sized_images[2], PROMPTS[1]).level_probs, abs=1e-6)


# ---------------------------------------------------------------------------------------------- generation
def test_allowed_answer_without_llm_tokens_is_token_for_token_the_models_generate(family: Family, sized_images):
    image = sized_images[1]
    expected = plain_generate(family.model, family.processor, [image], [user_turn(QUESTION)], **GREEDY)
    guard = guard_for(family.model, family.processor, inject=False, level=0)
    with spy_generate(family.model) as outputs:
        result = guard.generate(image, QUESTION, **GREEDY)
    assert result.action == "allow" and result.generated
    assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected
    assert result.text == guard.prompts.tokenizer.decode(expected, skip_special_tokens=True)
    assert "".join(guard.stream(image, QUESTION, **GREEDY)) == result.text

    inputs = _chat_inputs(family, [image])
    with torch.inference_mode():
        plain = family.model.generate(**inputs, **GREEDY)
    assert torch.equal(guard.wrap().generate(**inputs, **GREEDY), plain)


def test_several_images_in_one_request_match_the_model_or_are_refused(family: Family, sized_images):
    images = sized_images[:2]
    guard = guard_for(family.model, family.processor, inject=False, level=0)
    prompt = [user_turn(QUESTION, 2)]
    if not family.case.multi_image:
        with pytest.raises(InvalidInputError, match="one image per request"):
            guard.generate(images, prompt, **GREEDY)
        return
    expected = plain_generate(family.model, family.processor, images, prompt, **GREEDY)
    with spy_generate(family.model) as outputs:
        guard.generate(images, prompt, **GREEDY)
    assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected


def test_llm_tokens_widen_each_image_run_and_wrap_answers_as_generate(family: Family, sized_images):
    image = sized_images[2]
    hinted = guard_for(family.model, family.processor, level=1)  # a 'hint' verdict, safety tokens injected
    bare = guard_for(family.model, family.processor, inject=False, level=1)
    result = hinted.generate(image, QUESTION, **GREEDY)
    assert result.action == "hint" and result.generated and result.hint
    assert (
        result.prompt_tokens - bare.generate(image, QUESTION, **GREEDY).prompt_tokens == hinted.config.tokens.num_tokens
    )

    _, wrapped = hinted.wrap().generate_with_results(**_chat_inputs(family, [image]), **GREEDY)
    assert wrapped[0].action == "hint" and wrapped[0].prompt_tokens == result.prompt_tokens
    assert wrapped[0].text == result.text
    stream = hinted.stream(image, QUESTION, **GREEDY)
    assert stream.action == "hint" and "".join(stream) == result.text


def test_refusals_skip_the_model(family: Family, sized_images):
    guard = guard_for(family.model, family.processor, level=3)
    with spy_generate(family.model) as outputs:
        result = guard.generate(sized_images[0], QUESTION, **GREEDY)
    assert result.action == "refuse" and not result.generated and result.text and not outputs


# ---------------------------------------------------------------------------------------------- persistence
def _other_family(family: Family) -> tuple[Any, Any]:
    """A model of another family than ``family``'s (LLaVA, or LLaVA-NeXT where the case is a LLaVA)."""
    from psaguard.tiny import build_tiny_llava_next, build_tiny_llava_next_processor, build_tiny_processor

    own = guard_for(family.model, family.processor).config.fingerprint.family
    for model, processor in ((build_tiny_llava(), build_tiny_processor()),):
        if guard_for(model, processor).config.fingerprint.family != own:
            return model, processor
    processor = build_tiny_llava_next_processor()
    return build_tiny_llava_next(processor=processor), processor


def test_save_load_round_trip_and_other_families_are_refused(family: Family, sized_images, tmp_path: Path):
    guard = guard_for(family.model, family.processor, level=1)
    path = guard.save_pretrained(tmp_path / "guard")
    loaded = SafetyGuard.from_pretrained(path, family.model, family.processor)
    assert (
        loaded.classify(sized_images[1], QUESTION).level_probs == guard.classify(sized_images[1], QUESTION).level_probs
    )

    other_model, other_processor = _other_family(family)
    with pytest.raises(CheckpointMismatchError, match="family"):
        SafetyGuard.from_pretrained(path, other_model, other_processor)
    with pytest.raises((CheckpointMismatchError, UnsupportedModelError)):
        guard.wrap(other_model)
    other_path = SafetyGuard.attach(other_model, other_processor).save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointMismatchError, match="family"):
        SafetyGuard.from_pretrained(other_path, family.model, family.processor)


def test_classifier_only_mode_judges_as_the_full_model_or_says_it_cannot(family: Family, sized_images, tmp_path):
    guard = guard_for(family.model, family.processor, level=1)
    guard_dir = guard.save_pretrained(tmp_path / "guard")
    model_dir = tmp_path / "model"
    unwrap_model(family.model).save_pretrained(model_dir)
    if not family.case.classifier_only:
        with pytest.raises(UnsupportedModelError, match="classifier-only mode supports"):
            SafetyGuard.from_pretrained_classifier(guard_dir, model_dir, family.processor)
        return
    light = SafetyGuard.from_pretrained_classifier(guard_dir, model_dir, family.processor)
    for image in sized_images:
        ours, full = light.classify(image, QUESTION), guard.classify(image, QUESTION)
        assert ours.level_probs == pytest.approx(full.level_probs, abs=1e-5)
    with pytest.raises(GenerationUnavailableError):
        light.generate(sized_images[0], QUESTION, **GREEDY)


# ---------------------------------------------------------------------------------------------- training
def _examples(tmp_path: Path, count: int = 4) -> list[Example]:
    """Reddish images are level 3 / type 1, bluish ones level 0 / type 0, at two image sizes."""
    examples = []
    for index in range(count):
        risky = index % 2 == 0
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (32, 32) if index < 2 else (40, 24), (220, 40, 40) if risky else (40, 40, 220)).save(path)
        answer = "sorry i can't help with that request" if risky else "this is a blue square"
        examples.append(
            Example(
                images=(path,),
                turns=(("what is in this picture ?", answer),),
                level=3 if risky else 0,
                type=1 if risky else 0,
                path="d.jsonl",
                line=index,
            )
        )
    return examples


def test_stage1_head_loss_falls_in_a_few_steps_and_the_model_stays_frozen(family: Family, tmp_path: Path):
    torch.manual_seed(0)
    guard = SafetyGuard.attach(
        family.model, family.processor, SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 8}})
    )
    batch = build_collator(guard, Stage1Config(model="m", train_data="t", output_dir=str(tmp_path)))(
        _examples(tmp_path)
    )
    objective = GuardObjective(guard, family.model, lm_weight=1.0, head_weight=1.0)
    optimizer = torch.optim.Adam(guard.modules.parameters(), lr=3e-3)
    frozen = {n: t.clone() for n, t in unwrap_model(family.model).state_dict().items()}
    losses = []
    for _ in range(8):
        step = objective(batch)
        optimizer.zero_grad()
        step.loss.backward()
        optimizer.step()
        losses.append(float(step.head_loss))
    assert torch.isfinite(step.lm_loss) and step.lm_loss > 0  # the LM sees the family's image runs
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(t, unwrap_model(family.model).state_dict()[n]) for n, t in frozen.items())


def test_stage2_lora_targets_only_the_language_model(family: Family, tmp_path: Path):
    from peft import get_peft_model

    base = copy.deepcopy(unwrap_model(family.model))
    adapted = get_peft_model(base, build_lora_config(LoraSettings(r=4)))
    targets = {name.rsplit(".lora_", 1)[0] for name, _ in adapted.named_parameters() if ".lora_" in name}
    assert targets and all(".language_model." in name for name in targets)
    assert not any("vision_tower" in name or "multi_modal_projector" in name for name in targets)

    torch.manual_seed(0)
    guard = SafetyGuard.attach(
        adapted, family.processor, SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 8}})
    )
    batch = build_collator(guard, Stage1Config(model="m", train_data="t", output_dir=str(tmp_path)))(
        _examples(tmp_path, 2)
    )
    step = GuardObjective(guard, adapted, lm_weight=1.0, head_weight=0.0)(batch)
    step.loss.backward()
    with_grad = {name for name, p in adapted.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(".lora_" in name for name in with_grad)
