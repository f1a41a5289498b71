"""Hostile JSONL files: image paths confined to the image root, rows split on newlines only, FIFOs refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fifo_helpers import error_without_blocking
from PIL import Image

from psaguard.errors import DatasetError
from psaguard.training import collate
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


def _split_row(root: Path, side: int, copies: int) -> Path:
    Image.new("RGB", (side, side), "white").save(root / "big.png")  # compresses to a few KB
    return _write(root / "rows.jsonl", [{**GOOD, "image": "<split>".join(["big.png"] * copies)}])


def test_split_images_over_the_pixel_limit_together_are_refused_before_decoding(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each image is under the limit; side by side they are 8x over it (the 8 x 6300^2 PNGs, scaled down).
    examples, _ = read_jsonl(_split_row(root, 300, 8))
    decoded: list[object] = []
    monkeypatch.setattr(collate, "load_image", lambda *args, **kwargs: decoded.append(args))
    with pytest.raises(DatasetError, match=r"rows\.jsonl:1: .*side by side make 2400x300 pixels"):
        collate.load_example_image(examples[0], max_pixels=300 * 300 * 2)
    assert decoded == []


def test_split_images_within_the_limit_are_pasted_side_by_side(root: Path) -> None:
    examples, _ = read_jsonl(_split_row(root, 30, 3))
    assert collate.load_example_image(examples[0], max_pixels=30 * 30 * 3).size == (90, 30)


def test_exif_rotation_counts_in_the_canvas_before_decoding(root: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the 40 x 10 file is 10 wide and 40 high once transposed
    Image.new("RGB", (40, 10), "white").save(root / "tall.jpg", exif=exif)
    examples, _ = read_jsonl(_write(root / "rows.jsonl", [{**GOOD, "image": "tall.jpg<split>tall.jpg"}]))
    assert collate.load_example_image(examples[0]).size == (20, 40)
    with pytest.raises(DatasetError, match="20x40"):
        collate.load_example_image(examples[0], max_pixels=20 * 40 - 1)


def test_a_row_naming_too_many_images_is_refused(root: Path) -> None:
    with pytest.raises(DatasetError, match="at most 16"):
        read_jsonl(_write(root / "rows.jsonl", [{**GOOD, "image": "<split>".join(["a.png"] * 17)}]))
