"""Hostile JSONL files: image paths confined to the image root, rows split on newlines only, FIFOs refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fifo_helpers import error_without_blocking
from PIL import Image

from psaguard.errors import DatasetError
from psaguard.training.data import read_jsonl

GOOD = {"image": "a.png", "prompt": "what is this ?", "response": "a cat", "safe_level": 0, "safe_type": "safe"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "data" / "a.png")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "outside.png")
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "outside.png")
    return tmp_path / "data"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "image",
    [
        "../outside.png",
        "../missing.png",  # refused like an existing file: the error does not say whether it exists
        "sub/../../outside.png",
        "link.png",  # a symlink inside the root pointing out of it
        "a.png<split>../outside.png",
    ],
)
def test_image_paths_leaving_the_root_are_refused(root: Path, image: str) -> None:
    with pytest.raises(DatasetError, match="image root") as caught:
        read_jsonl(_write(root / "rows.jsonl", [{**GOOD, "image": image}]))
    assert "not found" not in str(caught.value)


def test_absolute_paths_are_refused_unless_allowed(root: Path) -> None:
    outside = str(root.parent / "outside.png")
    rows = _write(root / "rows.jsonl", [{**GOOD, "image": outside}])
    with pytest.raises(DatasetError, match="image root"):
        read_jsonl(rows)
    examples, _ = read_jsonl(rows, allow_outside_root=True)
    assert examples[0].images == (Path(outside),)


def test_rows_are_split_on_newlines_only(root: Path) -> None:
    # str.splitlines() also split on U+2028, U+2029 and U+0085, which JSON strings may hold unescaped.
    rows = [{**GOOD, "prompt": "line\u2028sep\u2029para\u0085next"}, {**GOOD, "safe_level": 5}]
    with pytest.raises(DatasetError, match=r"rows.jsonl:2: safe_level 5"):
        read_jsonl(_write(root / "rows.jsonl", rows))
    examples, report = read_jsonl(_write(root / "rows.jsonl", rows[:1]))
    assert report.rows == 1 and examples[0].prompt == "line\u2028sep\u2029para\u0085next"


@pytest.mark.parametrize(
    "line",
    [
        '{"image": "a.png", "prompt": "p", "response": "r", "safe_level": ' + "9" * 5000 + ', "safe_type": 0}',
        '{"image": "a.png", "prompt": "p", "response": "r", "safe_level": 0, "safe_level": 3, "safe_type": 0}',
        '{"image": "a.png", "prompt": "p", "response": "r", "safe_level": NaN, "safe_type": 0}',
    ],
    ids=["5000-digit-int", "duplicate-key", "nan"],
)
def test_bad_json_values_are_dataset_errors(root: Path, line: str) -> None:
    (root / "rows.jsonl").write_text(line + "\n")
    with pytest.raises(DatasetError, match=r"rows\.jsonl:1"):
        read_jsonl(root / "rows.jsonl")


def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    fifo = root / "rows.jsonl"
    os.mkfifo(fifo)
    assert "not a regular file" in str(error_without_blocking(lambda: read_jsonl(fifo), fifo, DatasetError))
