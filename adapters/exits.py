"""The exits of a stopped or hinted request, shared by :func:`~psaguard.adapters.gate.guarded` and the agent
middleware: which exit a verdict takes, the refusal ``AIMessage``, the hinted system message, and the input with
its risky user content replaced by the refusal notice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.utils import convert_to_messages
from langchain_core.prompt_values import ChatPromptValue, PromptValue

from psaguard.adapters.messages import IMAGE_BLOCK_TYPES
from psaguard.adapters.verdicts import OnBlock, verdict_metadata
from psaguard.policy import refusal_text
from psaguard.verdict import SafetyVerdict

__all__ = ["apply_hint", "exit_for", "hinted_system_message", "refusal_message", "replace_risky"]


def exit_for(verdict: SafetyVerdict, on_block: OnBlock | None) -> OnBlock:
    """The exit of a refused or blocked verdict: the caller's choice, else the policy's action."""
    if on_block is not None:
        return on_block
    return "error" if verdict.action == "block" else "end"


def refusal_message(verdict: SafetyVerdict) -> AIMessage:
    """The ``AIMessage`` a stopped request ends with; the verdict is in ``response_metadata['psaguard']``."""
    return AIMessage(
        content=refusal_text(verdict),
        response_metadata={"psaguard": verdict_metadata(verdict, generated=False)},
    )


def apply_hint(value: Any, hint: str) -> Any:
    """``value`` with ``hint`` prepended to its system message (dict inputs: to the prompt)."""
    if isinstance(value, Mapping) and "prompt" in value:
        return {**value, "prompt": f"{hint}\n\n{value['prompt']}"}
    messages = _as_messages(value)
    if messages and isinstance(messages[0], SystemMessage):
        messages = [hinted_system_message(messages[0], hint), *messages[1:]]
    else:
        messages = [hinted_system_message(None, hint), *messages]
    return ChatPromptValue(messages=messages) if isinstance(value, PromptValue) else messages


def hinted_system_message(system: SystemMessage | None, hint: str) -> SystemMessage:
    """``system`` with ``hint`` in front (a new system message holding the hint when there is none)."""
    if system is None:
        return SystemMessage(content=hint)
    if isinstance(system.content, str):
        return system.model_copy(update={"content": f"{hint}\n\n{system.content}"})
    return system.model_copy(update={"content": [{"type": "text", "text": hint}, *system.content]})


def replace_risky(value: Any, notice: str) -> Any:
    """``value`` with its images removed and its latest user text replaced by ``notice``."""
    if isinstance(value, Mapping) and "prompt" in value:
        return {**value, "image": None, "prompt": notice}
    messages = _as_messages(value)
    last_user = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
    replaced = [
        message.model_copy(update={"content": notice}) if i == last_user or _has_image(message) else message
        for i, message in enumerate(messages)
    ]
    return ChatPromptValue(messages=replaced) if isinstance(value, PromptValue) else replaced


def _as_messages(value: Any) -> list[BaseMessage]:
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    return convert_to_messages(value)


def _has_image(message: BaseMessage) -> bool:
    return not isinstance(message.content, str) and any(
        isinstance(block, Mapping) and block.get("type") in IMAGE_BLOCK_TYPES for block in message.content
    )
