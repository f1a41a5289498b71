"""Parsing LangChain inputs into guard requests: image blocks of every supported form, fail-closed refusals."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate

from psaguard import InvalidImageError, InvalidInputError, RemoteImageError, load_image
from psaguard.adapters import GuardRunnable, request_from_input, request_from_messages
from psaguard.adapters.messages import decode_image_block
from psaguard.policy import NO_IMAGE_RULE


def _pixels(value) -> np.ndarray:
    return np.asarray(load_image(value))


def test_data_url_and_base64_blocks_decode_to_the_same_pixels(images, png_b64):
    expected = np.asarray(images[0])
    blocks = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64}"}},
        {"type": "image_url", "image_url": f"data:image/png;base64,{png_b64}"},
        {"type": "image", "base64": png_b64, "mime_type": "image/png"},
        {"type": "image", "source_type": "base64", "data": png_b64, "mime_type": "image/png"},
        {"type": "image", "url": f"data:image/png;base64,{png_b64}"},
    ]
    for block in blocks:
        assert np.array_equal(_pixels(decode_image_block(block)), expected), block


def test_local_paths_and_file_urls_are_read(saved_image, images):
    expected = np.asarray(images[1])
    for url in (saved_image, f"file://{saved_image}"):
        for block in ({"type": "image", "url": url}, {"type": "image_url", "image_url": {"url": url}}):
            assert np.array_equal(_pixels(decode_image_block(block)), expected)


@pytest.mark.parametrize(
    "block",
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image", "url": "http://example.com/cat.png"},
        {"type": "image", "file_id": "file-abc"},
        {"type": "image", "url": "file://otherhost/tmp/cat.png"},
    ],
)
def test_remote_images_are_refused_with_a_typed_error(block):
    with pytest.raises(RemoteImageError):
        decode_image_block(block)


def test_malformed_and_unjudgeable_blocks_fail_closed(saved_image):
    with pytest.raises(InvalidImageError, match="base64"):
        decode_image_block({"type": "image", "base64": "not base64 !!"})
    with pytest.raises(InvalidImageError, match="not base64-encoded"):
        decode_image_block({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}})
    with pytest.raises(InvalidImageError, match="no 'base64' or 'url'"):
        decode_image_block({"type": "image", "mime_type": "image/png"})
    with pytest.raises(InvalidImageError, match="allow_local_files"):
        decode_image_block({"type": "image", "url": saved_image}, allow_local_files=False)
    with pytest.raises(InvalidInputError, match="audio"):
        decode_image_block({"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"})
    assert decode_image_block({"type": "text", "text": "hi"}) is None


def test_messages_give_images_in_order_all_user_text_and_a_chat_conversation(image_message_content, saved_image):
    messages = [
        SystemMessage(content="be helpful"),
        HumanMessage(content=image_message_content),
        AIMessage(content="a picture"),
        HumanMessage(content=[{"type": "text", "text": "and this one ?"}, {"type": "image", "url": saved_image}]),
    ]
    request = request_from_messages(messages)
    assert len(request.images) == 2
    assert isinstance(request.images[0], bytes) and str(request.images[1]) == saved_image
    # Every turn the model reads is judged, not only the user's.
    assert request.prompt == "be helpful\nwhat is in this picture ?\na picture\nand this one ?"
    assert [m["role"] for m in request.conversation] == ["system", "user", "assistant", "user"]
    assert request.conversation[1]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "what is in this picture ?"},
    ]
    assert request.conversation[3]["content"][1] == {"type": "image"}


def test_dicts_strings_prompt_values_and_tuples_are_accepted(images, png_b64):
    from_dict = request_from_input({"image": [images[0], images[1]], "prompt": "describe"})
    assert len(from_dict.images) == 2 and from_dict.prompt == "describe"
    assert from_dict.conversation[0]["content"][:2] == [{"type": "image"}, {"type": "image"}]

    text_only = request_from_input("hello there")
    assert text_only.images == () and text_only.prompt == "hello there"

    template = ChatPromptTemplate.from_messages(
        [("user", [{"type": "image_url", "image_url": {"url": "{image_url}"}}, {"type": "text", "text": "{q}"}])]
    )
    value = template.invoke({"image_url": f"data:image/png;base64,{png_b64}", "q": "what ?"})
    from_template = request_from_input(value)
    assert len(from_template.images) == 1 and from_template.prompt == "what ?"

    assert request_from_input([("human", "hi"), ("ai", "yo")]).prompt == "hi\nyo"
    generic = request_from_messages([ChatMessage(role="user", content="a"), ChatMessage(role="tool", content="b")])
    assert generic.prompt == "a\nb" and [m["role"] for m in generic.conversation] == ["user", "tool"]
    with pytest.raises(InvalidInputError, match="role"):
        request_from_messages([ChatMessage(role="user", content="a"), ChatMessage(role="critic", content="b")])


def test_unsupported_inputs_raise_invalid_input():
    with pytest.raises(InvalidInputError):
        request_from_input(42)
    with pytest.raises(InvalidInputError):
        request_from_input({"image": None, "prompt": 3})
    with pytest.raises(InvalidInputError):
        request_from_input([{"no": "role"}])


def test_raw_bytes_block_round_trip(images):
    buffer = io.BytesIO()
    images[2].save(buffer, format="JPEG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    # Base64 split over lines (as some encoders emit) still decodes.
    wrapped = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60))
    assert decode_image_block({"type": "image", "base64": wrapped}) == buffer.getvalue()


def _image_blocks(b64: str) -> list[dict]:
    """Every block shape that holds an image inline (the red-team's list in issue #13)."""
    url = f"data:image/png;base64,{b64}"
    return [
        {"type": "image", "base64": b64, "mime_type": "image/png"},
        {"type": "image", "source_type": "base64", "data": b64},
        {"type": "image", "url": url},
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "image_url", "image_url": url},
        {"type": "input_image", "image_url": url},  # OpenAI Responses API
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},  # Anthropic
        {"type": "image", "source": {"type": "url", "url": url}},
        {"type": "media", "mime_type": "image/png", "data": b64},  # older Google blocks
    ]


