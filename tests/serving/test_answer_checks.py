"""Answers judged by the server (``check_answers``): local mode through the streaming monitor, proxy mode by
holding back and judging the upstream's answer, moderations of conversations ending with the assistant's turn.

The guard is the tiny LLaVA with a response head whose verdicts the tests choose (:class:`Flagger`); proxy mode
talks to a fake upstream on loopback that answers a chosen text, and holds it back by the rule the LangChain
adapters follow (:func:`adapters_release`: ``interval`` and ``window`` in tokens of the guard's tokenizer, which
splits these answers one word a token). Every assertion checks what the real clients
(``openai``, LangChain's ``ChatOpenAI``) received: the refusal, ``finish_reason == "content_filter"``, the text
released before the stop, and that the flagged text never arrived.
"""

from __future__ import annotations

import contextlib
import json

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from generation_helpers import QUESTION, count_calls, flagged_as_privacy
from serving_helpers import image_message, openai_client
from test_monitor import SORRY, monitored_guard

from psaguard.adapters.answers import AnswerCheck
from psaguard.cli.demo import demo_guard_dir, demo_model_dir
from psaguard.errors import ConfigError, GuardInternalError, ResponseBlocked
from psaguard.request import GuardRequest
from psaguard.responses.policy import ResponsePolicy
from psaguard.serving import BackgroundServer, ServeConfig, create_app, load_guard
from psaguard.serving.moderation import category_name
from psaguard.training.world.demo_guard import resave_guard

INTERVAL, WINDOW = 4, 2
MAX_TOKENS = 24
BAD = "BADWORD "
BREAK = "<the upstream breaks here>"
WORDS = [f"w{index} " for index in range(12)]


class Flagger:
    """Makes the guard's response judgements flag the answers ``flags(call, text)`` picks (the real judgement
    runs too); records the texts judged. ``action`` is what a flagged answer gets: 'replace' or 'block'."""

    def __init__(self, guard) -> None:
        self.classifier = guard.classifier
        self.original = self.classifier.responses.judge_responses
        self.classifier.responses.judge_responses = self._judge
        self.reset()

    def reset(self, flags=lambda call, text: False, action: str = "replace") -> None:
        self.flags, self.action, self.judged = flags, action, []

    def _judge(self, context, responses, start, rows=None, tokens_judged=None):
        verdicts = self.original(context, responses, start, rows, tokens_judged)
        self.judged.append(responses[0])
        if not self.flags(len(self.judged), responses[0]):
            return verdicts
        return flagged_as_privacy(self.classifier, verdicts, block=self.action == "block")


@pytest.fixture(scope="module")
def answer_guard(tiny_model, tiny_processor):
    return monitored_guard(
        tiny_model, tiny_processor, interval=INTERVAL, window=WINDOW, replacement=SORRY, monitor=True
    )


@pytest.fixture(scope="module")
def flagger(answer_guard):
    return Flagger(answer_guard)


@pytest.fixture
def flags(flagger):
    flagger.reset()
    yield flagger
    flagger.reset()


@pytest.fixture(scope="module")
def local_answers(answer_guard, flagger):
    with BackgroundServer(create_app(answer_guard, ServeConfig(model_name="tiny"))) as server:
        yield server


@pytest.fixture(scope="module")
def upstream_state():
    return {"chunks": list(WORDS)}


