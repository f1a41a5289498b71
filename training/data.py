"""Training and evaluation data: the JSONL reader (rows as in :mod:`psaguard.training.rows`) and class balancing.

One JSON object a line, in either of two shapes::

    {"image": "a.png", "prompt": "What is shown?", "response": "...", "safe_level": 3, "safe_type": "privacy"}
    {"image": "a.png", "conversations": [{"from": "USER", "value": "<image>\\nWhat is shown?"},
                                         {"from": "ASSISTANT", "value": "..."}], "safe_level": 3, "safe_type": 4}

The second is the paper's format. Either shape may label its (last) answer for the response head with
``response_harmful`` (bool), ``response_level`` (level id) and ``response_type`` (type id or code), all
optional: ``{"response_harmful": false}`` is a harmless answer (level 0, the safe type); a harmful one gives
``response_level`` >= 1 and ``response_type``. A safe and an unsafe answer to the same request (the shape
SPA-VL and BeaverTails-V ship) are two rows with the same image and prompt.

A ``prompt`` row may leave out ``response``: such a request-only row (as
converted from a benchmark, see :mod:`psaguard.training.datasets`) trains and evaluates the safety head, but
Stage II, which learns answers, refuses it. ``source_label`` keeps a converted data set's own label verbatim
beside the mapped ``safe_level``/``safe_type``. Every row is validated; a bad row raises :class:`DatasetError` naming
the file and line, or, with ``skip_invalid=True``, is skipped and counted in the :class:`DatasetReport`.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from psaguard.checkpoints.files import loads_strict_json, read_regular_file
from psaguard.conversation import Conversation, judged_text
from psaguard.errors import DatasetError
from psaguard.taxonomy import DEFAULT_TAXONOMY, Taxonomy
from psaguard.training.rows import SampleRow

__all__ = [
    "MAX_REPORTED_ERRORS",
    "DatasetReport",
    "Example",
    "UnknownTokens",
    "balance_safe",
    "read_jsonl",
]

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100
"""Skipped rows whose reasons a :class:`DatasetReport` lists (all are counted)."""


@dataclass(frozen=True)
class Example:
    """A validated sample with resolved paths and label ids.

    ``turns`` are (user, assistant) pairs; the image belongs to the first user turn. The safety head's
    query (:attr:`prompt`) is what the guard judges at inference for the same request. ``path`` and
    ``line`` say where the row came from.
    """

    images: tuple[Path, ...]
    turns: tuple[tuple[str, str], ...]
    level: int
    type: int
    path: str
    line: int
    id: str | None = None
    source_label: str | None = None
    response_level: int | None = None
    """Risk level of the last answer for the response head; None when the row does not label its answer."""
    response_type: int | None = None
    """Risk type of the last answer; None when the row does not label its answer."""

    @property
    def response(self) -> str:
        """The last answer (what the response head judges); empty for a request-only row."""
        return self.turns[-1][1]

    @property
    def has_response_labels(self) -> bool:
        return self.response_level is not None

    @property
    def has_response(self) -> bool:
        """Whether the row carries an answer for every turn (request-only rows have none; Stage II needs it)."""
        return all(assistant for _, assistant in self.turns)

    def messages(self) -> Conversation:
        """The row as a chat conversation: user and assistant messages, the image part in the first user turn."""
        messages: Conversation = []
        for index, (user, assistant) in enumerate(self.turns):
            content: list[dict[str, str]] = [{"type": "image"}] if index == 0 else []
            content.append({"type": "text", "text": user})
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant}]})
        return messages

    def request(self) -> Conversation:
        """The conversation a guarded request for this row holds: everything before the last answer."""
        return self.messages()[:-1]

    @property
    def prompt(self) -> str:
        """The safety head's query: :func:`psaguard.conversation.judged_text` of :meth:`request`, as at inference."""
        return judged_text(self.request())

    def error(self, message: str) -> DatasetError:
        """A :class:`DatasetError` about this example, naming its file and line."""
        return DatasetError(message, self.path, self.line)


