import asyncio
import copy

import pytest
import torch
from generation_helpers import (
    QUESTION,
    capture_llm_inputs,
    count_calls,
    guard_for,
    plain_generate,
    spy_generate,
    user_turn,
)
from pydantic import ValidationError

from psaguard import (
    ConfigError,
    GuardBlocked,
    InvalidImageError,
    InvalidInputError,
    InvalidPromptError,
    ProcessorError,
    SafetyGuard,
    SafetyGuardConfig,
    TypeRule,
)
from psaguard.images.decode import MAX_IMAGES_PER_REQUEST
from psaguard.policy import GenerationOptions, worst_verdict
from psaguard.testing.llava import build_tiny_processor
from psaguard.tokenization import render_chat

GREEDY = {"max_new_tokens": 6, "do_sample": False}


# ---------------------------------------------------------------------------------------------- allow
def test_allow_without_llm_tokens_is_token_for_token_plain_generate(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, inject=False, level=0)
    with spy_generate(tiny_model) as outputs:
        result = guard.generate(images[1], QUESTION, **GREEDY)
    expected = plain_generate(tiny_model, tiny_processor, [images[1]], [user_turn(QUESTION)], **GREEDY)
    assert (result.action, result.generated, result.hint) == ("allow", True, None)
    assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected
    assert result.completion_tokens == len(expected)
    assert result.text == tiny_processor.decode(expected, skip_special_tokens=True)


def test_sampled_decoding_matches_plain_generate_under_the_same_seed(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, inject=False, level=0)
    sampling = {"max_new_tokens": 8, "do_sample": True, "temperature": 1.5, "top_k": 0}
    with spy_generate(tiny_model) as outputs:
        torch.manual_seed(7)
        guard.generate(images[0], QUESTION, **sampling)
        torch.manual_seed(8)
        guard.generate(images[0], QUESTION, **sampling)
    torch.manual_seed(7)
    expected = plain_generate(tiny_model, tiny_processor, [images[0]], [user_turn(QUESTION)], **sampling)
    assert outputs[0][0, -8:].tolist() == expected
    assert outputs[1][0, -8:].tolist() != expected  # it really samples


def test_llm_tokens_add_exactly_n_positions_before_each_image(tiny_model, tiny_processor, images):
    conversation = [user_turn(QUESTION, num_images=2)]
    lengths, captured = {}, None
    for inject in (False, True):
        guard = guard_for(tiny_model, tiny_processor, inject=inject, level=0)
        with capture_llm_inputs(tiny_model) as seen:
            result = guard.generate(images[:2], conversation, max_new_tokens=2)
        lengths[inject] = seen[0]["inputs_embeds"].shape[1]
        assert result.prompt_tokens == lengths[inject]
        captured = guard, seen[0]
    num_tokens = guard.config.tokens.num_tokens
    assert num_tokens == 64
    assert lengths[True] - lengths[False] == 2 * num_tokens

    guard, seen = captured
    ids, embeds = seen["input_ids"][0], seen["inputs_embeds"][0]
    llm_tokens = guard.modules.llm_tokens[0].detach()
    features = guard.backbone.encode_images(**guard.backbone.preprocess(tiny_processor, images[:2]))
    image_embeds = torch.stack(guard.backbone.project(features)).detach()
    slot = num_tokens + image_embeds.shape[1]
    positions = (ids == guard.backbone.image_token_id).nonzero().flatten()
    assert len(positions) == 2 * slot
    for image in range(2):
        start = int(positions[image * slot])
        torch.testing.assert_close(embeds[start : start + num_tokens], llm_tokens)
        torch.testing.assert_close(embeds[start + num_tokens : start + slot], image_embeds[image])


def test_vision_tower_runs_once_per_request(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=1)  # hint: the model runs
    with count_calls(guard.backbone.vision_tower) as calls:
        result = guard.generate(images[:2], QUESTION, max_new_tokens=3)
    assert result.generated and len(result.verdicts) == 2
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------- actions
def test_hint_goes_at_the_end_of_the_last_user_turn(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=1, hints={1: "you must refuse"})
    options = GenerationOptions(hint_template=" safe hint : {hint}")
    with capture_llm_inputs(tiny_model) as seen:
        result = guard.generate(images[0], QUESTION, options=options, max_new_tokens=3)
    assert (result.action, result.hint, result.generated) == ("hint", "you must refuse", True)
    assert result.verdict.rule == "type:privacy/level:careful"
    prompt = tiny_processor.decode(seen[0]["input_ids"][0], skip_special_tokens=False).replace("<image>", "").split()
    assert " ".join(prompt).endswith(f"{QUESTION} safe hint : you must refuse </s> assistant :")