def test_every_inline_image_block_shape_is_decoded(png_b64):
    expected = base64.b64decode(png_b64)
    for block in _image_blocks(png_b64):
        assert decode_image_block(block) == expected, block


@pytest.mark.parametrize(
    ("block", "error"),
    [
        ({"type": "Image", "base64": "AAAA"}, InvalidInputError),  # unknown spelling: refused, not dropped
        ({"type": "tool_use", "input": {"q": "x"}}, InvalidInputError),
        ({"type": "image_file", "image_file": {"file_id": "file-1"}}, RemoteImageError),
        ({"type": "input_image", "file_id": "file-1"}, RemoteImageError),
        ({"type": "image", "source": {"type": "file", "file_id": "file-1"}}, RemoteImageError),
        ({"type": "image", "file_id": "file-1"}, RemoteImageError),
        ({"type": "image", "source": {"type": "weird"}}, InvalidImageError),
        ({"type": "media", "mime_type": "video/mp4", "data": "AAAA"}, InvalidInputError),
        ({"type": "media", "mime_type": "image/png", "file_uri": "gs://b/x.png"}, RemoteImageError),
        ({"type": "text", "text": 3}, InvalidInputError),
    ],
)
def test_blocks_the_guard_cannot_judge_are_refused_never_dropped(block, error):
    with pytest.raises(error):
        request_from_messages([HumanMessage(content=[block, {"type": "text", "text": "hi"}])])
    with pytest.raises(InvalidInputError):
        decode_image_block(42)


def test_runnable_judges_every_image_block_shape_instead_of_allowing_text_only(make_guard, png_b64):
    runnable = GuardRunnable(make_guard("refuse"))  # text-only requests are allowed by default
    for block in _image_blocks(png_b64):
        verdict = runnable.invoke([HumanMessage(content=[block, {"type": "text", "text": "hi"}])])
        assert (verdict.action, verdict.rule) != ("allow", NO_IMAGE_RULE), block
        assert verdict.action == "refuse"