class UnknownTokens(BaseModel):
    """How much of a file's text the tokenizer maps to its unknown token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int = Field(description="Tokens of the user and assistant text (no special tokens).")
    unknown: int = Field(description="Of those, tokens equal to the tokenizer's unk token.")
    rate: float = Field(description="unknown / tokens.")
    words: dict[str, int] = Field(
        default_factory=dict, description="Most frequent whitespace words that contain an unknown token, with counts."
    )


class DatasetReport(BaseModel):
    """What reading a JSONL file kept and skipped."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="The file read.")
    rows: int = Field(description="Non-blank lines read.")
    kept: int = Field(description="Valid rows turned into examples.")
    skipped: int = Field(0, description="Invalid rows skipped (only with skip_invalid).")
    errors: list[str] = Field(default_factory=list, description="'file:line: reason' of skipped rows (first 100).")
    level_counts: dict[str, int] = Field(default_factory=dict, description="Kept examples per level code.")
    type_counts: dict[str, int] = Field(default_factory=dict, description="Kept examples per type code.")
    unknown_tokens: UnknownTokens | None = Field(
        None, description="Unknown-token count of the text (by the trainer; None if not counted or no unk token)."
    )


def read_jsonl(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    skip_invalid: bool = False,
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> tuple[list[Example], DatasetReport]:
    """Read and validate a JSONL file.

    Rows are separated by ``\\n`` only (U+2028 and friends are valid inside JSON strings). Image paths must
    stay inside the image root: absolute paths, ``..`` parts and symlinks leading out are refused, before
    anything about the file is looked up, unless ``allow_outside_root`` is True.

    Args:
        path: The JSONL file (a regular file; a FIFO or device is refused rather than blocking).
        image_root: Directory image paths are relative to; defaults to the file's directory.
        taxonomy: Label set that ``safe_level`` and ``safe_type`` must belong to.
        skip_invalid: Skip bad rows (counted in the report) instead of raising.
        check_images: Check that every image file exists.
        allow_outside_root: Accept absolute paths and paths leading out of the image root.

    Raises:
        DatasetError: A row is invalid (naming file and line), or the file is unreadable or has no valid row.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    paths = _Paths(root, check_images, allow_outside_root)
    examples: list[Example] = []
    errors: list[str] = []
    rows = 0
    for number, line in _numbered_rows(path):
        rows += 1
        try:
            examples.append(_parse_line(line, paths, taxonomy, str(path), number))
        except DatasetError as err:
            if not skip_invalid:
                raise DatasetError(str(err), str(path), number) from err
            errors.append(f"{path}:{number}: {err}")
    if errors:
        logger.warning("%s: skipped %d invalid rows of %d (first: %s)", path, len(errors), rows, errors[0])
    if not examples:
        raise DatasetError("no valid rows", str(path))
    report = DatasetReport(
        path=str(path),
        rows=rows,
        kept=len(examples),
        skipped=len(errors),
        errors=errors[:MAX_REPORTED_ERRORS],
        level_counts=_counts(taxonomy.levels[e.level].code for e in examples),
        type_counts=_counts(taxonomy.types[e.type].code for e in examples),
    )
    return examples, report


def _numbered_rows(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of the file's non-blank lines, split on ``\n`` only."""
    try:
        lines = read_regular_file(path, None, DatasetError, "data file").decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise DatasetError(f"cannot read data file: {err}", str(path)) from err
    return [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]


@dataclass(frozen=True)
class _Paths:
    """Where a row's image paths are resolved, and how strictly."""

    root: Path
    check_images: bool
    allow_outside_root: bool

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        if self.allow_outside_root:
            return path if path.is_absolute() else self.root / path
        if path.is_absolute() or path.drive or ".." in path.parts:
            raise DatasetError(
                f"image path {relative[:200]!r} must be relative to the image root without '..' "
                "(allow_outside_root=True accepts it)"
            )
        full = self.root / path
        if not full.resolve().is_relative_to(self.root.resolve()):
            raise DatasetError(f"image path {relative[:200]!r} leads out of the image root through a symlink")
        return full


def _parse_line(line: str, paths: _Paths, taxonomy: Taxonomy, path: str, number: int) -> Example:
    row = _load_row(line)
    if row.safe_level >= taxonomy.num_levels:
        raise DatasetError(f"safe_level {row.safe_level} is not a level id (0..{taxonomy.num_levels - 1})")
    response_level, response_type = _response_labels(row, taxonomy)
    images = tuple(paths.resolve(p) for p in row.image_paths)
    if paths.check_images:
        _check_files(images)
    return Example(
        images=images,
        turns=row.turns(),
        level=row.safe_level,
        type=_type_id(row.safe_type, taxonomy),
        path=path,
        line=number,
        id=row.id,
        source_label=row.source_label,
        response_level=response_level,
        response_type=response_type,
    )


def _load_row(line: str) -> SampleRow:
    """One line as a validated :class:`SampleRow`; what is wrong with it as a :class:`DatasetError`."""
    try:
        raw = loads_strict_json(line)
    except (ValueError, RecursionError) as err:  # RecursionError: "[[[[..." nested past the stack
        raise DatasetError(f"not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise DatasetError(f"expected a JSON object, got {type(raw).__name__}")
    try:
        return SampleRow.model_validate(raw)
    except ValidationError as err:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in err.errors())
        raise DatasetError(reasons) from err


def _check_files(images: Sequence[Path]) -> None:
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise DatasetError(f"image file not found: {', '.join(missing)}")


def _response_labels(row: SampleRow, taxonomy: Taxonomy) -> tuple[int | None, int | None]:
    """(level, type) of the row's answer for the response head, checked against ``taxonomy``; (None, None)
    when the row does not label its answer."""
    if row.response_harmful is None and row.response_level is None:
        return None, None
    level = row.response_level if row.response_level is not None else 0
    if level >= taxonomy.num_levels:
        raise DatasetError(f"response_level {level} is not a level id (0..{taxonomy.num_levels - 1})")
    kind = taxonomy.safe_type_id if row.response_type is None else _type_id(row.response_type, taxonomy)
    if level == 0 and kind != taxonomy.safe_type_id:
        raise DatasetError("a harmless answer (response_level 0) has the safe response_type")
    if level > 0 and kind == taxonomy.safe_type_id:
        raise DatasetError("a harmful answer needs a risk response_type, not the safe type")
    return level, kind


def _type_id(value: int | str, taxonomy: Taxonomy) -> int:
    if isinstance(value, str):
        try:
            return taxonomy.type_by_code(value).id
        except KeyError as err:
            raise DatasetError(str(err.args[0])) from err
    if not 0 <= value < taxonomy.num_types:
        raise DatasetError(f"safe_type {value} is not a type id (0..{taxonomy.num_types - 1})")
    return value


def _counts(codes: Any) -> dict[str, int]:
    return dict(sorted(Counter(codes).items()))


def balance_safe(
    examples: Sequence[Example], num_safe: int, seed: int, taxonomy: Taxonomy = DEFAULT_TAXONOMY
) -> list[Example]:
    """All risky examples plus ``num_safe`` safe ones drawn at random (the paper's Stage I balancing).

    'Safe' means the taxonomy's safe type (the paper's clean data). The file order is kept, so the result
    depends only on the data and ``seed``.
    """
    safe_id = taxonomy.safe_type_id
    safe = [i for i, e in enumerate(examples) if e.type == safe_id]
    chosen = set(safe) if num_safe >= len(safe) else set(random.Random(seed).sample(safe, num_safe))
    return [e for i, e in enumerate(examples) if e.type != safe_id or i in chosen]