def test_refuse_answers_with_the_policy_refusal_without_running_the_llm(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=3, refusal="sorry , i can't help with {concept} .")
    with count_calls(tiny_model.model.language_model) as calls:
        result = guard.generate(images[0], QUESTION, max_new_tokens=5)
    assert calls == []
    assert result.action == "refuse" and not result.generated
    assert result.text == "sorry , i can't help with personal privacy ." == result.verdict.refusal
    assert (result.prompt_tokens, result.completion_tokens) == (0, 0)


def test_refuse_with_hint_option_generates_with_the_refusal_as_hint(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=3)
    options = GenerationOptions(refuse_with="hint")
    with count_calls(tiny_model.model.language_model) as calls:
        result = guard.generate(images[0], QUESTION, options=options, max_new_tokens=3)
    assert calls and result.generated and result.action == "refuse"
    assert result.hint == f"You must refuse and say: {result.verdict.refusal}"


def test_block_raises_guard_blocked_carrying_the_verdict(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=2, types={"privacy": TypeRule(actions={2: "block"})})
    with count_calls(tiny_model.model.language_model) as calls, pytest.raises(GuardBlocked) as err:
        guard.generate(images[0], QUESTION, max_new_tokens=3)
    assert calls == []
    assert err.value.verdict.action == "block" and err.value.verdict.rule == "type:privacy/level:caution"


def test_disabled_type_is_allowed_and_generates(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=3, types={"privacy": TypeRule(enabled=False)})
    result = guard.generate(images[0], QUESTION, max_new_tokens=3)
    assert result.action == "allow" and result.generated and result.verdict.rule == "type:privacy/disabled"


# ---------------------------------------------------------------------------------------------- prompts
def test_multi_turn_conversation_matches_plain_generate(tiny_model, tiny_processor, images):
    conversation = [
        {"role": "system", "content": "you must answer ."},
        user_turn("describe this image ."),
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle ."}]},
        {"role": "user", "content": "what color is it ?"},
    ]
    guard = guard_for(tiny_model, tiny_processor, inject=False, level=0)
    with spy_generate(tiny_model) as outputs:
        result = guard.generate([images[2]], conversation, **GREEDY)
    expected = plain_generate(tiny_model, tiny_processor, [images[2]], conversation, **GREEDY)
    assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected
    assert result.verdict.action == "allow"
    assert conversation[3] == {"role": "user", "content": "what color is it ?"}  # the caller's object is untouched


def test_hint_in_a_multi_turn_conversation_goes_to_the_last_user_turn(tiny_model, tiny_processor, images):
    conversation = [
        user_turn("describe this image ."),
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "how ?"},
    ]
    guard = guard_for(tiny_model, tiny_processor, level=2, hints={2: "safe"})
    with capture_llm_inputs(tiny_model) as seen:
        guard.generate(
            images[0], conversation, options=GenerationOptions(hint_template=" hint : {hint}"), max_new_tokens=2
        )
    prompt = tiny_processor.decode(seen[0]["input_ids"][0]).replace("<image>", "").split()
    assert " ".join(prompt).endswith("assistant : yes </s> user : how ? hint : safe </s> assistant :")


def test_several_images_match_plain_generate_and_are_each_judged(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, inject=False, level=0)
    conversation = [user_turn("compare these images .", num_images=3)]
    with spy_generate(tiny_model) as outputs:
        result = guard.generate(images, conversation, **GREEDY)
    assert len(result.verdicts) == 3
    expected = plain_generate(tiny_model, tiny_processor, images, conversation, **GREEDY)
    assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected


