"""When the guard cannot judge, the request is refused (typed error) unless on_error says otherwise."""

from __future__ import annotations

import pytest
import torch

from psaguard.errors import GuardInternalError, InvalidImageError, InvalidPromptError
from psaguard.modules import HeadLogits
from psaguard.policy import GuardPolicy


def _broken_forward(*args, **kwargs):
    raise RuntimeError("CUDA error: device-side assert triggered")


def _nan_logits(self_modules, memory, query, mask):
    """The request head's logits, all NaN (judging reads them from the memory its vision pass computed)."""
    batch = len(memory)
    return HeadLogits(torch.full((batch, 4), float("nan")), torch.full((batch, 7), float("nan")))


def test_bad_image_is_a_typed_error_by_default(guard, images) -> None:
    with pytest.raises(InvalidImageError, match="request 1"):
        guard.classify_batch([images[0], b"not an image"], ["a", "b"])


def test_bad_prompt_is_a_typed_error_by_default(guard, images) -> None:
    with pytest.raises(InvalidPromptError):
        guard.classify(images[0], None)  # type: ignore[arg-type]


def test_runtime_error_in_forward_blocks_by_default(guard, images, monkeypatch) -> None:
    monkeypatch.setattr(guard.backbone, "encode_images", _broken_forward)
    with pytest.raises(GuardInternalError, match="device-side assert") as caught:
        guard.classify(images[0], "what is this")
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.parametrize(("on_error", "flagged"), [("refuse", True), ("allow", False)])
def test_runtime_error_follows_explicit_on_error(guard, images, monkeypatch, on_error, flagged) -> None:
    lenient = guard.with_policy(GuardPolicy(on_error=on_error))
    monkeypatch.setattr(lenient.backbone, "encode_images", _broken_forward)
    verdicts = lenient.classify_batch(images[:2], ["a", "b"])
    assert [v.action for v in verdicts] == [on_error, on_error]
    assert all(v.flagged == flagged and "RuntimeError" in (v.error or "") for v in verdicts)


def test_nan_scores_never_allow(guard, images, monkeypatch) -> None:
    """A tampered or diverged head gives NaN: argmax of NaN would read as level 0, i.e. 'allow'."""
    monkeypatch.setattr(type(guard.modules), "request_logits", _nan_logits)
    with pytest.raises(GuardInternalError, match="non-finite"):
        guard.classify(images[0], "what is this")
    refused = guard.with_policy(GuardPolicy(on_error="refuse")).classify(images[0], "what is this")
    assert refused.action == "refuse" and refused.error


def test_other_exceptions_are_not_swallowed(guard, images, monkeypatch) -> None:
    """Only RuntimeError maps to on_error; a bug elsewhere propagates instead of failing open."""

    def buggy(*args, **kwargs):
        raise KeyError("bug")

    lenient = guard.with_policy(GuardPolicy(on_error="allow"))
    monkeypatch.setattr(lenient.backbone, "encode_images", buggy)
    with pytest.raises(KeyError):
        lenient.classify(images[0], "what is this")


def test_one_bad_request_does_not_change_the_others(guard, images) -> None:
    lenient = guard.with_policy(GuardPolicy(on_error="refuse"))
    mixed = lenient.classify_batch([images[0], b"", images[1]], ["a", "b", "c"])
    clean = lenient.classify_batch([images[0], images[1]], ["a", "c"])
    assert mixed[1].action == "refuse" and mixed[1].error
    assert mixed[0].level_probs == pytest.approx(clean[0].level_probs, abs=1e-5)
    assert mixed[2].level_probs == pytest.approx(clean[1].level_probs, abs=1e-5)


def test_guarded_generation_fails_closed_on_internal_errors(guard, images, monkeypatch) -> None:
    monkeypatch.setattr(guard.backbone, "encode_images", _broken_forward)
    with pytest.raises(GuardInternalError):
        guard.generate(images[0], "what is this", max_new_tokens=2)
    refusing = guard.with_policy(GuardPolicy(on_error="refuse"))
    result = refusing.generate(images[0], "what is this", max_new_tokens=2)
    assert (result.action, result.generated) == ("refuse", False) and result.text


def test_wrapped_model_fails_closed_on_nan_scores(guard, tiny_processor, images, monkeypatch) -> None:
    """The wrapped model judges from its own vision pass; it must not decide on NaN either."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]}]
    text = tiny_processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = tiny_processor(images=images[:1], text=[text], return_tensors="pt")
    monkeypatch.setattr(type(guard.modules), "request_logits", _nan_logits)
    with pytest.raises(GuardInternalError, match="non-finite"):
        guard.wrap().generate(**inputs, max_new_tokens=2)
    refusing = guard.with_policy(GuardPolicy(on_error="refuse")).wrap()
    _, results = refusing.generate_with_results(**inputs, max_new_tokens=2)
    assert results[0].action == "refuse" and not results[0].generated
