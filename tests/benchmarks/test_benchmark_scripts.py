"""The benchmark scripts run on a CPU at tiny shapes and print their side-by-side ratios (no timing asserted)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from script_runner import ROOT, run_script

from psaguard.testing.llava import save_pretrained_pair
from psaguard.training.world.base_model import BaseVlmConfig, build_base_vlm

# Each test starts the script in a fresh process (~5-15 s apiece): `make test-slow` and CI run them, which keeps
# `make test` inside its 5-minute budget.
pytestmark = pytest.mark.slow


def run(name: str, *args: str) -> str:
    return run_script("benchmarks", name, *args)


@pytest.mark.parametrize(
    ("script", "args", "row"),
    [
        ("guard_overhead.py", ("--repeats", "1"), "safety modules / vision tower"),
        ("generation_overhead.py", ("--repeats", "1", "--new-tokens", "4", "--threads", "1"), "llm_tokens on"),
        ("monitor_overhead.py", ("--repeats", "1", "--new-tokens", "8", "--threads", "1"), "monitor every 8"),
    ],
)
def test_overhead_benchmarks_print_their_ratios(script: str, args: tuple[str, ...], row: str) -> None:
    out = run(script, *args)
    line = next(line for line in out.splitlines() if row in line)
    numbers = [float(word) for word in line.split() if word.replace(".", "", 1).isdigit()]
    assert numbers and all(n > 0 for n in numbers), line


def test_cpu_dtypes_times_both_dtypes_and_names_the_cpu() -> None:
    out = run("cpu_dtypes.py", "--tiny", "--repeats", "1", "--threads", "1")
    assert "(torch: " in out.splitlines()[0] and "psaguard's default here for a bfloat16 checkpoint: " in out
    ratios = [line for line in out.splitlines() if "bfloat16 / float32 time = " in line]
    assert len(ratios) == 2 and all(float(line.rsplit("= ", 1)[1]) > 0 for line in ratios), out


def test_classifier_only_footprint_counts_llava_7b_shapes() -> None:
    out = run("classifier_only_footprint.py")
    full = next(line for line in out.splitlines() if line.strip().startswith("full model") and "GiB" in line)
    assert "7,063,427,072" in full  # LLaVA-1.5-7B with llava-hf's 32064-token vocabulary
    assert "classifier-only     455,821,312" in out  # tower 303,507,456 + projector 20,979,712 + embeddings
    assert "1.70 GiB" in next(line for line in out.splitlines() if "455,821,312" in line)  # in float32


def test_family_guard_params_counts_the_released_sizes() -> None:
    table, not_counted = run("family_guard_params.py").split("\n\n", 1)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    # The configs reproduce the released models' sizes, so the guard's share is measured against the real model.
    assert rows["gemma-3-4b"][2] == "4,300,079,472" and rows["smolvlm-256m"][2] == "256,484,928"
    assert rows["qwen2-vl-2b"][-3:] == ["24", "x", "24"]
    assert all(int(row[3].replace(",", "")) > 0 for row in rows.values())
    # Releases without a published config here are named with the reason, not given a guessed size.
    for release in ("Qwen3.5-0.8B", "gemma-4-E2B-it", "Llama-4-Scout-17B-16E", "Kimi-K2.5", "LFM2-VL-450M"):
        assert f"{release} (" in not_counted and "known to this transformers" in not_counted


def test_cpu_7b_benchmark_runs_every_mode_at_tiny_shapes(tmp_path) -> None:
    out = run(
        "cpu_7b.py",
        "--tiny",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--classify-repeats",
        "1",
        "--load-repeats",
        "1",
        "--new-tokens",
        "3",
        "--guard-tokens",
        "2",
        "--stream-tokens",
        "9",
        "--workdir",
        str(tmp_path),
        "--json",
        str(tmp_path / "raw.json"),
    )
    header = out.splitlines()[0]
    assert "CPU " in header and "(torch: " in header  # the CPU and its instruction sets are named
    assert "default dtype here for a bf16 checkpoint: " in out
    ratios = dict(line.strip("| ").rsplit(" | ", 1) for line in out.splitlines() if " / " in line and "|" in line)
    assert any(name.startswith("separate guard / classifier-only classify in ") for name in ratios), ratios
    assert "classifier-only peak RSS / full-model peak RSS (while measuring)" in ratios
    # The response side: the monitored stream against the same stream unmonitored, and classify_response on a
    # 256-token answer against the separate guard prefilling image + prompt + that answer.
    assert "guarded stream, monitor on / off (every 8 tokens)" in ratios
    assert "separate guard judging the answer / classify_response (256-token answer)" in ratios
    assert 0 < float(ratios["monitor's response-head time / monitored stream (same runs)"]) < 1
    assert all(float(value) > 0 for value in ratios.values()), ratios
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert "float32" in raw["classifier_only"]  # the dtype every CPU runs fast is always measured
    assert raw["classifier_only"]["float32"][0]["matmul_size"] == 256  # --tiny does tiny work
    assert len(raw["full"]["separate_guard"]) == 1 and raw["full"]["peak_rss"] > raw["full"]["idle_rss"] > 0
    full = raw["full"]
    assert full["guard_response_prompt_tokens"] > full["guard_prompt_tokens"] + 256  # the answer is prefilled
    assert all(len(full[key]) == 1 for key in ("stream_monitor_on", "stream_monitor_off", "classify_response"))
    assert len(full["stream_monitor_judge_s"]) == 1 and full["stream_monitor_judge_s"][0] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["raw.json"]  # the checkpoint was deleted


def test_cpu_7b_runs_the_response_side_alone(tmp_path) -> None:
    # What the monitor-overhead run at 7B shapes uses: the streams and answers only, more rounds.
    args = ["--tiny", "--modes", "full", "--full-parts", "response", "--repeats", "2", "--stream-tokens", "9"]
    out = run("cpu_7b.py", *args, "--workdir", str(tmp_path), "--json", str(tmp_path / "raw.json"))
    full = json.loads((tmp_path / "raw.json").read_text())["full"]
    assert "separate_guard" not in full and "classify_b1" not in full
    assert len(full["stream_monitor_on"]) == len(full["stream_monitor_judge_s"]) == 2
    assert "guarded stream, monitor on / off (every 8 tokens)" in out and "plain generate" not in out


def _cpu_7b(tmp_path: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    work = tmp_path / "work"
    work.mkdir()
    return [sys.executable, str(ROOT / "benchmarks" / "cpu_7b.py"), "--tiny", "--workdir", str(work), *args], env


def _gone(pid: int, within_s: float = 0.0) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if state == "Z" or time.monotonic() > deadline:
            return state == "Z"
        time.sleep(0.1)


def _worker_pid(text: str) -> int:
    return int(re.search(r"\(pid (\d+)\)", text).group(1))


def test_cpu_7b_kills_its_worker_group_on_timeout(tmp_path) -> None:
    command, env = _cpu_7b(tmp_path, "--spawn", "--worker-timeout", "0.5", "--modes", "classifier")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0 and "ran past --worker-timeout 0.5 s; killed" in result.stderr
    assert _gone(_worker_pid(result.stderr))
    assert list((tmp_path / "work").iterdir()) == []  # and the checkpoint is removed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_cpu_7b_worker_dies_with_a_killed_driver(tmp_path) -> None:
    command, env = _cpu_7b(tmp_path, "--spawn", "--modes", "classifier")
    driver = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        line = next(line for line in driver.stderr if "(pid " in line)  # the worker has just started
        worker = _worker_pid(line)
        assert not _gone(worker)
        driver.send_signal(signal.SIGKILL)  # as a test runner's timeout kills it: no handler runs
        driver.wait(timeout=30)
        assert _gone(worker, within_s=10)
    finally:
        driver.kill()
        driver.wait()


def _gpu_suite(tmp_path, *skip: str) -> dict:
    out = tmp_path / "out"
    tables = run("gpu_suite.py", "--tiny", "--out", str(out), "--scratch", str(tmp_path), "--skip", *skip)
    assert (out / "tables.md").read_text().strip() == tables.strip()
    raw = json.loads((out / "raw.json").read_text())
    problems = {
        name: raw[name] for name in raw if isinstance(raw[name], dict) and {"error", "skipped"} & set(raw[name])
    }
    assert not problems, problems
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["raw.json", "tables.md", *(["pytest_gpu.txt"] * ("pytest" not in skip))]
    )
    return raw


# two fresh processes computing in bfloat16, which CPUs without a native path emulate: ~30 s
def test_gpu_suite_builds_its_checkpoint_and_runs_a_section_at_tiny_shapes_on_the_cpu(tmp_path) -> None:
    # The driver, the checkpoint build and one section, each in its own process; the slow test runs them all.
    raw = _gpu_suite(tmp_path, "pytest", "nf4", "stage1", "stage2_r256", "stage2_r16")
    assert set(raw["bf16"]["classify_batch_s"]) == {"1", "2", "4"}
    assert all(t > 0 for times in raw["bf16"]["generate_s"].values() for t in times)
    assert {"nf4", "stage1", "stage2_r16"}.isdisjoint(raw)


# every section (NF4 generation, both training stages) and the GPU tests: minutes on a CPU
def test_gpu_suite_runs_whole_with_pytest_at_tiny_shapes_on_the_cpu(tmp_path) -> None:
    raw = _gpu_suite(tmp_path)
    assert raw["pytest"]["returncode"] in (0, 5), raw["pytest"]  # gpu tests skip without CUDA
    assert set(raw["nf4"]["generate_s"]) == {"plain_b1", "guarded_b1", "plain_b2", "guarded_b2"}
    for stage in ("stage1", "stage2_r16", "stage2_r256"):
        assert raw[stage]["samples_per_s"] and all(rate > 0 for rate in raw[stage]["samples_per_s"])


def test_vision_budget_bounds_the_patches_it_classifies() -> None:
    out = run("vision_budget.py", "--sizes", "224,448", "--budget", "128", "--repeats", "1")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("224x", "448x"))]
    assert [(int(row[1]), int(row[2])) for row in rows] == [(256, 100), (1024, 100)]  # processor's; judged
    assert all(float(row[3]) > 0 and float(row[5]) > 0 for row in rows)


@pytest.mark.parametrize(
    ("workload", "guard"),
    [((), "the world demo guard"), (("--workload", "--tiny"), "classifier-only, random weights, tiny shapes")],
)
def test_category_cost_prints_the_add_time_and_the_classify_ratio(workload: tuple[str, ...], guard: str) -> None:
    out = run("category_cost.py", "--repeats", "2", "--categories", "2", "--examples", "2", *workload)
    assert "add_category (2 examples + 2 negatives): median" in out
    ratio = next(line for line in out.splitlines() if line.startswith("classify with 2 categories / without:"))
    assert float(ratio.split(":")[1].split()[0]) > 0
    assert guard in ratio


def test_category_world_runs_end_to_end_at_a_tiny_size(tmp_path) -> None:
    args = ["--out", str(tmp_path), "--steps", "4", "--n-train", "120", "--n-test", "60", "--ks", "1", "2"]
    out = run("category_world.py", *args, "--draws", "1", "--negatives", "4")
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert [(row["method"], row["k"]) for row in report["summary"]] == [
        ("prototype", 1),
        ("prototype", 2),
        ("logistic", 1),
        ("logistic", 2),
    ]
    assert (tmp_path / "f1_vs_k.png").is_file()
    assert set(report["head_type_f1_on_held_out_types"]) == {
        f"{code}{part}" for code in ("privacy", "fairness") for part in ("", "/familiar_rows")
    }
    assert all(
        0 <= row[code]["mean_familiar_rows"] <= 1 for row in report["summary"] for code in ("privacy", "fairness")
    )
    # the script's fast path and add_category + classify_batch give the same verdicts
    assert "verdicts identical to the fast path: {'prototype': '60/60', 'logistic': '60/60'}" in out


def test_category_world_trains_its_guard_on_another_base_model(tmp_path) -> None:
    # a world base model as 'psaguard world base' saves one (untrained here: only the loading path is at stake)
    config = BaseVlmConfig(text_hidden=64, vision_hidden=64, vision_layers=2, tie_embeddings=True)
    model, processor = build_base_vlm(config)
    save_pretrained_pair(tmp_path / "base", model, processor)
    out = tmp_path / "run"
    args = ["--out", str(out), "--base", str(tmp_path / "base"), "--steps", "2", "--n-train", "80", "--n-test", "40"]
    run("category_world.py", *args, "--ks", "1", "--draws", "1", "--negatives", "4")
    report = json.loads((out / "metrics.json").read_text())
    assert report["args"]["base"] == str(tmp_path / "base")
    assert json.loads((out / "stage1" / "training_config.json").read_text())["model"] == str(tmp_path / "base")
