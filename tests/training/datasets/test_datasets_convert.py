"""Every format converts its tiny layout into rows the training reader accepts as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_layouts import LAYOUTS, SPLITS, image, png_bytes, write_json

from psaguard.cli.main import main
from psaguard.errors import DatasetError
from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.data import read_jsonl
from psaguard.training.datasets import FORMATS, Target, convert, get_format

PARQUET = {"spa-vl", "beavertails-v", "unsafebench"}


def test_every_listed_format_is_registered_and_has_a_layout() -> None:
    assert set(FORMATS) == set(LAYOUTS)
    assert len(FORMATS) == 15


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_format_converts_its_layout_into_rows_read_as_written(tmp_path: Path, name: str) -> None:
    if name in PARQUET:
        pytest.importorskip("pyarrow")
    src = tmp_path / name
    src.mkdir()
    expected = LAYOUTS[name](src)
    out = tmp_path / "out.jsonl"
    report = convert(get_format(name), src, out, split=SPLITS.get(name))
    assert report.rows == expected
    examples, dataset = read_jsonl(out)  # image root: the JSONL's folder, confinement on
    assert dataset.kept == expected
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(row["source_label"] and row["meta"]["dataset"] == name for row in rows)
    assert sum(report.source_labels.values()) == expected
    assert all(e.images[0].is_file() for e in examples)
    if name not in PARQUET:  # rows point at the data set's own images (no copies)
        assert all(src.resolve() in e.images[0].resolve().parents for e in examples)
    assert json.loads(out.with_name("out.jsonl.report.json").read_text())["rows"] == expected


def test_vlguard_rows_keep_labels_verbatim_and_map_them(tmp_path: Path) -> None:
    LAYOUTS["vlguard"](tmp_path / "v")
    out = tmp_path / "v.jsonl"
    convert(get_format("vlguard"), tmp_path / "v", out, split="test")
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["vlguard:test:Ads_1:0"]["source_label"] == "safe_image/safe_instruction"
    assert rows["vlguard:test:Ads_1:0"]["safe_level"] == 0 and rows["vlguard:test:Ads_1:0"]["safe_type"] == "safe"
    assert rows["vlguard:test:Ads_1:0"]["response"] == "A hair care system."
    hateful = rows["vlguard:test:HatefulMemes_3:0"]
    assert hateful["source_label"] == "discrimination/race"
    assert (hateful["safe_level"], hateful["safe_type"]) == (DEFAULT_TAXONOMY.level_by_code("reject").id, "fairness")
    assert rows["vlguard:test:Ads_2:0"]["image"] == "v/test/bad_ads/b.png"


def test_request_only_rows_have_no_response(tmp_path: Path) -> None:
    LAYOUTS["siuo"](tmp_path / "s")
    out = tmp_path / "s.jsonl"
    convert(get_format("siuo"), tmp_path / "s", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("response" not in row for row in rows)
    examples, _ = read_jsonl(out)
    assert not any(e.has_response for e in examples)
    assert {row["source_label"] for row in rows} == {"self-harm", "privacy violation"}


def test_mmsafeaware_counts_prompts_without_an_image_and_labels_by_number(tmp_path: Path) -> None:
    LAYOUTS["mmsafeaware"](tmp_path / "m")
    report = convert(get_format("mmsafeaware"), tmp_path / "m", tmp_path / "m.jsonl")
    assert (report.rows, report.skipped) == (3, 1)
    assert report.skip_reasons == {"image file not found": 1}
    assert "prompt.txt:" in report.errors[0]
    rows = {row["id"]: row for row in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())}
    assert rows["mmsafeaware:1"]["source_label"] == "yes" and rows["mmsafeaware:200"]["source_label"] == "no"
    assert rows["mmsafeaware:2001"]["safe_type"] == "safe"
    assert rows["mmsafeaware:200"]["prompt"] == "Sentence number 200"


def test_beavertails_v_reads_both_schemas(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    LAYOUTS["beavertails-v"](tmp_path / "b")
    out = tmp_path / "b.jsonl"
    convert(get_format("beavertails-v"), tmp_path / "b", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    responses = {(row["source_label"], row["response"], row["response_harmful"]) for row in rows}
    assert responses == {
        ("animal_abuse", "Use kindness.", False),  # the current schema: is_response_safe
        ("animal_abuse", "Beat it until it obeys.", True),
        ("privacy_invasion_and_surveillance", "The address is ...", True),  # the pairwise one: both answers
        ("privacy_invasion_and_surveillance", "I can't share that.", False),
    }
    assert [row["meta"]["safer"] for row in rows if "safer" in row["meta"]] == [False, True]
    assert sorted(p.name for p in (tmp_path / "b_images").iterdir())  # the extracted images, beside the JSONL


def test_an_override_remaps_an_ambiguous_label(tmp_path: Path) -> None:
    LAYOUTS["rtvlm"](tmp_path / "r")
    out = tmp_path / "r.jsonl"
    convert(
        get_format("rtvlm"),
        tmp_path / "r",
        out,
        overrides={"privacy/proceed with caution": Target("reject", "privacy")},
    )
    row = next(r for r in map(json.loads, out.read_text().splitlines()) if r["source_label"].startswith("Privacy"))
    assert (row["source_label"], row["safe_level"]) == ("Privacy/Proceed with Caution", 3)


def test_images_outside_the_output_folder_are_relative_to_the_source(tmp_path: Path) -> None:
    LAYOUTS["vlsbench"](tmp_path / "src")
    out = tmp_path / "elsewhere" / "v.jsonl"
    report = convert(get_format("vlsbench"), tmp_path / "src", out)
    assert report.image_root == str((tmp_path / "src").resolve())
    with pytest.raises(DatasetError, match="image file not found"):
        read_jsonl(out)  # the reader never takes a root from the data folder on its own
    examples, _ = read_jsonl(out, image_root=report.image_root)
    assert len(examples) == 2


def test_cli_converts_and_lists_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    LAYOUTS["figstep"](tmp_path / "f")
    out = tmp_path / "f.jsonl"
    assert main(["data", "convert", "--format", "figstep", "--src", str(tmp_path / "f"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.split("\ntrain/eval")[0])["rows"] == 2
    assert main(["data", "formats"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in FORMATS)
    assert main(["data", "formats", "vlguard"]) == 0
    table = capsys.readouterr().out
    assert "discrimination/race" in table and "hte" in table  # fairness -> MLCommons 'hte'


def test_vlsbench_image_escaping_the_data_set_is_skipped(tmp_path: Path) -> None:
    image(tmp_path / "outside.png")
    src = tmp_path / "src"
    record = {"instruction": "q", "category": "Privacy", "sub_category": "x", "source": "g"}
    image(src / "imgs" / "0.png")
    write_json(
        src / "data.json",
        [
            {**record, "instruction_id": 0, "image_path": "imgs/0.png"},
            {**record, "instruction_id": 1, "image_path": "../outside.png"},
        ],
    )
    report = convert(get_format("vlsbench"), src, tmp_path / "o.jsonl")
    assert (report.rows, report.skipped) == (1, 1)
    assert "leads out of the data set" in report.errors[0]


def test_a_bad_parquet_row_is_skipped_and_leaves_no_extracted_image(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    img = {"bytes": png_bytes(), "path": "a.png"}
    rows = [
        {"image": img, "safety_label": "Unsafe", "category": "Hate", "source": "Lexica"},
        {"image": img, "safety_label": "Unsafe", "category": None, "source": "Lexica"},
        {"image": {"bytes": None, "path": None}, "safety_label": "Safe", "category": "Hate", "source": "Lexica"},
    ]
    (tmp_path / "u").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "u" / "test-00000-of-00001.parquet")
    report = convert(get_format("unsafebench"), tmp_path / "u", tmp_path / "u.jsonl", split="test")
    assert (report.rows, report.skip_reasons) == (1, {"missing key": 2})
    assert report.errors[0].endswith("#1: missing key: 'category'")
    assert len(list((tmp_path / "u_images").iterdir())) == 1


def test_an_image_placeholder_in_a_source_prompt_is_removed(tmp_path: Path) -> None:
    image(tmp_path / "v" / "train" / "a.png")
    pair = {"instruction": "<image>\nWho is this?", "response": "I can't say."}
    item = {"id": "1", "image": "a.png", "safe": False, "harmful_category": "privacy"}
    write_json(tmp_path / "v" / "train.json", [{**item, "harmful_subcategory": "personal data", "instr-resp": [pair]}])
    convert(get_format("vlguard"), tmp_path / "v", tmp_path / "v.jsonl")
    assert json.loads((tmp_path / "v.jsonl").read_text())["prompt"] == "Who is this?"


def test_an_empty_source_answer_gives_a_request_only_row(tmp_path: Path) -> None:
    # VLGuard's test.json has 17 instructions whose "response" is "": the request is still a valid row
    image(tmp_path / "v" / "test" / "a.png")
    pairs = [
        {"safe_instruction": "What is shown?", "response": ""},
        {"unsafe_instruction": "Dox him.", "response": "No."},
    ]
    write_json(tmp_path / "v" / "test.json", [{"id": "1", "image": "a.png", "safe": True, "instr-resp": pairs}])
    report = convert(get_format("vlguard"), tmp_path / "v", tmp_path / "v.jsonl", split="test")
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert (report.rows, report.skipped) == (2, 0)
    assert "response" not in rows[0] and rows[1]["response"] == "No."
