"""``psaguard category add / list / remove`` on saved guards, with rows in the training JSONL schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from category_helpers import negatives, scam_examples, scam_request

from psaguard import SafetyGuard
from psaguard.cli.main import main
from psaguard.config import CONFIG_NAME


def _write_rows(directory, name, pairs, safe_type):
    lines = []
    for index, (image, prompt) in enumerate(pairs):
        image.save(directory / f"{name}-{index}.png")
        row = {
            "image": f"{name}-{index}.png",
            "prompt": prompt,
            "response": "ok",
            "safe_level": 3,
            "safe_type": safe_type,
        }
        lines.append(json.dumps(row))
    path = directory / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def saved(tmp_path, tiny_model, tiny_processor, images):
    torch.manual_seed(0)
    SafetyGuard.attach(tiny_model, tiny_processor).save_pretrained(tmp_path / "guard")
    examples = _write_rows(tmp_path, "scam", scam_examples(images), "scam")  # rows may carry the new code
    benign = _write_rows(tmp_path, "benign", negatives(images), "safe")
    return tmp_path, examples, benign


def _add(tmp_path, tiny_dir, examples, benign, *extra):
    args = ["category", "add", "--guard", str(tmp_path / "guard"), "--model", str(tiny_dir), "--code", "scam"]
    return main(
        [*args, "--level", "3", "--examples", examples, "--negatives", benign, "--out", str(tmp_path / "g2"), *extra]
    )


def test_add_list_remove_round_trip(saved, tiny_dir, tiny_model, tiny_processor, images, capsys):
    tmp_path, examples, benign = saved
    assert _add(tmp_path, tiny_dir, examples, benign, "--name", "Scam", "--action", "block") == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["code"], added["level"], added["action"], added["examples"], added["negatives"]) == (
        "scam",
        3,
        "block",
        4,
        4,
    )

    assert main(["category", "list", "--guard", str(tmp_path / "g2")]) == 0
    assert [c["code"] for c in json.loads(capsys.readouterr().out)] == ["scam"]
    verdict = SafetyGuard.from_pretrained(tmp_path / "g2", tiny_model, tiny_processor).classify(*scam_request(images))
    assert (verdict.rule, verdict.action) == ("category:scam/level:reject", "block")

    remove = ["category", "remove", "--guard", str(tmp_path / "g2"), "--model", str(tiny_dir), "--code", "scam"]
    assert main([*remove, "--out", str(tmp_path / "g3")]) == 0
    capsys.readouterr()
    assert main(["category", "list", "--guard", str(tmp_path / "g3")]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_taxonomy_code_is_refused_with_exit_code_2(saved, tiny_dir, capsys):
    tmp_path, examples, _ = saved
    args = ["category", "add", "--guard", str(tmp_path / "guard"), "--model", str(tiny_dir), "--code", "privacy"]
    assert main([*args, "--level", "3", "--examples", examples, "--out", str(tmp_path / "g2")]) == 2
    assert "CategoryError" in capsys.readouterr().err and not (tmp_path / "g2").exists()


def test_a_multi_image_row_is_a_dataset_error(saved, tiny_dir, capsys):
    tmp_path, examples, benign = saved
    rows = [json.loads(line) for line in Path(examples).read_text().splitlines()]
    rows[1]["image"] = [rows[0]["image"], rows[1]["image"]]
    (tmp_path / "two.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    assert _add(tmp_path, tiny_dir, str(tmp_path / "two.jsonl"), benign) == 2
    err = capsys.readouterr().err
    assert "DatasetError" in err and "two.jsonl:2" in err and "one image each" in err


def test_list_refuses_an_edited_config(saved, tiny_dir, capsys):
    tmp_path, examples, benign = saved
    assert _add(tmp_path, tiny_dir, examples, benign) == 0
    config = json.loads((tmp_path / "g2" / CONFIG_NAME).read_text())
    config["categories"][0]["action"] = "allow"
    (tmp_path / "g2" / CONFIG_NAME).write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["category", "list", "--guard", str(tmp_path / "g2")]) == 2
    assert "CheckpointError" in capsys.readouterr().err
