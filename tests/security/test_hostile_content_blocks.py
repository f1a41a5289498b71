"""Fuzzing LangChain content blocks: a block decodes to exactly one image, is text, passes through as a block
that cannot show an image, or is refused with a typed error; a block holding two image payloads never
decodes."""

from __future__ import annotations

import base64
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("langchain_core")

from psaguard.adapters.messages import IMAGE_PAYLOAD_KEYS, decode_image_block
from psaguard.errors import InvalidInputError

FUZZ = settings.get_profile(f"psaguard-{os.environ.get('PSAGUARD_FUZZ', 'ci')}")


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PNG = _png()
DATA_URL = f"data:image/png;base64,{PNG}"
PAYLOADS = {
    "base64": st.just(PNG),
    "data": st.just(PNG),
    "url": st.sampled_from([DATA_URL, "https://images.example.com/x.png", "file:///tmp/x.png"]),
    "source": st.sampled_from(
        [{"type": "base64", "media_type": "image/png", "data": PNG}, {"type": "url", "url": DATA_URL}]
    ),
    "image_url": st.sampled_from([DATA_URL, {"url": DATA_URL}]),
    "file_id": st.just("file-1"),
    "file_uri": st.just("gs://bucket/x.png"),
}
BLOCK_TYPES = ["image", "image_url", "input_image", "media", "text", "reasoning", "tool_call", "non_standard"]
# JSON-like values, odd ones included: what a provider payload or a hostile client may put anywhere.
VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(["image/png", "base64", "url", "id", "hi", "image", DATA_URL]),
        st.binary(max_size=4),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["type", "url", "mime_type", "value", "data", "x"]), inner, max_size=3),
    ),
    max_leaves=8,
)
EXTRA = st.dictionaries(
    st.sampled_from(["mime_type", "source_type", "detail", "id", "extras", "text", "value", "output"]),
    VALUES,
    max_size=3,
)
KINDS = st.one_of(st.sampled_from(BLOCK_TYPES), st.sampled_from(BLOCK_TYPES).map(lambda kind: [kind]), VALUES)


@FUZZ
@given(
    kind=st.sampled_from(BLOCK_TYPES),
    keys=st.lists(st.sampled_from(IMAGE_PAYLOAD_KEYS), min_size=2, max_size=4, unique=True),
    extra=EXTRA,
    data=st.data(),
)
def test_a_block_with_two_image_payloads_never_decodes(kind, keys, extra, data) -> None:
    block = {**extra, **{key: data.draw(PAYLOADS[key]) for key in keys}, "type": kind}
    if kind in ("tool_call", "non_standard"):
        return  # not image or text blocks: payload keys there are arguments, checked by the next test
    with pytest.raises(InvalidInputError):  # InvalidImageError and RemoteImageError are subclasses
        decode_image_block(block, allow_local_files=False)


@FUZZ
@given(
    kind=KINDS,
    keys=st.lists(st.sampled_from(IMAGE_PAYLOAD_KEYS), max_size=3, unique=True),
    extra=EXTRA,
    data=st.data(),
)
def test_any_block_is_one_image_text_a_pass_through_or_a_typed_error(kind, keys, extra, data) -> None:
    block = {**extra, **{key: data.draw(PAYLOADS[key]) for key in keys}, "type": kind}
    try:
        image = decode_image_block(block, allow_local_files=False)
    except InvalidInputError:
        return
    if image is None:
        assert kind in ("text", "reasoning", "tool_call", "non_standard")
    else:
        assert image == base64.b64decode(PNG) and kind in ("image", "image_url", "input_image", "media")
        payloads = [key for key in IMAGE_PAYLOAD_KEYS if block.get(key) is not None]
        assert len(payloads) == 1, block
