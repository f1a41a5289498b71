"""One image payload per content block: a block with two is refused in every adapter, never judged on one
payload and sent upstream with the other (langchain-core's OpenAI converter reads ``url`` before ``base64``
and ``data`` before ``base64``, while the guard read ``base64`` first)."""

from __future__ import annotations

import base64
import io
import itertools
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from psaguard import InvalidImageError, InvalidInputError, RemoteImageError
from psaguard.adapters import GuardedChatModel, GuardRunnable, guarded
from psaguard.adapters.messages import decode_image_block


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


BENIGN = _png((0, 160, 0))
HARMFUL = _png((200, 0, 0))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _payload(field: str, data: bytes) -> dict[str, Any]:
    """The fields of an ``image`` block holding ``data`` in ``field``."""
    if field == "base64":
        return {"base64": _b64(data), "mime_type": "image/png"}
    if field == "url":
        return {"url": f"data:image/png;base64,{_b64(data)}"}
    if field == "data":
        return {"source_type": "base64", "data": _b64(data), "mime_type": "image/png"}
    if field == "source":
        return {"source": {"type": "base64", "media_type": "image/png", "data": _b64(data)}}
    raise AssertionError(field)


FIELDS = ("base64", "url", "data", "source")
# benign in the first field, harmful in the second: every ordered pair, so whichever field an adapter (or a
# provider's converter) reads first, the other one holds the other image.
PAIRS = list(itertools.permutations(FIELDS, 2))


def _two_payload_blocks() -> list[dict[str, Any]]:
    blocks = [{"type": "image", **_payload(first, BENIGN), **_payload(second, HARMFUL)} for first, second in PAIRS]
    benign_url, harmful_url = (f"data:image/png;base64,{_b64(d)}" for d in (BENIGN, HARMFUL))
    return [
        *blocks,
        # a remote URL beside a judged payload: the "remote URLs are refused" rule must hold too
        {"type": "image", **_payload("source", BENIGN), "url": "https://images.example.com/harmful.png"},
        {"type": "image", **_payload("base64", BENIGN), "url": "https://images.example.com/harmful.png"},
        {"type": "image", **_payload("base64", BENIGN), "file_id": "file-harmful"},
        {"type": "image", "source_type": "id", "id": "file-harmful", "base64": _b64(BENIGN)},
        {"type": "image", "source": {"type": "url", "url": harmful_url, "data": _b64(BENIGN)}},
        {"type": "image_url", "image_url": {"url": benign_url}, "url": harmful_url},
        {"type": "image_url", "image_url": {"url": benign_url, "data": _b64(HARMFUL)}},
        {"type": "input_image", "image_url": benign_url, "file_id": "file-harmful"},
        {"type": "media", "mime_type": "image/png", "data": _b64(BENIGN), "file_uri": "gs://bucket/harmful.png"},
        # LangChain moves a v0 block's unknown keys to `extras` when it converts the block to v1
        {"type": "image", **_payload("base64", BENIGN), "extras": {"url": harmful_url}},
    ]


TWO_PAYLOAD_BLOCKS = _two_payload_blocks()


def _messages(block: dict[str, Any]) -> list[HumanMessage]:
    return [HumanMessage(content=[block, {"type": "text", "text": "what is in this picture ?"}])]


@pytest.fixture
def image_judge(make_guard, monkeypatch):
    """A guard that allows BENIGN and refuses HARMFUL (a trained guard's behaviour), counting what it judges."""
    guard, refusing = make_guard("allow"), make_guard("refuse")
    allowing, judged = guard.classify_requests, []

    def classify_requests(requests, **kwargs):
        judged.extend(image for request in requests for image in request.images)
        assert all(image in (BENIGN, HARMFUL) for request in requests for image in request.images)
        return [
            (refusing.classify_requests if HARMFUL in request.images else allowing)([request], **kwargs)[0]
            for request in requests
        ]

    monkeypatch.setattr(guard, "classify_requests", classify_requests)
    return guard, judged