def test_the_worst_image_verdict_decides(tiny_model, tiny_processor, images, monkeypatch):
    guard = guard_for(tiny_model, tiny_processor, level=1)
    original = guard.classifier.analyze

    def second_image_refused(flat_images, prompts, *requests):
        analysis = original(flat_images, prompts, *requests)
        refused = analysis.verdicts[1].model_copy(update={"action": "refuse", "refusal": "no .", "hint": None})
        analysis.verdicts[1] = refused
        return analysis

    monkeypatch.setattr(guard.classifier, "analyze", second_image_refused)
    result = guard.generate(images[:2], QUESTION, max_new_tokens=2)
    assert [v.action for v in result.verdicts] == ["hint", "refuse"]
    assert result.verdict is result.verdicts[1] and result.action == "refuse" and result.text == "no ."


def test_worst_verdict_orders_actions_then_levels(guard, images):
    verdict = guard.classify(images[0], QUESTION)

    def make(action, level):
        return verdict.model_copy(update={"action": action, "level": verdict.level.model_copy(update={"id": level})})

    assert worst_verdict([make("hint", 3), make("refuse", 1), make("allow", 0)]).action == "refuse"
    assert worst_verdict([make("hint", 1), make("hint", 2)]).level.id == 2
    assert worst_verdict([make("block", 1), make("refuse", 3)]).action == "block"


def test_prompt_spelling_the_image_token_is_refused(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=0)
    with pytest.raises(InvalidPromptError):
        guard.generate(images[0], "what is <image> this ?", max_new_tokens=2)
    with pytest.raises(InvalidPromptError):
        guard.generate(images[:2], [user_turn(QUESTION, num_images=1)], max_new_tokens=2)


def test_generate_kwargs_the_guard_sets_are_refused(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=0)
    for bad in ({"pixel_values": torch.zeros(1)}, {"inputs_embeds": torch.zeros(1)}, {"num_return_sequences": 2}):
        with pytest.raises(InvalidInputError):
            guard.generate(images[0], QUESTION, max_new_tokens=2, **bad)


# ---------------------------------------------------------------------------------------------- fail closed
def test_unreadable_image_follows_on_error(tiny_model, tiny_processor, images):
    with pytest.raises(InvalidImageError):  # default: block = raise the typed error
        guard_for(tiny_model, tiny_processor).generate(b"not an image", QUESTION, max_new_tokens=2)
    refused = guard_for(tiny_model, tiny_processor, on_error="refuse").generate(b"xx", QUESTION, max_new_tokens=2)
    assert refused.action == "refuse" and not refused.generated and refused.verdict.error
    with pytest.raises(InvalidImageError, match="cannot generate without its image"):
        guard_for(tiny_model, tiny_processor, on_error="allow").generate(b"xx", QUESTION, max_new_tokens=2)


# ---------------------------------------------------------------------------------------------- batches
def test_batch_with_different_actions_runs_the_llm_once_for_the_answerable(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, inject=False, level=0)
    original = guard.classifier.analyze
    actions = ["allow", "hint", "refuse", "block"]

    def per_request(flat_images, prompts, *requests):
        analysis = original(flat_images, prompts, *requests)
        for i, action in enumerate(actions):
            extra = {"hint": "safe"} if action == "hint" else {"refusal": "no ."} if action != "allow" else {}
            analysis.verdicts[i] = analysis.verdicts[i].model_copy(update={"action": action, **extra})
        return analysis

    guard.classifier.analyze = per_request
    batch_images = [images[0], images[1], images[2], images[0]]
    with count_calls(guard.backbone.vision_tower) as tower, spy_generate(tiny_model) as outputs:
        with pytest.raises(GuardBlocked, match="request 3"):
            guard.generate_batch(batch_images, [QUESTION] * 4, **GREEDY)
        results = guard.generate_batch(batch_images, [QUESTION] * 4, return_blocked=True, **GREEDY)
    assert len(tower) == 2 and len(outputs) == 1  # the blocked batch generated nothing
    assert [r.action for r in results] == actions
    assert [r.generated for r in results] == [True, True, False, False]
    assert results[2].text == "no ." and results[3].text == ""
    assert outputs[0].shape[0] == 2  # one generate call for the two answerable requests
    expected = plain_generate(tiny_model, tiny_processor, [images[0]], [user_turn(QUESTION)], **GREEDY)
    assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected  # left padding changes nothing


