"""GuardRunnable: verdicts equal the guard's, real batching, per-input errors, callback events."""

from __future__ import annotations

from typing import Any

import pytest
from category_helpers import negatives, scam_examples, scam_request
from generation_helpers import count_calls
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import HumanMessage

from psaguard import InvalidInputError, RemoteImageError, SafetyVerdict
from psaguard.adapters import VERDICT_EVENT, GuardRunnable, guarded


class EventLog(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


class AsyncEventLog(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


def _count_batches(guard, monkeypatch) -> list[int]:
    sizes: list[int] = []
    original = guard.classify_requests

    def counting(requests, **kwargs):
        sizes.append(sum(len(request.images) for request in requests))
        return original(requests, **kwargs)

    monkeypatch.setattr(guard, "classify_requests", counting)
    return sizes


def test_verdict_of_a_message_equals_classify_on_the_same_request(guard, images, image_message_content):
    verdict = GuardRunnable(guard).invoke([HumanMessage(content=image_message_content)])
    direct = guard.classify(images[0], "what is in this picture ?")
    assert isinstance(verdict, SafetyVerdict)
    assert verdict.rule == direct.rule and verdict.action == direct.action
    assert verdict.level_probs == pytest.approx(direct.level_probs, abs=1e-5)


def test_several_images_give_the_worst_of_their_verdicts(guard, images):
    from psaguard.policy import worst_verdict

    singles = guard.classify_batch(images, ["compare them"] * 3)
    verdict = GuardRunnable(guard).invoke({"image": images, "prompt": "compare them"})
    assert verdict.rule == worst_verdict(singles).rule
    assert verdict.level_probs == pytest.approx(worst_verdict(singles).level_probs, abs=1e-5)


def test_several_images_give_the_most_severe_verdict(make_guard, images):
    # The same forced guard gives every image the same verdict; the deciding one carries the forced rule.
    verdict = GuardRunnable(make_guard("refuse")).invoke({"image": images[:2], "prompt": "compare them"})
    assert verdict.action == "refuse" and verdict.rule == "type:privacy/level:reject"
    assert verdict.refusal and "personal privacy" in verdict.refusal


def test_batch_judges_every_image_in_one_forward_pass(guard, images, monkeypatch):
    runnable = GuardRunnable(guard)
    inputs = [{"image": images[0], "prompt": "a"}, {"image": images[1:], "prompt": "b"}, "text only"]
    one_by_one = [runnable.invoke(value) for value in inputs]
    sizes = _count_batches(guard, monkeypatch)
    batched = runnable.batch(inputs)
    assert sizes == [3]
    assert [v.rule for v in batched] == [v.rule for v in one_by_one]
    assert batched[0].level_probs == pytest.approx(one_by_one[0].level_probs, abs=1e-5)
    assert batched[2].rule == "no_image" and batched[2].action == "allow"


async def test_abatch_matches_batch_and_isolates_bad_inputs(guard, images):
    runnable = GuardRunnable(guard)
    remote = [HumanMessage(content=[{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}])]
    inputs = [{"image": images[0], "prompt": "a"}, remote, {"image": b"not an image", "prompt": "c"}]
    sync = runnable.batch(inputs, return_exceptions=True)
    both = await runnable.abatch(inputs, return_exceptions=True)
    for results in (sync, both):
        assert isinstance(results[0], SafetyVerdict)
        assert isinstance(results[1], RemoteImageError)
        assert type(results[2]).__name__ == "InvalidImageError"
    assert both[0].rule == sync[0].rule
    with pytest.raises(RemoteImageError):
        runnable.batch(inputs)


def test_text_only_requests_follow_on_text_only(guard):
    assert GuardRunnable(guard).invoke("hello").action == "allow"
    refused = GuardRunnable(guard, on_text_only="refuse").invoke("hello")
    assert refused.action == "refuse" and refused.rule == "no_image" and refused.refusal


def test_every_verdict_is_sent_as_a_custom_event(make_guard, images):
    log = EventLog()
    runnable = GuardRunnable(make_guard("hint"))
    runnable.invoke({"image": images[0], "prompt": "x"}, config={"callbacks": [log]})
    runnable.batch([{"image": images[0], "prompt": "x"}, "text"], config={"callbacks": [log]})
    assert [name for name, _ in log.events] == [VERDICT_EVENT] * 3
    assert [data["rule"] for _, data in log.events] == ["type:privacy/level:reject"] * 2 + ["no_image"]
    first = log.events[0][1]
    assert first["action"] == "hint" and first["verdict"]["hint"] and first["type"] == "privacy"


async def test_async_events_reach_handlers_and_astream_events(make_guard, images):
    log = AsyncEventLog()
    runnable = GuardRunnable(make_guard("block"))
    verdict = await runnable.ainvoke({"image": images[0], "prompt": "x"}, config={"callbacks": [log]})
    assert verdict.action == "block"
    assert log.events and log.events[0][1]["rule"] == verdict.rule
    events = [e async for e in runnable.astream_events({"image": images[0], "prompt": "x"}, version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == [VERDICT_EVENT]
    assert custom[0]["data"]["action"] == "block"


def test_requests_over_the_guards_image_cap_are_refused_before_judging(make_guard, recorder, image_message_content):
    guard = make_guard("allow")
    limit = guard.config.max_images_per_request
    content = [image_message_content[0]] * (limit + 1) + [image_message_content[1]]
    with count_calls(guard.backbone.vision_tower) as calls:
        with pytest.raises(InvalidInputError, match=f"{limit + 1} images; the limit is {limit}"):
            GuardRunnable(guard).invoke([HumanMessage(content=content)])
        with pytest.raises(InvalidInputError, match="the limit is"):
            guarded(recorder, guard).invoke([HumanMessage(content=content)])
    assert calls == [] and recorder.calls == []
    allowed = [image_message_content[0]] * limit + [image_message_content[1]]
    assert GuardRunnable(guard).invoke([HumanMessage(content=allowed)]).action == "allow"


def test_verdict_events_carry_custom_categories(guard, images):
    guard.add_category("scam", scam_examples(images), level=3, negatives=negatives(images))
    log = EventLog()
    image, prompt = scam_request(images)
    GuardRunnable(guard).batch(
        [{"image": image, "prompt": prompt}, {"image": images[1], "prompt": "hi"}], config={"callbacks": [log]}
    )
    (_, fired), (_, benign) = log.events
    assert (fired["rule"], fired["type"], fired["action"]) == ("category:scam/level:reject", "scam", "refuse")
    assert fired["verdict"]["custom_scores"]["scam"] >= 0.5 > benign["verdict"]["custom_scores"]["scam"]
