"""JSONL reading: both row formats, typed errors with file and line, skipping with a report, balancing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from psaguard.errors import DatasetError, InvalidInputError
from psaguard.training.data import balance_safe, read_jsonl

GOOD = {"image": "a.png", "prompt": "what is this ?", "response": "a cat", "safe_level": 0, "safe_type": "safe"}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / name)
    return tmp_path


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reads_prompt_rows_and_the_papers_conversation_rows(data_dir: Path) -> None:
    paper = {
        "safe_type": 4,
        "safe_level": 2,
        "image": "a.png<split>b.png",
        "conversations": [
            {"from": "USER", "value": "<image>\nWho is this?"},
            {"from": "ASSISTANT", "value": "Sorry, I cannot say."},
            {"from": "human", "value": "Why not?"},
            {"from": "gpt", "value": "Privacy."},
        ],
    }
    examples, report = read_jsonl(write(data_dir / "d.jsonl", [GOOD, "", paper]))
    assert [e.line for e in examples] == [1, 3]
    assert examples[0].turns == (("what is this ?", "a cat"),) and examples[0].type == 6
    second = examples[1]
    assert second.images == (data_dir / "a.png", data_dir / "b.png")
    # Every turn of the request (all but the last answer), as the guard judges it at inference.
    assert second.prompt == "Who is this?\nSorry, I cannot say.\nWhy not?"
    assert second.turns[1] == ("Why not?", "Privacy.")
    assert (second.level, second.type) == (2, 4)
    assert report.rows == 2 and report.kept == 2 and report.skipped == 0
    assert report.type_counts == {"privacy": 1, "safe": 1}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("{not json", "not valid JSON"),
        ({**GOOD, "colour": "red"}, "colour"),
        ({**GOOD, "safe_level": 4}, "safe_level 4"),
        ({**GOOD, "safe_level": "1"}, "safe_level"),
        ({**GOOD, "safe_type": "weapons"}, "weapons"),
        ({**GOOD, "image": "missing.png"}, "missing.png"),
        ({**GOOD, "prompt": "<image> what ?"}, "<image>"),
        ({**GOOD, "response": "  "}, "response"),
        (
            {
                **{k: v for k, v in GOOD.items() if k not in ("prompt", "response")},
                "conversations": [{"from": "USER", "value": "no placeholder"}, {"from": "ASSISTANT", "value": "x"}],
            },
            "<image>",
        ),
    ],
)
def test_a_bad_row_raises_a_typed_error_naming_file_and_line(data_dir: Path, row: object, reason: str) -> None:
    path = write(data_dir / "bad.jsonl", [GOOD, GOOD, row])
    with pytest.raises(DatasetError, match=reason) as caught:
        read_jsonl(path)
    assert isinstance(caught.value, InvalidInputError)
    assert (caught.value.path, caught.value.line) == (str(path), 3)
    assert str(caught.value).startswith(f"{path}:3: ")


def test_skip_invalid_counts_and_reports_the_bad_rows(data_dir: Path) -> None:
    path = write(data_dir / "mixed.jsonl", [GOOD, "[1, 2]", {**GOOD, "safe_type": 9}, GOOD])
    examples, report = read_jsonl(path, skip_invalid=True)
    assert len(examples) == 2
    assert (report.rows, report.kept, report.skipped) == (4, 2, 2)
    assert [e.split(": ")[0] for e in report.errors] == [f"{path}:2", f"{path}:3"]


def test_a_file_without_valid_rows_is_an_error(data_dir: Path) -> None:
    with pytest.raises(DatasetError, match="no valid rows"):
        read_jsonl(write(data_dir / "empty.jsonl", ["", "  "]))


def test_balancing_keeps_every_risky_example_and_a_seeded_sample_of_safe_ones(data_dir: Path) -> None:
    risky = {**GOOD, "safe_level": 3, "safe_type": "illegal"}
    examples, _ = read_jsonl(write(data_dir / "d.jsonl", [risky] * 3 + [GOOD] * 10))
    picked = balance_safe(examples, num_safe=4, seed=42)
    assert sum(e.type != 6 for e in picked) == 3
    assert sum(e.type == 6 for e in picked) == 4
    assert picked == balance_safe(examples, num_safe=4, seed=42)
    assert picked != balance_safe(examples, num_safe=4, seed=7)
    assert balance_safe(examples, num_safe=100, seed=0) == examples