# ---------------------------------------------------------------------------------------------- async and streaming
async def test_agenerate_matches_generate(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, inject=False, level=1)
    results = await asyncio.gather(
        guard.agenerate(images[0], QUESTION, **GREEDY), guard.agenerate(images[1], QUESTION, **GREEDY)
    )
    assert [r.text for r in results] == [guard.generate(image, QUESTION, **GREEDY).text for image in images[:2]]
    batch = await guard.agenerate_batch(images[:2], [QUESTION, QUESTION], **GREEDY)
    assert [r.text for r in batch] == [r.text for r in results]


# ---------------------------------------------------------------------------------------------- 4-bit
def test_guarded_generation_on_a_4bit_language_model(tiny_dir, tiny_processor, images):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"],
    )
    model = LlavaForConditionalGeneration.from_pretrained(tiny_dir, quantization_config=quant).eval()
    assert isinstance(model.model.language_model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    guard = guard_for(model, tiny_processor, inject=False, level=0)
    short = {"max_new_tokens": 3, "do_sample": False}  # bitsandbytes' CPU 4-bit kernels are slow
    with spy_generate(model) as outputs:
        result = guard.generate(images[0], QUESTION, **short)
    expected = plain_generate(model, tiny_processor, [images[0]], [user_turn(QUESTION)], **short)
    assert result.generated and outputs[0][0, -3:].tolist() == expected
    hinted = guard_for(model, tiny_processor, inject=True, level=1).generate(images[0], QUESTION, max_new_tokens=2)
    assert hinted.generated and hinted.action == "hint" and hinted.completion_tokens > 0


def test_processor_without_chat_template_gives_a_typed_error(tiny_model, images):
    processor = build_tiny_processor()
    processor.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        guard_for(tiny_model, processor, level=0).generate(images[0], QUESTION, max_new_tokens=2)


# ---------------------------------------------------------------------------------------------- bounds
def test_requests_over_the_image_cap_are_refused_before_any_vision_pass(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=0)
    limit = guard.config.max_images_per_request
    assert limit == MAX_IMAGES_PER_REQUEST
    too_many = [images[0]] * (limit + 1)
    with count_calls(guard.backbone.vision_tower) as calls:
        with pytest.raises(InvalidInputError, match=f"{limit + 1} images; the limit is {limit}"):
            guard.generate(too_many, QUESTION, max_new_tokens=1)
        with pytest.raises(InvalidInputError, match="the limit is"):
            guard.stream(too_many, QUESTION, max_new_tokens=1)
        with pytest.raises(InvalidInputError, match="the limit is"):
            guard.generate_batch([images[0], too_many], [QUESTION, QUESTION], max_new_tokens=1)
    assert calls == []
    assert guard.generate([images[0]] * limit, QUESTION, max_new_tokens=1).action == "allow"


def test_the_image_cap_is_a_guard_config_field(tiny_model, tiny_processor, images):
    guard = SafetyGuard.attach(tiny_model, tiny_processor, SafetyGuardConfig(max_images_per_request=1))
    with pytest.raises(InvalidInputError, match="2 images; the limit is 1"):
        guard.generate([images[0], images[1]], QUESTION, max_new_tokens=1)
    with pytest.raises(ValidationError):
        SafetyGuardConfig(max_images_per_request=0)


def test_processor_failures_while_rendering_are_processor_errors(tiny_processor):
    conversation = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    broken = copy.copy(tiny_processor)
    broken.tokenizer = None  # a processor whose tokenizer went missing
    for processor in (object(), broken):
        with pytest.raises(ProcessorError):
            render_chat(processor, conversation)


def test_names_that_moved_out_of_the_generation_module_still_import_with_a_warning():
    import psaguard.generation.generator as generation
    from psaguard import policy, tokenization

    with pytest.warns(DeprecationWarning, match="psaguard.policy.worst_verdict"):
        assert generation.worst_verdict is policy.worst_verdict
    with pytest.warns(DeprecationWarning, match="psaguard.tokenization.until_eos"):
        assert generation.until_eos is tokenization.until_eos
    assert "worst_verdict" not in generation.__all__
