"""Bad data: a skipped record is counted with its reason and place; --strict makes it an error naming the
place; a data set that cannot be read at all is an error naming the file. Never a traceback or a silent drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_layouts import LAYOUTS, image, write_json

from psaguard.cli.main import main
from psaguard.errors import DatasetError
from psaguard.training.datasets import convert, get_format

GOOD = {"id": "x", "image": "bad_ads/a.png", "safe": False, "harmful_category": "privacy"}


def _vlguard(root: Path, bad: dict) -> Path:
    image(root / "train" / "bad_ads" / "a.png")
    good = {**GOOD, "harmful_subcategory": "personal data", "instr-resp": [{"instruction": "Who?", "response": "No."}]}
    return write_json(root / "train.json", [good, bad])


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (
            {
                **GOOD,
                "harmful_subcategory": "personal data",
                "instr-resp": [{"instruction": "q", "response": "r"}],
                "image": "bad_ads/missing.png",
            },
            "image file not found",
        ),
        ({**GOOD, "instr-resp": [{"instruction": "q", "response": "r"}]}, "missing key"),
        ({**GOOD, "harmful_subcategory": "personal data", "instr-resp": "not a list"}, "wrong type"),
        (
            {**GOOD, "harmful_subcategory": "telepathy", "instr-resp": [{"instruction": "q", "response": "r"}]},
            "unknown label",
        ),
        ("just a string", "wrong type"),
    ],
)
def test_a_bad_record_is_skipped_with_its_reason_or_an_error_with_strict(
    tmp_path: Path, bad: object, kind: str
) -> None:
    path = _vlguard(tmp_path / "v", bad)  # type: ignore[arg-type]
    report = convert(get_format("vlguard"), tmp_path / "v", tmp_path / "o.jsonl")
    assert (report.rows, report.skipped) == (1, 1)
    assert report.skip_reasons == {kind: 1}
    assert report.errors[0].startswith(f"{path}#1")
    with pytest.raises(DatasetError, match=kind) as caught:
        convert(get_format("vlguard"), tmp_path / "v", tmp_path / "o2.jsonl", strict=True)
    assert f"{path}#1" in str(caught.value)
    assert not (tmp_path / "o2.jsonl").exists()


def test_an_unreadable_data_set_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "train.json").write_text('[{"id": 1,\n "image": ]')
    with pytest.raises(DatasetError, match="not valid JSON") as caught:
        convert(get_format("vlguard"), tmp_path / "v", tmp_path / "o.jsonl")
    assert caught.value.path == str(tmp_path / "v" / "train.json") and caught.value.line == 2


def test_a_missing_data_set_file_names_where_it_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"siuo_gen\.json not found"):
        convert(get_format("siuo"), tmp_path / "empty", tmp_path / "o.jsonl")
    with pytest.raises(DatasetError, match="data set folder not found"):
        convert(get_format("siuo"), tmp_path / "nope", tmp_path / "o.jsonl")


def test_a_csv_without_its_columns_is_an_error_and_a_bad_line_a_skip(tmp_path: Path) -> None:
    LAYOUTS["figstep"](tmp_path / "f")
    csv_path = tmp_path / "f" / "data" / "question" / "safebench.csv"
    csv_path.write_text(csv_path.read_text() + "ForbidQI,3,1,,empty category,x\n")
    report = convert(get_format("figstep"), tmp_path / "f", tmp_path / "o.jsonl")
    assert report.skip_reasons == {"missing key": 1} and report.errors[0].startswith(f"{csv_path}:4")
    with pytest.raises(DatasetError, match="missing key") as caught:
        convert(get_format("figstep"), tmp_path / "f", tmp_path / "o2.jsonl", strict=True)
    assert (caught.value.path, caught.value.line) == (str(csv_path), 4)
    csv_path.write_text("dataset,question\nForbidQI,q\n")
    with pytest.raises(DatasetError, match="lacks the columns"):
        convert(get_format("figstep"), tmp_path / "f", tmp_path / "o.jsonl")


def test_a_jsonl_line_that_is_not_json_is_skipped_by_line(tmp_path: Path) -> None:
    LAYOUTS["hateful-memes"](tmp_path / "h")
    path = tmp_path / "h" / "dev_seen.jsonl"
    path.write_text(
        path.read_text() + "{not json\n" + json.dumps({"id": 5, "img": "img/42953.png", "text": "t"}) + "\n"
    )
    report = convert(get_format("hateful-memes"), tmp_path / "h", tmp_path / "o.jsonl", split="dev_seen")
    assert report.rows == 2
    assert [e.split(" (")[0] for e in report.errors] == [
        f"{path}:3: wrong type: not valid JSON",
        f"{path}:4: missing key: 'label'",
    ]


def test_no_row_left_is_an_error(tmp_path: Path) -> None:
    _vlguard(tmp_path / "v", {})
    (tmp_path / "v" / "train.json").write_text("[]")
    with pytest.raises(DatasetError, match="no row converted"):
        convert(get_format("vlguard"), tmp_path / "v", tmp_path / "o.jsonl")


def test_cli_reports_bad_input_as_a_typed_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _vlguard(tmp_path / "v", {**GOOD, "instr-resp": []})
    args = ["data", "convert", "--format", "vlguard", "--src", str(tmp_path / "v"), "--out", str(tmp_path / "o.jsonl")]
    assert main([*args, "--map", "no-equals-sign"]) == 2
    assert "DatasetError" in capsys.readouterr().err
    assert main([*args, "--strict"]) == 2
    assert "missing key: 'harmful_subcategory'" in capsys.readouterr().err
    assert main([*args, "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    assert main([*args, "--map", "privacy/personal data=severe:privacy"]) == 2
    assert "unknown risk level 'severe'" in capsys.readouterr().err
