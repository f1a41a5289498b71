"""The benchmark scripts run on a CPU at tiny shapes and print their side-by-side ratios (no timing asserted)."""

from __future__ import annotations

import pytest
from script_runner import run_script


def run(name: str, *args: str) -> str:
    return run_script("benchmarks", name, *args)


@pytest.mark.parametrize(
    ("script", "args", "row"),
    [
        ("guard_overhead.py", ("--repeats", "1"), "safety modules / vision tower"),
        ("generation_overhead.py", ("--repeats", "1", "--new-tokens", "4", "--threads", "1"), "llm_tokens on"),
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
