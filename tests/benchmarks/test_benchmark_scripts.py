"""The benchmark scripts run on a CPU at tiny shapes and print their side-by-side ratios (no timing asserted)."""

from __future__ import annotations

import json

import pytest
from script_runner import run_script


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


def test_classifier_only_footprint_counts_llava_7b_shapes() -> None:
    out = run("classifier_only_footprint.py")
    full = next(line for line in out.splitlines() if line.strip().startswith("full model") and "GiB" in line)
    assert "7,063,427,072" in full  # LLaVA-1.5-7B with llava-hf's 32064-token vocabulary
    assert "classifier-only     434,841,600" in out


def test_family_guard_params_counts_the_released_sizes() -> None:
    rows = {line.split()[0]: line.split() for line in run("family_guard_params.py").splitlines()[1:]}
    # The configs reproduce the released models' sizes, so the guard's share is measured against the real model.
    assert rows["gemma-3-4b"][2] == "4,300,079,472" and rows["smolvlm-256m"][2] == "256,484,928"
    assert rows["qwen2-vl-2b"][-3:] == ["24", "x", "24"]
    assert all(int(row[3].replace(",", "")) > 0 for row in rows.values())


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
        "--workdir",
        str(tmp_path),
        "--json",
        str(tmp_path / "raw.json"),
    )
    ratios = dict(line.strip("| ").rsplit(" | ", 1) for line in out.splitlines() if " / " in line and "|" in line)
    assert "separate guard / classifier-only classify (latency, batch 1)" in ratios
    assert "classifier-only peak RSS / full-model peak RSS (while measuring)" in ratios
    assert all(float(value) > 0 for value in ratios.values()), ratios
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert len(raw["full"]["separate_guard"]) == 1 and raw["full"]["peak_rss"] > raw["full"]["idle_rss"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["raw.json"]  # the checkpoint was deleted


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


def test_gpu_suite_builds_its_checkpoint_and_runs_a_section_at_tiny_shapes_on_the_cpu(tmp_path) -> None:
    # The driver, the checkpoint build and one section, each in its own process; the slow test runs them all.
    raw = _gpu_suite(tmp_path, "pytest", "nf4", "stage1", "stage2_r256", "stage2_r16")
    assert set(raw["bf16"]["classify_batch_s"]) == {"1", "2", "4"}
    assert all(t > 0 for times in raw["bf16"]["generate_s"].values() for t in times)
    assert {"nf4", "stage1", "stage2_r16"}.isdisjoint(raw)


@pytest.mark.slow  # every section (NF4 generation, both training stages) and the GPU tests: minutes on a CPU
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
