"""examples/recipe_real_size.sh runs end to end (convert -> stage 1 -> stage 2 -> bench) at tiny size on the CPU:
the real-size configs with the shipped demo model, the VLGuard and SPA-VL layouts, and a one-step cap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_layouts import LAYOUTS

from psaguard.cli.demo import demo_model_dir
from psaguard.training.config import Stage1Config, Stage2Config, load_config

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "examples" / "recipe_real_size.sh"
CONFIGS = ROOT / "examples" / "configs"
TINY = (
    "--set max_steps=1 --set cpu=true --set quant.load_in_4bit=false --set model_dtype=float32 "
    "--set mixed_precision='no' --set batch_size=2 --set grad_accum=1 --set gradient_checkpointing=false "
    "--set progress_bar=false --set plots=false --set eval_every=null --set max_length=256"
)


def _data(root: Path) -> Path:
    pytest.importorskip("pyarrow")
    data = root / "data"
    LAYOUTS["vlguard"](data / "VLGuard")
    shutil.copy(data / "VLGuard" / "test.json", data / "VLGuard" / "train.json")
    shutil.copytree(data / "VLGuard" / "test", data / "VLGuard" / "train")
    LAYOUTS["spa-vl"](data / "SPA-VL")
    return data


RECIPES = {  # recipe -> (model id, config.model_type)
    "llava15_7b": ("llava-hf/llava-1.5-7b-hf", "llava"),
    "qwen25vl_7b": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"),
    "qwen35_9b": ("Qwen/Qwen3.5-9B", "qwen3_5"),
    "gemma4_e4b": ("google/gemma-4-E4B-it", "gemma4"),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_real_size_config_exists_for_both_gpus_and_parses(recipe: str) -> None:
    model, _ = RECIPES[recipe]
    for stage, cls in (("stage1", Stage1Config), ("stage2", Stage2Config)):
        for gpu in ("80gb", "24gb_nf4"):
            path = CONFIGS / f"{recipe}_{stage}_{gpu}.yaml"
            text = path.read_text()
            assert "ESTIMATES" in text and "unmeasured" in text
            overrides = ["train_data=t.jsonl", "output_dir=runs/x"] + (
                ["guard=runs/stage1"] if stage == "stage2" else []
            )
            cfg = load_config(cls, path, overrides)
            assert cfg.model == model and cfg.quant.load_in_4bit == (gpu == "24gb_nf4")
            if stage == "stage1":  # VLGuard and SPA-VL rows label their answers: the response head learns them
                assert cfg.guard.head.response_head
    assert set(RECIPES) == {p.name.split("_stage")[0] for p in CONFIGS.glob("*_stage1_80gb.yaml")}


@pytest.mark.parametrize("recipe", ["qwen35_9b", "gemma4_e4b"])
def test_the_newest_families_resolve_to_the_generic_adapter(recipe: str) -> None:
    """The pinned transformers knows their model types, and psaguard's generic adapter takes them (on the meta
    device, from transformers' default config of the type: nothing is downloaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from psaguard.backbones.generic import GenericBackbone
    from psaguard.backbones.registry import resolve_backbone

    _, model_type = RECIPES[recipe]
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.for_model(model_type))
    backbone = resolve_backbone(model)
    assert isinstance(backbone, GenericBackbone) and backbone.family == model_type


def test_the_script_names_the_recipes_when_one_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "RECIPE": "nope", "DATA": str(tmp_path), "PSAGUARD": "false"}
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "no config" in result.stderr and all(name in result.stderr for name in RECIPES)


@pytest.mark.slow
def test_recipe_script_runs_end_to_end_at_tiny_size(tmp_path: Path) -> None:
    data = _data(tmp_path)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RECIPE": "llava15_7b",
        "GPU": "24gb_nf4",
        "DATA": str(data),
        "RUNS": str(tmp_path / "runs"),
        "MODEL": str(demo_model_dir()),
        "PSAGUARD": f"{sys.executable} -m psaguard.cli",
        "EXTRA": TINY,
        "EXTRA1": "--set num_safe=null --set calibrate=false",
        "EXTRA2": "--set lora.r=4 --set warmup_steps=0",
    }
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900, env=env, start_new_session=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert {row["meta"]["dataset"] for row in train} == {"vlguard", "spa-vl"}
    assert {row.get("response_harmful") for row in train} == {False, True}  # SPA-VL's rejected answers
    assert (tmp_path / "runs" / "stage2" / "adapter").is_dir()
    bench = json.loads((tmp_path / "runs" / "bench" / "bench.json").read_text())
    assert [s["suite"] for s in bench["suites"]] == ["vlguard_test"] and bench["suites"][0]["examples"] == 4
    assert {p["suite"] for p in bench["peers"]} == {"vlguard"}  # the shipped published numbers on VLGuard
    assert "report:" in result.stdout
