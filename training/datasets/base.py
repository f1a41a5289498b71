"""What every data-set format shares: source records, the label table, and the conversion to psaguard's JSONL.

A format reads a data set from its own published on-disk layout and yields :class:`SourceRecord` items
(one request: image paths, prompt, optional response, the source's label verbatim). :func:`convert`
maps each label through the format's :class:`LabelTable` onto the taxonomy, checks the images, validates
each row with the training reader's own schema, and writes one JSONL row per record.

Two kinds of failure, on purpose distinct:

- the data set itself cannot be read (a missing file, a file that is not JSON, a CSV without its columns):
  :class:`~psaguard.errors.DatasetError` naming the file, always;
- one record is bad (missing key, wrong type, unknown label, missing image, a path leading out of the
  image root): skipped, counted and reported with its reason and place (``file:line`` or ``file#index``),
  or with ``strict=True`` a :class:`~psaguard.errors.DatasetError` naming the place.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from psaguard.checkpoints.serialization import atomic_write_text
from psaguard.errors import DatasetError
from psaguard.taxonomy import DEFAULT_TAXONOMY, Taxonomy
from psaguard.training.data import IMAGE_PLACEHOLDER, MAX_REPORTED_ERRORS, SampleRow

__all__ = [
    "LAYOUT_SOURCES",
    "ConvertReport",
    "DatasetFormat",
    "LabelTable",
    "RecordError",
    "SourceRecord",
    "Target",
    "convert",
    "field_of",
    "normalize",
    "record_id",
    "resolve_image",
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


class ConvertReport(BaseModel):
    """What a conversion wrote and skipped; saved beside the JSONL as ``<out>.report.json``."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(description="The format name, e.g. 'vlguard'.")
    split: str = Field(description="The split converted.")
    src: str = Field(description="The data set's folder.")
    out: str = Field(description="The JSONL written.")
    image_root: str = Field(description="The folder the rows' image paths are relative to (train's image_root).")
    rows: int = Field(description="Rows written.")
    skipped: int = Field(0, description="Source records skipped.")
    skip_reasons: dict[str, int] = Field(default_factory=dict, description="Skipped records per reason kind.")
    errors: list[str] = Field(default_factory=list, description="'place: reason' of skipped records (first 100).")
    source_labels: dict[str, int] = Field(default_factory=dict, description="Written rows per source label.")
    level_counts: dict[str, int] = Field(default_factory=dict, description="Written rows per level code.")
    type_counts: dict[str, int] = Field(default_factory=dict, description="Written rows per type code.")
    response_counts: dict[str, int] = Field(
        default_factory=dict,
        description="Written rows by answer: 'none' (request-only), 'unlabelled', 'harmless', 'harmful'.",
    )


