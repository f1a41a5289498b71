"""The training JSONL row as written on disk: :class:`SampleRow` and its conversation :class:`Turn`.

The two shapes a row may take, its response labels and the checks on each are described in
:mod:`psaguard.training.data`, which reads files of these rows into examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

__all__ = ["IMAGE_PLACEHOLDER", "MAX_IMAGES_PER_ROW", "SampleRow", "Turn", "strip_placeholder"]

IMAGE_PLACEHOLDER = "<image>"
"""Marks the image in the paper's conversations; not allowed in plain ``prompt`` rows."""

_SPLIT = "<split>"  # the paper's way of putting two images side by side: "a.jpg<split>b.jpg"
_USER_ROLES = ("USER", "human", "user")
MAX_IMAGES_PER_ROW = 16
"""Most images one row may place side by side (the paper places two)."""


class Turn(BaseModel):
    """One turn of a conversation in the paper's (LLaVA) format."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    role: Literal["USER", "human", "user", "ASSISTANT", "gpt", "assistant"] = Field(
        alias="from", description="Who speaks: USER/human/user or ASSISTANT/gpt/assistant."
    )
    value: StrictStr = Field(description="The text; the first user turn holds the '<image>' placeholder once.")

    @property
    def is_user(self) -> bool:
        return self.role in _USER_ROLES


class SampleRow(BaseModel):
    """One JSONL row as written on disk (before labels are resolved against a taxonomy)."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = Field(None, description="Optional sample id, kept for reports.")
    image: StrictStr | list[StrictStr] = Field(
        description="Image path(s) relative to the image root; several are placed side by side "
        "(the paper's 'a.jpg<split>b.jpg' is read the same way)."
    )
    prompt: StrictStr | None = Field(None, description="User text without '<image>'.")
    response: StrictStr | None = Field(
        None, description="Target answer when 'prompt' is used; None for a request-only row (no Stage II)."
    )
    conversations: list[Turn] | None = Field(
        None, description="Paper format: alternating user/assistant turns, starting with the user."
    )
    safe_level: StrictInt = Field(ge=0, description="Risk level id (0 = safe to answer).")
    safe_type: StrictInt | StrictStr = Field(description="Risk type id or taxonomy code, e.g. 4 or 'privacy'.")
    source_label: StrictStr | None = Field(
        None, description="The source data set's own label, verbatim (e.g. 'deception/disinformation'); not trained on."
    )
    response_harmful: StrictBool | None = Field(
        None, description="Whether the (last) answer is harmful; trains the response head. Optional."
    )
    response_level: StrictInt | None = Field(
        None, ge=0, description="Risk level id of the answer (0 when harmless); required for a harmful answer."
    )
    response_type: StrictInt | StrictStr | None = Field(
        None, description="Risk type id or code of the answer; required for a harmful answer, else the safe type."
    )
    meta: dict[str, Any] | None = Field(None, description="Free-form metadata, ignored by training.")

    @model_validator(mode="after")
    def _check_response_labels(self) -> SampleRow:
        if (self.response_harmful, self.response_level, self.response_type) == (None, None, None):
            return self
        if self.prompt is not None and self.response is None:
            raise ValueError("response labels need an answer: give 'response'")
        harmful = _answer_is_harmful(self.response_harmful, self.response_level)
        if harmful and (self.response_level is None or self.response_type is None):
            raise ValueError("a harmful answer needs response_level (>= 1) and response_type")
        return self

    @model_validator(mode="after")
    def _check_shape(self) -> SampleRow:
        _check_image_paths(self.image_paths)
        if (self.prompt is None) == (self.conversations is None):
            raise ValueError("give exactly one of 'prompt' (with 'response') or 'conversations'")
        if self.prompt is not None:
            _check_prompt(self.prompt, self.response)
            return self
        if self.response is not None:
            raise ValueError("'response' is only used with 'prompt'; put the answer in 'conversations'")
        _check_conversation(self.conversations or [])
        return self

    @property
    def image_paths(self) -> list[str]:
        paths = [self.image] if isinstance(self.image, str) else list(self.image)
        return [part for path in paths for part in path.split(_SPLIT)]

    def turns(self) -> tuple[tuple[str, str], ...]:
        """(user, assistant) pairs, with the image placeholder removed from the user text."""
        if self.prompt is not None:
            return ((self.prompt.strip(), (self.response or "").strip()),)
        turns = self.conversations or []
        return tuple((strip_placeholder(turns[i].value), turns[i + 1].value.strip()) for i in range(0, len(turns), 2))


def _answer_is_harmful(flag: bool | None, level: int | None) -> bool:
    """Whether the answer is harmful by ``response_harmful`` and ``response_level``, checked to agree."""
    if level is None:
        if flag is None:
            raise ValueError("give response_harmful or response_level with response_type")
        return flag
    if flag is not None and flag != (level > 0):
        raise ValueError("response_harmful disagrees with response_level (harmful means level >= 1)")
    return level > 0


def _check_image_paths(paths: Sequence[str]) -> None:
    if not paths or any(not p.strip() for p in paths):
        raise ValueError("'image' must name at least one non-empty path")
    if len(paths) > MAX_IMAGES_PER_ROW:
        raise ValueError(f"'image' names {len(paths)} images; a row places at most {MAX_IMAGES_PER_ROW}")


def _check_prompt(prompt: str, response: str | None) -> None:
    if response is not None and not response.strip():
        raise ValueError("'response' is empty; leave it out for a request-only row")
    if IMAGE_PLACEHOLDER in prompt:
        raise ValueError("'prompt' must not contain '<image>'; the image is placed by the chat template")
    if not prompt.strip():
        raise ValueError("'prompt' is empty")


def _check_conversation(turns: Sequence[Turn]) -> None:
    if len(turns) < 2 or len(turns) % 2:
        raise ValueError("'conversations' needs user/assistant pairs")
    for index, turn in enumerate(turns):
        _check_turn(index, turn)
    placeholders = [turn.value.count(IMAGE_PLACEHOLDER) for turn in turns]
    if placeholders[0] != 1 or sum(placeholders) != 1:
        raise ValueError("'<image>' must appear exactly once, in the first user turn")


def _check_turn(index: int, turn: Turn) -> None:
    """Turns alternate user, assistant, ...; each has text besides the image placeholder."""
    user_turn = index % 2 == 0
    if turn.is_user != user_turn:
        raise ValueError(f"turn {index} should be from the {'user' if user_turn else 'assistant'}")
    if not turn.value.strip() or (turn.is_user and not strip_placeholder(turn.value)):
        raise ValueError(f"turn {index} has no text")


def strip_placeholder(text: str) -> str:
    """``text`` without the image placeholder, stripped."""
    return text.replace(IMAGE_PLACEHOLDER, " ").strip()