def test_the_judge_allows_the_benign_image_and_refuses_the_harmful_one(image_judge, recorder):
    guard, _ = image_judge
    chain = guarded(recorder, guard)
    benign, harmful = ({"type": "image", **_payload("base64", data)} for data in (BENIGN, HARMFUL))
    assert chain.invoke(_messages(benign)).content == "answer"
    assert len(recorder.calls) == 1
    refused = chain.invoke(_messages(harmful))
    assert refused.response_metadata["psaguard"]["action"] == "refuse" and len(recorder.calls) == 1


@pytest.mark.parametrize("block", TWO_PAYLOAD_BLOCKS, ids=lambda b: f"{b['type']}:{'+'.join(sorted(b))}")
def test_a_block_with_two_payloads_is_refused_by_the_parser(block):
    with pytest.raises(InvalidImageError):
        decode_image_block(block)


def test_guarded_refuses_two_payload_blocks_without_judging_or_forwarding(image_judge, recorder):
    guard, judged = image_judge
    chain = guarded(recorder, guard)
    for block in TWO_PAYLOAD_BLOCKS:
        with pytest.raises(InvalidImageError):
            chain.invoke(_messages(block))
        with pytest.raises(InvalidImageError):
            list(chain.stream(_messages(block)))
        (result,) = chain.batch([_messages(block)], return_exceptions=True)
        assert isinstance(result, InvalidImageError), block
    assert recorder.calls == [] and judged == []


async def test_async_guarded_refuses_two_payload_blocks(image_judge, recorder):
    guard, judged = image_judge
    chain = guarded(recorder, guard)
    for block in TWO_PAYLOAD_BLOCKS:
        with pytest.raises(InvalidImageError):
            await chain.ainvoke(_messages(block))
    assert recorder.calls == [] and judged == []


def test_guard_runnable_refuses_two_payload_blocks(image_judge):
    guard, judged = image_judge
    runnable = GuardRunnable(guard)
    for block in TWO_PAYLOAD_BLOCKS:
        with pytest.raises(InvalidImageError):
            runnable.invoke(_messages(block))
    assert judged == []


def test_guarded_chat_model_refuses_two_payload_blocks(make_guard, monkeypatch):
    guard = make_guard("allow")
    ran: list[Any] = []
    monkeypatch.setattr(guard, "generate", lambda *args, **kwargs: ran.append(args))
    chat = GuardedChatModel(guard=guard, max_tokens=4)
    for block in TWO_PAYLOAD_BLOCKS:
        with pytest.raises(InvalidImageError):
            chat.invoke(_messages(block))
    assert ran == []


def test_agent_middleware_refuses_two_payload_blocks(image_judge, recorder):
    agents = pytest.importorskip("langchain.agents", reason="the agent middleware needs the langchain v1 package")
    from psaguard.adapters import PsaGuardMiddleware

    guard, judged = image_judge
    agent = agents.create_agent(recorder, tools=[], middleware=[PsaGuardMiddleware(guard)])
    for block in TWO_PAYLOAD_BLOCKS:
        with pytest.raises(InvalidImageError):
            agent.invoke({"messages": _messages(block)})
    assert recorder.calls == [] and judged == []


@pytest.mark.parametrize(
    "block",
    [
        {"type": "text", "text": "hi", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "hi", "base64": "AAAA", "mime_type": "image/png"},
        {"type": "reasoning", "reasoning": "hmm", "url": "data:image/png;base64,AAAA"},
    ],
)
def test_text_blocks_holding_an_image_payload_are_refused(block):
    with pytest.raises(InvalidInputError, match="image payload"):
        decode_image_block(block)


def test_one_payload_blocks_still_decode_and_null_fields_do_not_count():
    url = f"data:image/png;base64,{_b64(BENIGN)}"
    for field in FIELDS:
        assert decode_image_block({"type": "image", **_payload(field, BENIGN)}) == BENIGN, field
    # OpenAI's Responses API serialises unset fields as null
    assert decode_image_block({"type": "input_image", "image_url": url, "file_id": None, "detail": "auto"}) == BENIGN
    assert decode_image_block({"type": "image_url", "image_url": {"url": url, "detail": "low"}}) == BENIGN
    with pytest.raises(RemoteImageError):
        decode_image_block({"type": "image", "source_type": "id", "id": "file-1"})
    with pytest.raises(InvalidImageError, match="source_type"):
        decode_image_block({"type": "image", "source_type": "url", "data": _b64(BENIGN)})
