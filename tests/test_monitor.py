"""The streaming monitor: answers judged while they are generated, held back until judged, stopped when flagged."""

import pytest
import torch
from generation_helpers import QUESTION, count_calls, flag_judgements
from transformers import MaxLengthCriteria, StoppingCriteriaList

from psaguard import (
    GuardPolicy,
    HeadConfig,
    ResponseBlocked,
    ResponseHeadMissingError,
    ResponsePolicy,
    SafetyGuard,
    SafetyGuardConfig,
)

SORRY = "sorry , i cannot help with that ."  # words of the tiny vocabulary, so the wrapper can tokenize them
LONG = {"max_new_tokens": 24, "min_new_tokens": 24, "do_sample": False}


def monitored_guard(model, processor, *, response_level: int = 0, response_head: bool = True, **response):
    """A guard allowing every request, whose response head always predicts ``response_level`` (type 'privacy')."""
    torch.manual_seed(0)
    config = SafetyGuardConfig(
        head=HeadConfig(response_head=response_head), policy=GuardPolicy(response=ResponsePolicy(**response))
    )
    guard = SafetyGuard.attach(model, processor, config)
    type_id = guard.config.taxonomy.type_by_code("privacy").id
    heads = [(guard.modules.head, 0)]
    if response_head:
        heads.append((guard.modules.response_head, response_level))
    with torch.no_grad():  # biases far larger than the random weights' logits pin the verdicts
        for head, level in heads:
            head.level_head.bias.fill_(-40.0)
            head.level_head.bias[level] = 40.0
            head.type_head.bias.fill_(-40.0)
            head.type_head.bias[guard.config.taxonomy.safe_type_id if level == 0 else type_id] = 40.0
    return guard


def test_monitor_is_on_exactly_when_the_guard_has_a_response_head(tiny_model, tiny_processor, images):
    plain = monitored_guard(tiny_model, tiny_processor, response_head=False)
    assert plain.generate(images[0], QUESTION, max_new_tokens=4).response_verdict is None
    with pytest.raises(ResponseHeadMissingError):
        monitored_guard(tiny_model, tiny_processor, response_head=False, monitor=True).generate(
            images[0], QUESTION, max_new_tokens=4
        )
    guard = monitored_guard(tiny_model, tiny_processor)
    result = guard.generate(images[0], QUESTION, **LONG)
    assert result.response_verdict is not None and not result.response_verdict.flagged


def test_a_safe_answer_comes_out_whole_and_unchanged(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, interval=5, window=3)
    reference = guard.with_policy(GuardPolicy(response=ResponsePolicy(monitor=False)))
    want = reference.generate(images[0], QUESTION, **LONG)
    with count_calls(guard.backbone.vision_tower) as vision, count_calls(guard.modules.projector) as projector:
        got = guard.generate(images[0], QUESTION, **LONG)
    assert len(vision) == 1  # the monitor reuses the request's vision pass
    assert len(projector) == 1  # and the safety memory the request's judgement computed
    assert got.text == want.text and not got.stopped and got.stopped_at is None
    assert got.released_tokens == got.completion_tokens == want.completion_tokens
    assert got.response_verdict.tokens_judged == got.completion_tokens
    stream = guard.stream(images[0], QUESTION, **LONG)
    assert "".join(stream) == want.text == stream.result.text


def test_a_flagged_answer_stops_and_only_the_judged_prefix_is_released(tiny_model, tiny_processor, images):
    interval, window = 4, 3
    guard = monitored_guard(tiny_model, tiny_processor, interval=interval, window=window, replacement="Stopped.")
    reference = guard.with_policy(GuardPolicy(response=ResponsePolicy(monitor=False)))
    full = reference.generate(images[0], QUESTION, **LONG).text
    judged = flag_judgements(guard, lambda call, _: call >= 3)
    stream = guard.stream(images[0], QUESTION, **LONG)
    chunks = list(stream)
    result = stream.result
    assert result.stopped and result.stopped_at == 3 * interval and len(judged) == 3
    assert result.completion_tokens < LONG["max_new_tokens"]  # generation stopped at the flag
    # Released: the tokens judged safe at the 2nd judgement minus the hold-back window, never past the flag.
    assert result.released_tokens == 2 * interval - window <= result.stopped_at - window
    assert chunks[-1] == "Stopped." and "".join(chunks) == result.text
    prefix = result.text[: -len("Stopped.")]
    assert prefix and full.startswith(prefix)
    # generate gives the same text as the stream delivered.
    del guard.classifier.responses.judge_responses  # back to the real method, then patched afresh
    flag_judgements(guard, lambda call, _: call >= 3)
    assert guard.generate(images[0], QUESTION, **LONG).text == result.text


