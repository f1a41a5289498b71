"""What every data-set format shares: source records, the label table and the field readers.

A format reads a data set from its own published on-disk layout and yields :class:`SourceRecord` items
(one request: image paths, prompt, optional response, the source's label verbatim), or a
:class:`RecordError` for one unusable record; :mod:`psaguard.training.datasets.conversion` maps each
label through the format's :class:`LabelTable` and writes the JSONL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from psaguard.taxonomy import DEFAULT_TAXONOMY, Taxonomy

__all__ = [
    "LAYOUT_SOURCES",
    "MODERATION_PROMPT",
    "SAFE",
    "DatasetFormat",
    "LabelTable",
    "RecordError",
    "SourceRecord",
    "Target",
    "field_of",
    "normalize",
    "record_id",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
"""Image files a numbered-image layout (MMSafeAware) is searched for."""


class RecordError(ValueError):
    """One source record is unusable; :func:`convert` skips and counts it (or raises with ``strict``)."""

    def __init__(self, reason: str, where: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where


@dataclass(frozen=True)
class Target:
    """Where one source label lands: a risk level code and a risk type code of the taxonomy."""

    level: str
    type: str
    note: str = ""  # why, where the source is ambiguous


SAFE = Target("safe", "safe")
"""The target of a source label that marks a safe request."""

MODERATION_PROMPT = "Describe this image."
"""The request paired with an image in image-only moderation data (LlavaGuard, UnsafeBench, Hateful Memes)."""


@dataclass(frozen=True)
class SourceRecord:
    """One request of a data set, before its label is mapped.

    ``images`` are paths relative to the data set's folder (or absolute, for images a parquet converter
    extracted). ``label`` is the source's label verbatim; ``key`` is the label-table entry it is looked up
    by (the label normalized, or a combination such as 'category/subcategory'). ``response_harmful`` labels
    the response where the data set does (None: unlabelled): a harmless answer becomes
    ``"response_harmful": false``; a harmful one takes the request's mapped level and type as its
    ``response_level``/``response_type`` (the training reader's response-label schema).
    """

    where: str
    id: str
    images: tuple[str, ...]
    prompt: str
    label: str
    key: str
    response: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    response_harmful: bool | None = None


class LabelTable:
    """A format's documented mapping from source labels (normalized keys) to taxonomy targets.

    Keys are compared case-insensitively with surrounding blanks removed. ``overrides`` (from
    ``--map KEY=LEVEL:TYPE``) replace or add entries, for labels whose meaning is ambiguous.
    """

    def __init__(self, entries: Mapping[str, Target]) -> None:
        self.entries = {normalize(key): target for key, target in entries.items()}

    def with_overrides(self, overrides: Mapping[str, Target]) -> LabelTable:
        """A copy with ``overrides`` applied."""
        table = LabelTable(self.entries)
        table.entries.update({normalize(key): target for key, target in overrides.items()})
        return table

    def lookup(self, key: str) -> Target | None:
        return self.entries.get(normalize(key))

    def rows(self, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> list[tuple[str, str, str, str, str]]:
        """(source key, level code, type code, MLCommons codes, note) of every entry, for docs and the CLI."""
        return [
            (key, t.level, t.type, ",".join(taxonomy.type_by_code(t.type).mlcommons) or "-", t.note)
            for key, t in self.entries.items()
        ]


def normalize(label: str) -> str:
    """``label`` lower-cased with runs of blanks made one space: how label-table keys are compared."""
    return " ".join(label.strip().lower().split())


LAYOUT_SOURCES = {
    "repository": "checked against the data set's files",
    "loader": "written from the data set's own loading code (the data file itself not read)",
    "card": "written from the columns and splits its data set card declares (the files themselves not read)",
    "third-party": "checked against public third-party code that reads the files (names, columns, folders and "
    "label strings agree; the files themselves not read)",
    "documentation": "written from documentation and memory; not checked against the files",
}
"""What a format's ``verified`` value means."""


class DatasetFormat:
    """Base of the data-set formats: subclasses set the class attributes and implement :meth:`records`.

    ``verified`` says what the layout was written from (:data:`LAYOUT_SOURCES`): 'repository' (the data
    set's own files were read and converted), 'loader' (the code that loads it in its repository was read,
    not the data file), 'card' (its Hugging Face card's declared columns and splits), 'third-party' (public
    code of other projects that reads the files agrees with it) or 'documentation' (its paper, card or
    README only; the layout may differ in details).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    source: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    labels: ClassVar[LabelTable]
    verified: ClassVar[str] = "documentation"
    extracts_images: ClassVar[bool] = False

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        """Yield the records of ``split`` (or a :class:`RecordError` per unusable one).

        ``images_out`` is where a format that ships images inside its files writes them (created on use).

        Raises:
            DatasetError: The data set's files are missing or unreadable as a whole.
        """
        raise NotImplementedError

    @staticmethod
    def parse_each(
        items: Iterable[tuple[str, Any]], parse: Callable[[str, Any], Iterable[SourceRecord]]
    ) -> Iterator[SourceRecord | RecordError]:
        """Run ``parse(where, item)`` on each item, turning a :class:`RecordError` into a yielded skip."""
        for where, item in items:
            if isinstance(item, RecordError):  # a line that could not even be read
                yield item
                continue
            try:
                yield from list(parse(where, item))
            except RecordError as err:
                yield err


def field_of(item: Any, key: str, kind: type[T], where: str, *, optional: bool = False) -> T:
    """``item[key]`` checked to be a ``kind`` (a non-empty string for ``str``).

    Raises:
        RecordError: ``item`` is not an object, the key is missing or an empty string (unless ``optional``:
            then None is returned), or the value has the wrong type.
    """
    if not isinstance(item, dict):
        raise RecordError(f"wrong type: expected a JSON object, got {type(item).__name__}", where)
    value = item.get(key)
    if value is None:
        return _absent(key, where, optional)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise RecordError(f"wrong type: {key!r} should be {kind.__name__}, got {type(value).__name__}", where)
    if kind is str and not value.strip():  # an empty optional text is no text (VLGuard has empty answers)
        return _absent(key, where, optional, " is empty")
    return value


def _absent(key: str, where: str, optional: bool, why: str = "") -> Any:
    """None for a missing optional field; a missing required one is a :class:`RecordError`."""
    if optional:
        return None
    raise RecordError(f"missing key: {key!r}{why}", where)


def record_id(item: Any, key: str, where: str) -> str:
    """A record's id (a string or an integer in the source) as a string.

    Raises:
        RecordError: The key is missing or holds something else.
    """
    value = item.get(key) if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int) or (isinstance(value, str) and not value.strip()):
        raise RecordError(f"missing key: {key!r} (a string or integer id)", where)
    return str(value)
