"""The conversion of a data-set format's records to psaguard's JSONL, with its report.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from psaguard.checkpoints.serialization import atomic_write_text
from psaguard.errors import DatasetError
from psaguard.taxonomy import DEFAULT_TAXONOMY, Taxonomy
from psaguard.training.data import MAX_REPORTED_ERRORS
from psaguard.training.datasets.base import DatasetFormat, LabelTable, RecordError, SourceRecord, Target
from psaguard.training.rows import SampleRow, strip_placeholder

__all__ = ["ConvertReport", "convert", "resolve_image"]

logger = logging.getLogger(__name__)


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
            "prompt": strip_placeholder(record.prompt),  # LLaVA-style sources mark the image
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