def test_an_answer_flagged_at_once_releases_nothing(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, response_level=3, interval=4, replacement=SORRY)
    result = guard.generate(images[0], QUESTION, **LONG)
    assert result.stopped and result.text == SORRY and result.released_tokens == 0
    assert result.completion_tokens == 4 and result.response_verdict.harmful
    assert list(guard.stream(images[0], QUESTION, **LONG)) == [SORRY]
    # The drop-in wrapper returns the replacement's tokens in place of the answer.
    wrapped = guard.wrap()
    inputs = tiny_processor(
        images=images[0],
        text=tiny_processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
            add_generation_prompt=True,
        ),
        return_tensors="pt",
    )
    ids, results = wrapped.generate_with_results(**inputs, **LONG)
    assert results[0].stopped
    answer = tiny_processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() == SORRY


def test_the_wrapped_models_monitor_reuses_the_requests_safety_memory(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, interval=4)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = tiny_processor.apply_chat_template(chat, add_generation_prompt=True)
    inputs = tiny_processor(images=images[0], text=text, return_tensors="pt")
    with count_calls(guard.modules.projector) as projector:
        _, results = guard.wrap().generate_with_results(**inputs, **LONG)
    assert results[0].response_verdict is not None and len(projector) == 1


def test_a_block_action_raises_after_the_released_text(tiny_model, tiny_processor, images):
    blocking = {"level_actions": {1: "block", 2: "block", 3: "block"}}
    guard = monitored_guard(tiny_model, tiny_processor, response_level=3, interval=4, **blocking)
    with pytest.raises(ResponseBlocked) as caught:
        guard.generate(images[0], QUESTION, **LONG)
    assert caught.value.verdict.action == "block"
    with pytest.raises(ResponseBlocked):
        list(guard.stream(images[0], QUESTION, **LONG))


def test_batches_are_judged_per_answer(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, interval=6, window=2)
    reference = guard.with_policy(GuardPolicy(response=ResponsePolicy(monitor=False)))
    prompts = [QUESTION, "describe the picture"]
    want = reference.generate_batch(images[:2], prompts, **LONG)
    got = guard.generate_batch(images[:2], prompts, **LONG)
    assert [g.text for g in got] == [w.text for w in want]
    assert all(g.response_verdict is not None and not g.stopped for g in got)


def test_an_answer_ending_between_judgements_is_judged_at_its_eos(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, interval=4, window=2)
    tokenizer = tiny_processor.tokenizer
    eos, vocabulary = tokenizer.eos_token_id, len(tokenizer)
    width: list[int] = []

    def force(batch_id: int, ids: torch.Tensor) -> list[int]:  # answer 0 ends with its 6th token, answer 1 never
        width.append(width[0] if width else len(ids))
        if batch_id == 0 and len(ids) - width[0] == 5:
            return [eos]
        return [token for token in range(vocabulary) if token != eos]

    original = guard.classifier.responses.judge_responses
    judged_rows: list[list[int]] = []

    def recording(context, responses, start, rows=None, tokens_judged=None):
        judged_rows.append(list(rows))
        return original(context, responses, start, rows, tokens_judged)

    guard.classifier.responses.judge_responses = recording
    prompts = [QUESTION, "describe the picture"]
    results = guard.generate_batch(
        images[:2], prompts, max_new_tokens=12, do_sample=False, prefix_allowed_tokens_fn=force
    )
    assert [r.completion_tokens for r in results] == [6, 12]
    # Judged at tokens 4 (both), 6 (answer 0, at its EOS, not after the batch ended), 8 and 12 (answer 1).
    assert judged_rows == [[0, 1], [0], [1], [1]]
    assert results[0].response_verdict.tokens_judged == 6 and not any(r.stopped for r in results)


def test_the_monitor_and_classify_response_judge_the_same_text_alike(tiny_model, tiny_processor, images):
    torch.manual_seed(1)
    allow = {1: "allow", 2: "allow", 3: "allow"}
    config = SafetyGuardConfig(
        head=HeadConfig(response_head=True),
        policy=GuardPolicy(level_actions=allow, response=ResponsePolicy(level_actions=allow, interval=5)),
    )
    guard = SafetyGuard.attach(tiny_model, tiny_processor, config)  # random heads: probabilities spread out
    result = guard.generate(images[0], QUESTION, **LONG)
    direct = guard.classify_response(images[0], QUESTION, result.text)
    assert result.response_verdict.level_probs == pytest.approx(direct.level_probs, abs=1e-5)
    assert result.response_verdict.type_probs == pytest.approx(direct.type_probs, abs=1e-5)


async def test_astream_goes_through_the_monitor(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, response_level=3, interval=4, replacement=SORRY)
    chunks = [chunk async for chunk in guard.astream(images[0], QUESTION, **LONG)]
    assert chunks == [SORRY]


def test_the_callers_stopping_criteria_still_apply(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, interval=4)
    unlimited = guard.generate(images[0], QUESTION, **LONG)
    width = unlimited.prompt_tokens
    limited = guard.generate(
        images[0], QUESTION, stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(width + 5)]), **LONG
    )
    assert limited.completion_tokens < unlimited.completion_tokens and limited.response_verdict is not None
    assert limited.response_verdict.tokens_judged == limited.completion_tokens  # judged whole at the end
