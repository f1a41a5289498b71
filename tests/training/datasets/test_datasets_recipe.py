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

from psaguard.demo import demo_model_dir

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


@pytest.mark.parametrize("recipe", ["llava15_7b", "qwen25vl_7b"])
def test_every_real_size_config_exists_for_both_gpus(recipe: str) -> None:
    for stage in ("stage1", "stage2"):
        for gpu in ("80gb", "24gb_nf4"):
            text = (CONFIGS / f"{recipe}_{stage}_{gpu}.yaml").read_text()
            assert "ESTIMATES" in text and ("load_in_4bit: true" in text) == (gpu == "24gb_nf4")


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
    assert (tmp_path / "runs" / "stage2" / "adapter").is_dir()
    bench = json.loads((tmp_path / "runs" / "bench" / "bench.json").read_text())
    assert [s["suite"] for s in bench["suites"]] == ["vlguard_test"] and bench["suites"][0]["examples"] == 4
    assert "report:" in result.stdout