def convert(
    fmt: DatasetFormat,
    src: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    strict: bool = False,
    overrides: Mapping[str, Target] | None = None,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> ConvertReport:
    """Convert the data set in ``src`` (its own layout) to psaguard JSONL at ``out``; return the report.

    Rows point at the data set's own image files. Their paths are relative to the image root: ``out``'s
    folder when the images lie inside it (then ``psaguard train``/``eval`` read the file as written), else
    ``src``, recorded in ``<out>.report.json``: pass it as ``image_root`` / ``--image-root``. The reader does
    not take it from there on its own: the confinement of image paths to a root the user chose stays whole
    even against a hostile data folder. Keeping converted files beside the data set folders
    (``--src data/VLGuard --out data/vlguard_train.jsonl``) needs no image root at all. Formats whose images
    live inside parquet files write them to ``<out stem>_images/`` beside ``out``.

    Raises:
        DatasetError: ``src`` is not a folder, the split is unknown, the data set's files are unreadable, a
            record is bad and ``strict`` is set, a label's target is not in ``taxonomy``, or no row is left.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"data set folder not found: {src}")
    split = split or fmt.splits[0]
    if split not in fmt.splits:
        raise DatasetError(f"{fmt.name} has no split {split!r}; known: {list(fmt.splits)}")
    table = fmt.labels.with_overrides(overrides or {})
    _check_targets(table, taxonomy, fmt.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    images_out = out.parent / f"{out.stem}_images"
    root = (
        out.parent.resolve() if _inside(src.resolve(), out.parent.resolve()) or fmt.extracts_images else src.resolve()
    )
    writer = _Writer(fmt, src, root, table, taxonomy, strict)
    for item in fmt.records(src, split, images_out):
        writer.add(item)
    if not writer.lines:
        raise DatasetError(f"no row converted ({writer.skipped} skipped; first: {writer.first_error()})", str(src))
    atomic_write_text(out, "".join(writer.lines))
    report = writer.report(split, src, out, root)
    atomic_write_text(out.with_name(out.name + ".report.json"), report.model_dump_json(indent=2) + "\n")
    if report.skipped:
        logger.warning("%s: skipped %d records (%s)", fmt.name, report.skipped, report.skip_reasons)
    return report


class _Writer:
    """Turns records into validated JSONL lines, counting what it skips."""

    def __init__(
        self, fmt: DatasetFormat, src: Path, root: Path, table: LabelTable, taxonomy: Taxonomy, strict: bool
    ) -> None:
        self.fmt, self.src, self.root, self.table, self.taxonomy, self.strict = fmt, src, root, table, taxonomy, strict
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.kinds: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.levels: Counter[str] = Counter()
        self.types: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()

    @property
    def skipped(self) -> int:
        return sum(self.kinds.values())

    def first_error(self) -> str:
        return self.errors[0] if self.errors else "none"

    def add(self, item: SourceRecord | RecordError) -> None:
        try:
            if isinstance(item, RecordError):
                raise item
            self.lines.append(self._line(item))
        except RecordError as err:
            if self.strict:
                path, _, line = err.where.rpartition(":")
                if line.isdigit():  # 'file:line' names the line; 'file#record' is kept whole in the message
                    raise DatasetError(err.reason, path, int(line)) from err
                raise DatasetError(f"{err.where}: {err.reason}") from err
            self.kinds[err.reason.split(":")[0]] += 1
            self.errors.append(f"{err.where}: {err.reason}")

    def _line(self, record: SourceRecord) -> str:
        target = self.table.lookup(record.key)
        if target is None:
            raise RecordError(f"unknown label: {record.key!r} (map it with --map)", record.where)
        images = [resolve_image(self.src, path, self.root, record.where) for path in record.images]
        row: dict[str, Any] = {
            "id": f"{self.fmt.name}:{record.id}",
            "image": images[0] if len(images) == 1 else images,
            "prompt": record.prompt.replace(IMAGE_PLACEHOLDER, " ").strip(),  # LLaVA-style sources mark the image
            **({"response": record.response} if record.response else {}),
            "safe_level": self.taxonomy.level_by_code(target.level).id,
            "safe_type": target.type,
            **(self._response_labels(record, target) if record.response else {}),
            "source_label": record.label,
            "meta": {"dataset": self.fmt.name, **record.meta},
        }
        try:
            SampleRow.model_validate(row)
        except ValidationError as err:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in err.errors())
            raise RecordError(f"invalid row: {reasons}", record.where) from err
        self.labels[record.label] += 1
        self.responses[_response_kind(row)] += 1
        self.levels[target.level] += 1
        self.types[target.type] += 1
        return json.dumps(row, ensure_ascii=False) + "\n"

    def _response_labels(self, record: SourceRecord, target: Target) -> dict[str, Any]:
        """The row's response labels: none, harmless, or harmful at the request's mapped level and type."""
        if record.response_harmful is None:
            return {}
        if not record.response_harmful:
            return {"response_harmful": False}
        level = self.taxonomy.level_by_code(target.level).id
        if level == 0 or self.taxonomy.type_by_code(target.type).id == self.taxonomy.safe_type_id:
            raise RecordError(
                f"unknown label: a harmful answer to a request mapped safe ({record.key!r}) has no risk type"
                " (map the label with --map)",
                record.where,
            )
        return {"response_harmful": True, "response_level": level, "response_type": target.type}

    def report(self, split: str, src: Path, out: Path, root: Path) -> ConvertReport:
        return ConvertReport(
            format=self.fmt.name,
            split=split,
            src=str(src),
            out=str(out),
            image_root=str(root),
            rows=len(self.lines),
            skipped=self.skipped,
            skip_reasons=dict(sorted(self.kinds.items())),
            errors=self.errors[:MAX_REPORTED_ERRORS],
            source_labels=dict(sorted(self.labels.items())),
            level_counts=dict(sorted(self.levels.items())),
            type_counts=dict(sorted(self.types.items())),
            response_counts=dict(sorted(self.responses.items())),
        )


def _response_kind(row: Mapping[str, Any]) -> str:
    if "response" not in row:
        return "none"
    if "response_harmful" not in row:
        return "unlabelled"
    return "harmful" if row["response_harmful"] else "harmless"


def resolve_image(src: Path, path: str, root: Path, where: str) -> str:
    """``path`` (relative to ``src``, or absolute) as a path relative to ``root``, after checking it.

    Raises:
        RecordError: The path is absolute or has '..' parts in the source, leads out of ``src`` (through a
            symlink too), or names no file.
    """
    given = Path(path)
    if given.is_absolute():
        full = given  # written by a converter that extracted the image itself
    else:
        if ".." in given.parts or given.drive:
            raise RecordError(f"image path leads out of the data set: {path!r}", where)
        full = src / given
        if not _inside(full.resolve(), src.resolve()):
            raise RecordError(f"image path leads out of the data set through a symlink: {path!r}", where)
    if not full.is_file():
        raise RecordError(f"image file not found: {path}", where)
    try:
        return full.resolve().relative_to(root.resolve()).as_posix()
    except ValueError as err:
        raise RecordError(f"image lies outside the image root: {path!r} (root {root})", where) from err


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_targets(table: LabelTable, taxonomy: Taxonomy, name: str) -> None:
    for key, target in table.entries.items():
        try:
            taxonomy.level_by_code(target.level)
            taxonomy.type_by_code(target.type)
        except KeyError as err:
            raise DatasetError(f"{name}: label {key!r} maps to {err.args[0]}") from err


def field_of(item: Any, key: str, kind: type[T], where: str, *, optional: bool = False) -> T:
    """``item[key]`` checked to be a ``kind`` (a non-empty string for ``str``).

    Raises:
        RecordError: ``item`` is not an object, the key is missing or an empty string (unless ``optional``:
            then None is returned), or the value has the wrong type.
    """
    if not isinstance(item, dict):
        raise RecordError(f"wrong type: expected a JSON object, got {type(item).__name__}", where)
    if key not in item or item[key] is None:
        if optional:
            return None  # type: ignore[return-value]
        raise RecordError(f"missing key: {key!r}", where)
    value = item[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise RecordError(f"wrong type: {key!r} should be {kind.__name__}, got {type(value).__name__}", where)
    if kind is str and not value.strip():
        if optional:
            return None  # type: ignore[return-value]  # an empty optional text is no text (VLGuard has empty answers)
        raise RecordError(f"missing key: {key!r} is empty", where)
    return value


def record_id(item: Any, key: str, where: str) -> str:
    """A record's id (a string or an integer in the source) as a string.

    Raises:
        RecordError: The key is missing or holds something else.
    """
    value = item.get(key) if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int) or (isinstance(value, str) and not value.strip()):
        raise RecordError(f"missing key: {key!r} (a string or integer id)", where)
    return str(value)
