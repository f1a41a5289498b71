"""Fixtures for the LangChain adapter tests: guards forced to one action, image blocks, a recording chat model."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("langchain_core")

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from psaguard import GuardPolicy, HeadConfig, ResponsePolicy, SafetyGuard, SafetyGuardConfig
from psaguard.verdict import Action


def force_verdict(guard: SafetyGuard, level: int, type_code: str) -> SafetyGuard:
    """Make the untrained head predict ``level`` and ``type_code`` for every request (zero weights, one-hot bias)."""
    type_id = guard.config.taxonomy.type_by_code(type_code).id
    head = guard.modules.head
    with torch.no_grad():
        for linear, index in ((head.level_head, level), (head.type_head, type_id)):
            linear.weight.zero_()
            linear.bias.zero_()
            linear.bias[index] = 20.0
    return guard


def force_response(guard: SafetyGuard, level: int, type_code: str = "privacy") -> SafetyGuard:
    """Make the response head predict ``level`` (type ``type_code``; the safe type at level 0) for every answer."""
    taxonomy = guard.config.taxonomy
    type_id = taxonomy.safe_type_id if level == 0 else taxonomy.type_by_code(type_code).id
    head = guard.modules.response_head
    with torch.no_grad():  # biases far larger than the random weights' logits pin the verdicts
        for linear, index in ((head.level_head, level), (head.type_head, type_id)):
            linear.bias.fill_(-40.0)
            linear.bias[index] = 40.0
    return guard


@pytest.fixture
def make_guard(tiny_model, tiny_processor) -> Callable[[Action], SafetyGuard]:
    """``make_guard(action)``: a guard whose policy answers every image request with ``action``.

    'allow' predicts the safe type at level 0; the other actions predict 'privacy' at level 3 and map level 3
    to the action through ``GuardPolicy.level_actions``. Its response head lets every answer through.
    """

    def make(action: Action) -> SafetyGuard:
        # Answers judged every 2 tokens, 1 held back: a short answer still streams in several chunks.
        response = ResponsePolicy(interval=2, window=1)
        policy = GuardPolicy(level_actions={1: "hint", 2: "hint", 3: action}, response=response)
        torch.manual_seed(0)  # the random llm_tokens shape the answers: the same whatever ran before
        config = SafetyGuardConfig(policy=policy, head=HeadConfig(response_head=True))
        guard = force_response(SafetyGuard.attach(tiny_model, tiny_processor, config), 0)
        return force_verdict(guard, 0, "safe") if action == "allow" else force_verdict(guard, 3, "privacy")

    return make


@pytest.fixture
def png_b64(images) -> str:
    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def image_message_content(png_b64) -> list[dict[str, Any]]:
    """A user content list: one image (OpenAI-style data URL block) and a question."""
    return [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64}"}},
        {"type": "text", "text": "what is in this picture ?"},
    ]


class RecordingChatModel(BaseChatModel):
    """Stands in for any (e.g. hosted) chat model: records what it receives, answers 'ans' 'wer'."""

    calls: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.calls.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="answer"))])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        self.calls.append(list(messages))
        for piece in ("ans", "wer"):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))


@pytest.fixture
def recorder() -> RecordingChatModel:
    return RecordingChatModel()


@pytest.fixture
def saved_image(tmp_path, images) -> str:
    path = tmp_path / "picture.png"
    images[1].save(path)
    return str(path)
