"""Reading a data set's files: JSON, JSON Lines, CSV and parquet, each item with the place it came from.

A file that cannot be read as a whole is a :class:`~psaguard.errors.DatasetError` naming it; one bad line of a
JSON Lines file is a :class:`~psaguard.training.datasets.base.RecordError` for that line only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from psaguard.checkpoints.files import read_regular_file
from psaguard.errors import DatasetError
from psaguard.training.datasets.base import IMAGE_SUFFIXES, RecordError

__all__ = [
    "first_existing",
    "iter_csv",
    "iter_jsonl",
    "iter_parquet",
    "json_items",
    "load_json",
    "read_text",
    "save_image_bytes",
]


def json_items(doc: Any, path: Path) -> list[tuple[str, Any]]:
    """(file#index, item) of a JSON list, or (file#key, item) of a JSON object of items.

    Raises:
        DatasetError: ``doc`` is neither.
    """
    if isinstance(doc, list):
        return [(f"{path}#{i}", item) for i, item in enumerate(doc)]
    if isinstance(doc, dict):
        return [(f"{path}#{key}", item) for key, item in doc.items()]
    raise DatasetError(f"expected a JSON list or object of records, got {type(doc).__name__}", str(path))


def first_existing(src: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``candidates`` (paths relative to ``src``) that is a file.

    Raises:
        DatasetError: None exists; the message lists where it was looked for.
    """
    for candidate in candidates:
        if (src / candidate).is_file():
            return src / candidate
    raise DatasetError(f"{what} not found in {src} (looked for: {', '.join(candidates)})")


def read_text(path: Path) -> str:
    """The UTF-8 text of a regular file (a BOM dropped).

    Raises:
        DatasetError: The file is missing, not a regular file, or not UTF-8.
    """
    try:
        return read_regular_file(path, None, DatasetError, "data set file").decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"not UTF-8 text: {err}", str(path)) from err


def load_json(path: Path) -> Any:
    """The parsed JSON document of ``path``.

    Raises:
        DatasetError: The file is missing, not a regular file, not UTF-8, or not JSON (naming line and column).
    """
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DatasetError(f"not valid JSON: {err.msg} (column {err.colno})", str(path), err.lineno) from err
    except RecursionError as err:
        raise DatasetError("JSON nested too deeply", str(path)) from err


def iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, object)`` of each non-blank line; a line that is not JSON is yielded as a RecordError."""
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            yield where, RecordError(f"wrong type: not valid JSON ({err})", where)


def iter_csv(path: Path, columns: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """``(file:line, row)`` of each CSV record (the line its record starts on).

    Raises:
        DatasetError: The file is unreadable, or its header lacks one of ``columns``.
    """
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"CSV header lacks the columns {missing} (has {reader.fieldnames})", str(path), 1)
    line = reader.line_num + 1
    for row in reader:
        yield f"{path}:{line}", row
        line = reader.line_num + 1


def iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file#row, record)`` of each row of a parquet file (needs the ``datasets`` extra: pyarrow).

    Raises:
        DatasetError: The file is not a readable parquet file.
        ModuleNotFoundError: pyarrow is missing (the CLI turns it into an install hint).
    """
    import pyarrow.parquet as pq  # optional extra: imported only by the parquet formats

    try:
        table = pq.ParquetFile(path)
        index = 0
        for batch in table.iter_batches(batch_size=64):
            for record in batch.to_pylist():
                yield f"{path}#{index}", record
                index += 1
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise DatasetError(f"not a readable parquet file: {err}", str(path)) from err


def save_image_bytes(value: Any, folder: Path, stem: str, where: str) -> str:
    """Write a parquet ``image`` cell (the Hugging Face ``{'bytes': ..., 'path': ...}`` struct, or raw bytes)
    to ``folder`` and return the absolute path written.

    Raises:
        RecordError: The cell holds no image bytes.
    """
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes | bytearray) or not data:
        raise RecordError("missing key: 'image' holds no image bytes", where)
    name = value.get("path") if isinstance(value, dict) else None
    suffix = Path(name).suffix.lower() if isinstance(name, str) else ""
    suffix = suffix if suffix in IMAGE_SUFFIXES else ".png"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{_safe_stem(stem)}{suffix}"
    target.write_bytes(bytes(data))
    return str(target.resolve())


def _safe_stem(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:120] or "image"
