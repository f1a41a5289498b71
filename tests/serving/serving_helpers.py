"""Helpers of the serving tests: free ports, images as data URLs, OpenAI messages, the openai client.

(Not in conftest.py: several test folders have a conftest module, so ``from conftest import`` is ambiguous.)
"""

from __future__ import annotations

import base64
import io
import socket

import openai
from PIL import Image

from psaguard.serving import BackgroundServer


def free_port() -> int:
    """A port free on 127.0.0.1 now (for servers started in another process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def data_url(image: Image.Image) -> str:
    """``image`` as a PNG data URL, as OpenAI clients send images."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def openai_client(server: BackgroundServer, api_key: str = "unused") -> openai.OpenAI:
    """The official client pointed at ``server`` (no retries, so every failure shows)."""
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=120)


def image_message(image: Image.Image, text: str) -> dict:
    """One OpenAI user message with an image part and a text part."""
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": text}],
    }