@pytest.fixture(scope="module")
def upstream(upstream_state):
    """A fake upstream answering ``upstream_state["chunks"]`` (joined, or streamed one content chunk per event)."""
    state = upstream_state
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        body = await request.json()
        chunks, model = list(state["chunks"]), body.get("model", "up")
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(chunks)}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            return JSONResponse(
                {"id": "up-1", "object": "chat.completion", "created": 1, "model": model, "choices": [choice]}
            )

        def event(delta, finish=None):
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            body = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [choice]}
            return f"data: {json.dumps(body)}\n\n"

        async def events():
            yield ": keep-alive comment\n\n"
            yield event({"role": "assistant", "content": ""})
            for text in chunks:
                if text == BREAK:
                    raise RuntimeError("the fake upstream breaks its stream")
                yield event({"content": text})
            yield event({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with BackgroundServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def proxy_answers(answer_guard, flagger, upstream):
    config = ServeConfig(mode="proxy", upstream=upstream.base_url, model_name="tiny-proxy")
    with BackgroundServer(create_app(answer_guard, config)) as server:
        yield server


@pytest.fixture
def answer(upstream_state):
    """Sets the upstream's answer (content chunks) for one test."""

    def set_chunks(chunks):
        upstream_state["chunks"] = list(chunks)

    yield set_chunks
    upstream_state["chunks"] = list(WORDS)


def ask(server, image, **kwargs):
    return openai_client(server).chat.completions.create(
        model="tiny", messages=[image_message(image, QUESTION)], max_tokens=MAX_TOKENS, **kwargs
    )


def streamed(server, image):
    chunks = list(ask(server, image, stream=True))
    assert len(chunks) < 100  # bounded: one event per released piece
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def reference(guard, image, flagger, **flag):
    """What guarded generation gives for the same request, with the same judgements."""
    flagger.reset(**flag)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    result = guard.generate([image], conversation, max_new_tokens=MAX_TOKENS, do_sample=False)
    flagger.reset(**flag)
    return result


def adapters_release(guard, image, chunks, flagger, **flag):
    """What the LangChain adapters (``guarded()``'s :class:`AnswerCheck`) release of an answer streamed in
    ``chunks`` to the same request under the same policy and judgements: (text released, texts judged)."""
    flagger.reset(**flag)
    check = AnswerCheck(guard, GuardRequest.of([image], QUESTION), on_block=None)
    released = []
    for piece in chunks:
        released += check.push(piece)
        if check.stopped:
            break
    with contextlib.suppress(ResponseBlocked):  # a blocked answer: what was released before the stop
        released += check.finish()
    judged = list(flagger.judged)
    flagger.reset(**flag)
    return "".join(released), judged


# ---------------------------------------------------------------------------------------------- local mode


def test_local_safe_answer_comes_whole_with_its_verdict(local_answers, answer_guard, flags, images):
    want = reference(answer_guard, images[0], flags)
    got = ask(local_answers, images[0])
    assert got.choices[0].message.content == want.text and got.choices[0].finish_reason == "length"
    assert got.psaguard_response["action"] == "allow" and got.psaguard_response["tokens_judged"] == MAX_TOKENS
    chunks, text = streamed(local_answers, images[0])
    assert text == want.text and chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].psaguard_response["action"] == "allow"


def test_local_flagged_answer_ends_with_the_replacement_and_content_filter(local_answers, answer_guard, flags, images):
    flag = {"flags": lambda call, text: call >= 3}  # the 3rd judgement (12 tokens) flags the answer
    full = reference(answer_guard, images[0], flags).text  # the answer nobody stopped
    want = reference(answer_guard, images[0], flags, **flag)
    assert want.stopped and want.stopped_at == 3 * INTERVAL and want.released_tokens == 2 * INTERVAL - WINDOW
    got = ask(local_answers, images[0])
    flagged_text = flags.judged[2]
    content = got.choices[0].message.content
    assert got.choices[0].finish_reason == "content_filter" and content == want.text
    prefix = content.removesuffix(SORRY)
    assert content.endswith(SORRY) and prefix and full.startswith(prefix) and len(prefix) < len(flagged_text)
    assert got.psaguard_response["action"] == "replace" and got.psaguard_response["harmful"]

    flags.reset(**flag)
    chunks, text = streamed(local_answers, images[0])
    assert text == want.text and chunks[-1].choices[0].finish_reason == "content_filter"
    assert chunks[-1].psaguard_response["action"] == "replace"
    assert [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content][-1] == SORRY
    assert flags.judged[-1] == flagged_text  # generation stopped at the flag: nothing judged after it


def test_local_block_is_a_400_unstreamed_and_a_filtered_end_streamed(local_answers, answer_guard, flags, images):
    flag = {"flags": lambda call, text: call >= 2, "action": "block"}
    full = reference(answer_guard, images[0], flags).text
    flags.reset(**flag)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(local_answers, images[0])
    assert caught.value.code == "content_policy_violation"
    assert caught.value.body["psaguard_response"]["action"] == "block"
    flags.reset(**flag)
    chunks, text = streamed(local_answers, images[0])
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert chunks[-1].psaguard_response["action"] == "block"
    assert SORRY not in text and full.startswith(text) and len(text) < len(flags.judged[1])


# ---------------------------------------------------------------------------------------------- proxy mode


def test_proxy_safe_answer_is_passed_on_with_its_verdict(proxy_answers, flags, images):
    got = ask(proxy_answers, images[0])
    assert got.choices[0].message.content == "".join(WORDS) and got.choices[0].finish_reason == "stop"
    assert got.psaguard["action"] == "allow" and got.psaguard_response["action"] == "allow"
    chunks, text = streamed(proxy_answers, images[0])
    assert text == "".join(WORDS) and chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[0].psaguard["action"] == "allow" and chunks[-1].psaguard_response["action"] == "allow"
    # Judged every INTERVAL tokens (one word each) over the growing text, the last judgement covering it whole.
    judged = flags.judged[-3:]
    assert judged == ["".join(WORDS[:4]), "".join(WORDS[:8]), "".join(WORDS)]


def test_a_streamed_proxy_answer_costs_one_vision_pass_and_releases_as_the_adapters_do(
    proxy_answers, answer_guard, answer, flags, images
):
    chunks = [*WORDS[:6], BAD, *WORDS[6:]]
    answer(chunks)
    flag = {"flags": lambda call, text: BAD in text}
    want, want_judged = adapters_release(answer_guard, images[0], chunks, flags, **flag)
    assert want == "".join(WORDS[:1]) and want_judged == ["".join(WORDS[:4]), "".join(chunks[:8])]
    with count_calls(answer_guard.backbone.vision_tower) as tower:
        _, text = streamed(proxy_answers, images[0])
    assert text == want + SORRY and flags.judged == want_judged
    # One pass judges the request, one the answer: the answer's second judgement reuses its features.
    assert len(tower) == 2

    flags.reset()
    answer(WORDS)
    want, want_judged = adapters_release(answer_guard, images[0], WORDS, flags)
    with count_calls(answer_guard.backbone.vision_tower) as tower:
        _, text = streamed(proxy_answers, images[0])
    assert text == want == "".join(WORDS) and flags.judged == want_judged and len(want_judged) == 3
    assert len(tower) == 2
    with count_calls(answer_guard.backbone.vision_tower) as tower:
        assert ask(proxy_answers, images[0]).choices[0].message.content == "".join(WORDS)
    assert len(tower) == 2


def test_proxy_flagged_answer_is_replaced_before_the_client_sees_it(proxy_answers, answer, flags, images):
    answer([*WORDS[:6], BAD, *WORDS[6:]])  # the 7th chunk is the harmful one
    flags.reset(flags=lambda call, text: BAD in text)
    got = ask(proxy_answers, images[0])
    assert got.choices[0].message.content == SORRY and got.choices[0].finish_reason == "content_filter"
    assert got.psaguard_response["action"] == "replace"

    chunks, text = streamed(proxy_answers, images[0])
    # Judged safe at 4 tokens (released: up to the end of token 4 - WINDOW = 2, "w1", so the chunk "w0 " whole),
    # flagged at 8: nothing past the release.
    assert text == "".join(WORDS[:1]) + SORRY and BAD not in text and "w1" not in text
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert chunks[-1].psaguard_response["action"] == "replace" and chunks[0].psaguard["action"] == "allow"


def test_proxy_judges_the_tail_before_releasing_it(proxy_answers, answer, flags, images):
    answer([*WORDS[:9], BAD])  # 10 tokens: judged at 4 and 8, then the tail (flagged) at the end
    flags.reset(flags=lambda call, text: BAD in text)
    chunks, text = streamed(proxy_answers, images[0])
    # Released at 8 tokens up to the end of "w5" (8 - WINDOW tokens): the chunks before it whole.
    assert text == "".join(WORDS[: 8 - WINDOW - 1]) + SORRY and chunks[-1].choices[0].finish_reason == "content_filter"
    assert flags.judged[-1] == "".join(WORDS[:9]) + BAD


def test_a_broken_upstream_stream_drops_the_held_text(proxy_answers, answer, flags, images):
    answer([*WORDS[:6], BREAK])  # judged safe at 4 tokens ("w0 " released), the rest held when the stream breaks
    stream = ask(proxy_answers, images[0], stream=True)
    received = []
    with pytest.raises(openai.APIError, match="upstream stream failed"):
        for piece in stream:
            received.append(piece.choices[0].delta.content or "")
    assert "".join(received) == "".join(WORDS[:1])


def test_a_guard_error_on_the_answer_fails_closed(proxy_answers, flags, images):
    def fail_from(first):
        def flags_(call, text):
            if call >= first:
                raise GuardInternalError("the response head failed")
            return False

        return {"flags": flags_}

    flags.reset(**fail_from(1))
    with pytest.raises(openai.InternalServerError):
        ask(proxy_answers, images[0])  # unstreamed: nothing of the answer is sent
    flags.reset(**fail_from(2))  # the 2nd judgement (8 tokens) fails: the text held since the 1st is dropped
    received = []
    with pytest.raises(openai.APIError, match="response head failed"):
        for piece in ask(proxy_answers, images[0], stream=True):
            received.append(piece.choices[0].delta.content or "")
    assert "".join(received) == "".join(WORDS[:1]) and len(flags.judged) == 2


def test_proxy_block_is_a_400_unstreamed_and_a_filtered_end_streamed(proxy_answers, answer, flags, images):
    answer([BAD, *WORDS])
    flags.reset(flags=lambda call, text: BAD in text, action="block")
    with pytest.raises(openai.BadRequestError) as caught:
        ask(proxy_answers, images[0])
    assert caught.value.code == "content_policy_violation"
    chunks, text = streamed(proxy_answers, images[0])
    assert text == "" and chunks[-1].choices[0].finish_reason == "content_filter"
    assert chunks[-1].psaguard_response["action"] == "block" and chunks[0].psaguard["action"] == "allow"


def test_langchain_chat_openai_streams_the_filtered_answer(proxy_answers, answer, flags, images):
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    answer([*WORDS[:6], BAD, *WORDS[6:]])
    flags.reset(flags=lambda call, text: BAD in text)
    model = chat_openai(base_url=proxy_answers.base_url, api_key="unused", model="tiny", max_retries=0)
    merged = None
    for piece in model.stream([image_message(images[0], QUESTION)]):
        merged = piece if merged is None else merged + piece
    assert merged.content == "".join(WORDS[:1]) + SORRY and BAD not in merged.content
    assert merged.response_metadata["finish_reason"] == "content_filter"


# ---------------------------------------------------------------------------------------------- fail closed


@pytest.fixture(scope="module")
def headless_guards(tmp_path_factory):
    """The demo guard saved without its response head (as guards saved before there was one), loaded whole and
    classifier-only."""
    model_dir = demo_model_dir()
    saved = resave_guard(
        model_dir, demo_guard_dir(), tmp_path_factory.mktemp("headless") / "guard", response_head=False
    )
    return load_guard(saved, model_dir, classifier_only=False), load_guard(saved, model_dir, classifier_only=True)


def test_a_guard_without_a_response_head_fails_answered_requests_closed(headless_guards, requests_by_action):
    local_guard, classifier_guard = headless_guards
    assert not local_guard.classifier.has_response_head
    message = image_message(*requests_by_action["allow"])  # allowed: the model would answer
    with BackgroundServer(create_app(local_guard, ServeConfig())) as server:
        with pytest.raises(openai.InternalServerError) as caught:
            openai_client(server).chat.completions.create(model="m", messages=[message], max_tokens=4)
        assert caught.value.code == "response_head_missing" and "--no-answer-checks" in caught.value.message
        with pytest.raises(openai.InternalServerError):
            openai_client(server).chat.completions.create(model="m", messages=[message], max_tokens=4, stream=True)
        conversation = [message, {"role": "assistant", "content": "an answer"}]
        with pytest.raises(openai.InternalServerError):
            openai_client(server).moderations.create(input=conversation)
    config = ServeConfig(mode="proxy", upstream="http://127.0.0.1:9/v1", upstream_timeout_s=5)
    with BackgroundServer(create_app(classifier_guard, config)) as server:
        with pytest.raises(openai.InternalServerError) as caught:
            openai_client(server).chat.completions.create(model="m", messages=[message], max_tokens=4)
        assert caught.value.code == "response_head_missing"  # before the (unreachable) upstream is called
    with BackgroundServer(create_app(classifier_guard, ServeConfig(check_answers=False))) as server:
        with pytest.raises(openai.BadRequestError) as caught:
            openai_client(server).moderations.create(input=conversation)
        assert caught.value.code == "answer_checks_off"


def test_a_policy_without_the_monitor_conflicts_with_answer_checks(answer_guard):
    policy = answer_guard.policy.model_copy(update={"response": ResponsePolicy(monitor=False)})
    with pytest.raises(ConfigError, match=r"response\.monitor: false"):
        create_app(answer_guard.with_policy(policy), ServeConfig())
    create_app(answer_guard.with_policy(policy), ServeConfig(check_answers=False))


# ---------------------------------------------------------------------------------------------- moderations


def test_moderation_judges_a_conversation_ending_with_the_answer(local_answers, answer_guard, flags, images):
    client = openai_client(local_answers)
    request = image_message(images[0], QUESTION)
    flags.reset(flags=lambda call, text: BAD in text)
    flagged = client.moderations.create(input=[request, {"role": "assistant", "content": "sure: " + BAD}])
    result = flagged.results[0]
    assert result.flagged and result.categories.model_extra[category_name("privacy")] is True
    assert result.psaguard_response["action"] == "replace" and result.psaguard_response["harmful"]
    assert result.psaguard["action"] == "allow"  # the request itself was fine
    assert flags.judged[-1] == "sure: " + BAD

    safe = client.moderations.create(input=[request, {"role": "assistant", "content": "a cat on a mat"}])
    want = answer_guard.classify_response(images[0], QUESTION, "a cat on a mat")
    result = safe.results[0]
    assert not result.flagged and not any(result.categories.model_extra.values())
    assert result.psaguard_response["harm_prob"] == pytest.approx(want.harm_prob, abs=1e-5)
    assert result.category_applied_input_types.model_extra[category_name("privacy")] == ["text", "image"]

    as_request = client.moderations.create(input=[request]).results[0]  # ends with the user: a request
    assert as_request.model_extra.get("psaguard_response") is None
    assert as_request.psaguard["rule"] == answer_guard.classify(images[0], QUESTION).rule


def test_moderation_conversations_are_checked_like_chats(local_answers, images):
    client = openai_client(local_answers)
    answer_with_image = {"role": "assistant", "content": image_message(images[0], "x")["content"]}
    with pytest.raises(openai.BadRequestError):
        client.moderations.create(input=[image_message(images[0], QUESTION), answer_with_image])
    with pytest.raises(openai.BadRequestError) as caught:
        client.moderations.create(input=[{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}])
    assert caught.value.code == "invalid_prompt"
    with pytest.raises(openai.BadRequestError):
        client.moderations.create(input=[{"role": "user", "content": "hi", "extra": 1}])
