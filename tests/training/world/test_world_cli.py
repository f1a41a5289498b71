from __future__ import annotations

import argparse
import json
from typing import get_args

import pytest
from PIL import Image

from psaguard.training.world.base_model import VisionStyles
from psaguard.training.world.build import read_rows
from psaguard.training.world.cli import register
from psaguard.training.world.experiment_spec import PRESETS, ExperimentSpec, Preset
from psaguard.training.world.language import LanguageCorpus


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psaguard")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_world_build_writes_a_world_with_the_overridden_sizes(tmp_path, capsys):
    args = _parser().parse_args(
        ["world", "build", "--out", str(tmp_path), "--size", "tiny", "--seed", "4", "--image-size", "24",
         "--n-train", "9", "--n-val", "3", "--n-test", "6", "--n-attack", "2"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == {"train": 9, "val": 3, "test": 6, "attack": 2}
    rows = read_rows(tmp_path, "train")
    assert len(rows) == 9
    assert Image.open(tmp_path / rows[0].image).size == (24, 24)
    assert json.loads((tmp_path / "world.json").read_text())["spec"]["seed"] == 4


def test_world_samples_draws_a_sheet_of_distinct_cells(tmp_path):
    out = tmp_path / "sheet.png"
    args = _parser().parse_args(["world", "samples", "--out", str(out)])
    assert args.func(args) == 0
    sheet = Image.open(out).convert("RGB")
    assert sheet.width > 1000
    # 8 rows x 12 styles of 96 px cells: every cell differs from its neighbours.
    cells = [sheet.crop((84 + c * 100, 18 + r * 100, 84 + c * 100 + 96, 18 + r * 100 + 96)).tobytes()
             for r in range(8) for c in range(12)]  # fmt: skip
    assert len(set(cells)) == len(cells)


@pytest.mark.slow  # vision pretraining, SFT and scoring of a small world: tens of seconds
def test_world_base_saves_a_loadable_model_and_its_scores(small_world, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "base"
    args = _parser().parse_args(
        [
            "world",
            "base",
            "--world",
            str(small_world),
            "--out",
            str(out),
            "--steps",
            "2",
            "--vision-steps",
            "2",
            "--eval-rows",
            "8",
            "--vision-styles",
            "all",
            "--language",
            "paraphrases",
            "--tie-embeddings",
        ]
    )
    assert args.func(args) == 0
    result = json.loads((out / "base_vlm.json").read_text())
    assert result["sft"]["steps"] == 2 and 0.0 <= result["vqa_test"] <= 1.0
    config = result["config"]
    assert (config["vision_styles"], config["language"], config["tie_embeddings"]) == ("all", "paraphrases", True)
    assert LlavaForConditionalGeneration.from_pretrained(out).config.vision_config.patch_size == 8
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    assert tokenizer.convert_tokens_to_ids("spiral") != tokenizer.unk_token_id


def test_world_base_and_run_offer_exactly_the_config_choices():
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    world = next(a for a in commands.choices["world"]._actions if isinstance(a, argparse._SubParsersAction))
    options = {a.dest: a.choices for a in world.choices["base"]._actions}
    assert tuple(options["vision_styles"]) == get_args(VisionStyles)
    assert tuple(options["language"]) == get_args(LanguageCorpus)
    presets = {a.dest: a.choices for a in world.choices["run"]._actions}["preset"]
    assert tuple(presets) == get_args(Preset) and set(presets) == set(PRESETS)
    assert all(ExperimentSpec.from_preset(name).preset == name for name in presets)  # every preset validates
