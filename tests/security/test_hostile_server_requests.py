"""Fuzzing the server's request parsing and image-URL allow-list (no server needed: both are pure functions).

Whatever bytes a body holds, ``parse_body`` answers a validated request, an ``ApiError`` with a 4xx status or
a pydantic ``ValidationError`` (a 400), never another exception; whatever a URL's path holds, it is never
under an allow-listed prefix once it has a dot segment or an encoded separator.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from psaguard.serving.bodies import count_chat, count_moderation, parse_body
from psaguard.serving.config import LimitsConfig
from psaguard.serving.inputs import url_under
from psaguard.serving.protocol import ApiError, ChatRequest, ModerationRequest

FUZZ = settings.get_profile(f"psaguard-{os.environ.get('PSAGUARD_FUZZ', 'ci')}")
LIMITS = LimitsConfig(max_json_items=64, max_prompt_chars=64, max_messages=4, max_content_parts=4)
PREFIX = "http://images.example:8080/public/"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=40,
)
chat_like = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "x"]), "content": json_values}))},
    optional={"model": json_values, "stream": json_values},
)


def judged(data: bytes) -> None:
    for model, count in ((ChatRequest, count_chat), (ModerationRequest, count_moderation)):
        try:
            parse_body(data, LIMITS, model, count)
        except ApiError as err:
            assert 400 <= err.status < 500 and err.code
        except ValidationError:
            pass


@FUZZ
@given(body=st.one_of(chat_like, json_values), junk=st.binary(max_size=16), cut=st.integers(0, 64))
def test_any_body_is_parsed_or_refused_with_a_4xx(body, junk, cut):
    data = json.dumps(body).encode()
    judged(data)
    judged(data[: len(data) - cut] + junk)  # truncated and with random bytes appended


@FUZZ
@given(escape=st.sampled_from(["\\ud800", "\\udfff", "\\uDBFF", "\\ud83d\\u0041"]), where=st.integers(0, 2))
def test_lone_surrogates_anywhere_are_refused(escape, where):
    bodies = (
        '{"messages": [{"role": "user", "content": "a%sb"}]}',
        '{"messages": [{"role": "user", "content": "hi"}], "model": "%s"}',
        '{"messages": [{"role": "user", "content": "hi"}], "extra": {"k%s": 1}}',
    )
    with pytest.raises(ApiError) as caught:
        parse_body((bodies[where] % escape).encode(), LIMITS, ChatRequest, count_chat)
    assert caught.value.code == "invalid_json"


@FUZZ
@given(
    before=st.lists(st.sampled_from(["a", "img", "x.png"]), max_size=3),
    dots=st.sampled_from(["..", ".", "%2e%2e", "%2E.", ".%2e", "..%2f", "..%5c", "..\\"]),
    after=st.lists(st.sampled_from(["img.png", "public", "a"]), min_size=1, max_size=3),
)
def test_dot_segments_and_encoded_separators_never_pass_the_allow_list(before, dots, after):
    url = PREFIX + "/".join([*before, dots, *after])
    assert not url_under(url, PREFIX)
    assert url_under(PREFIX + "/".join([*before, *after]), PREFIX)
