from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from psaguard.training.world.build import read_rows
from psaguard.training.world.experiment import ExperimentSpec, capability_rows, run_experiment
from psaguard.training.world.runs import torch_threads
from psaguard.training.world.scoring import is_refusal


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("world_run")
    try:
        yield run_experiment(ExperimentSpec.from_preset("ci"), out), out
    finally:
        torch.set_num_threads(threads)


def _majority_macro_f1(labels: list[int], num_present: int) -> float:
    """Macro-F1 of always predicting the most common class: only that class scores, 2p / (1 + p)."""
    p = Counter(labels).most_common(1)[0][1] / len(labels)
    return 2 * p / (1 + p) / num_present


def _entropy(labels: list[int]) -> float:
    counts = torch.tensor(list(Counter(labels).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return float(-(p * p.log()).sum())


@pytest.mark.slow  # the whole `ci` world run (base SFT, both stages, report): over a minute
def test_ci_run_learns_above_the_majority_baseline(ci_run):
    result, out = ci_run
    test = read_rows(out / "world", "test")
    types = [r.safe_type for r in test]
    chance = _majority_macro_f1(types, len(set(types)))
    head = result.metrics.heads["mean"].types
    assert head.macro_f1() > 1.5 * chance  # a head that learned nothing predicts the majority class
    train = read_rows(out / "world", "train")
    prior = _entropy([r.safe_level for r in train]) + _entropy([r.safe_type for r in train])
    _, last = result.stage1_loss
    assert last < prior - 0.2  # below the cross-entropy of predicting the label frequencies
    base_first, base_last = result.base_loss
    assert base_last < 0.5 * base_first  # the base VLM learned the world's VQA


@pytest.mark.slow  # the whole `ci` world run (base SFT, both stages, report): over a minute
def test_ci_run_writes_the_report_and_trained_models(ci_run):
    result, _ = ci_run
    report = result.report.read_text()
    assert "## Goals (held-out test split)" in report and "Pooling ablation" in report
    assert {"suffix", "typo", "none"} <= set(result.metrics.attacks)
    assert (result.report.parent / "vqa.png").stat().st_size > 1000
    saved = json.loads((result.report.parent / "metrics.json").read_text())
    assert saved["primary"] == "mean" and saved["baseline"] == "first"
    assert (result.guard_dir / "adapter").is_dir() and (result.base_dir / "config.json").is_file()


def test_capability_rows_keep_true_labels_out_of_the_base_sft(small_world):
    rows = read_rows(small_world, "train")
    plain = capability_rows(rows)
    assert all(r.safe_level == 0 for r in plain)
    relabelled = [r for r in plain if r.meta.kind == "image_risk"]
    assert relabelled and all(r.response == r.meta.answer for r in relabelled)
    assert not any(r.meta.kind in ("harmful", "joint") and r.meta.twin_of is None for r in plain)


@pytest.mark.parametrize(
    ("action", "text", "refused"),
    [
        ("refuse", "", True),
        ("block", "", True),
        ("hint", "I have to be careful here because this involves privacy.", True),
        ("allow", "three red circles", False),
        ("hint", "three red circles", False),
    ],
)
def test_refusal_is_the_action_or_a_refusing_text(action, text, refused):
    assert is_refusal(action, text) is refused


@pytest.mark.slow  # the gpu preset end to end, shrunk: over a minute
def test_the_gpu_recipe_runs_end_to_end_when_shrunk(tmp_path):
    """The gpu preset (wide tower, head-only Stage I, QLoRA Stage II) on a CPU, every count shrunk."""
    fields = ExperimentSpec.from_preset("gpu").model_dump()
    fields["world"].update(n_train=240, n_val=16, n_test=80, n_attack=20)
    fields["base"].update(vision_corpus=300, vision_steps=10, steps=10, text_hidden=64, vision_hidden=64)
    fields["stage1"].update(steps=10)
    fields["stage2"].update(steps=3, batch_size=4)
    threads = torch.get_num_threads()
    try:
        result = run_experiment(ExperimentSpec.model_validate({**fields, "threads": 1}), tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert result.metrics.notes["stage II"] == "QLoRA (NF4) r=16"
    assert (result.guard_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert result.report.is_file() and 0.0 <= result.metrics.heads["mean"].types.macro_f1() <= 1.0


@pytest.mark.slow  # the whole `ci` world run (base SFT, both stages, report): over a minute
def test_demo_assets_hold_model_guard_examples_and_the_runs_numbers(ci_run, tmp_path):
    from psaguard.cli.demo import _headline
    from psaguard.training.world.demo_assets import export_demo_assets

    result, out = ci_run
    headline = result.metrics.headline()
    dest = export_demo_assets(result.base_dir, result.guard_dir, out / "world", tmp_path / "demo", headline=headline)
    assert (dest / "model" / "config.json").is_file() and (dest / "guard" / "psaguard_config.json").is_file()
    examples = [json.loads(line) for line in (dest / "examples.jsonl").read_text().splitlines()]
    assert examples and all((dest / e["image"]).is_file() for e in examples)
    assert json.loads((dest / "headline.json").read_text()) == headline
    assert set(headline) == {"type_macro_f1", "refusal_unsafe", "over_refusal_safe"}
    assert f"head type macro-F1 {headline['type_macro_f1']:.2f}" in _headline(dest)


def test_the_runs_thread_count_is_restored_afterwards_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("a step failed")
    assert torch.get_num_threads() == before


@pytest.mark.slow  # a shortened `ci` run in a world that labels answers: about a minute
def test_a_world_with_harmful_answers_reports_the_response_head_and_the_monitor(tmp_path):
    fields = ExperimentSpec.from_preset("ci").model_dump()
    fields["world"]["harmful_answers"] = 0.5
    fields["stage1"].update(steps=80, weight_decay=0.01, decay_norms_and_biases=True)
    fields["stage2"].update(steps=2)
    with torch_threads(1):
        result = run_experiment(ExperimentSpec.model_validate(fields), tmp_path)
    stage1 = json.loads((tmp_path / "stage1-mean" / "training_config.json").read_text())
    assert (stage1["weight_decay"], stage1["decay_norms_and_biases"]) == (0.01, True)  # they reach the trainer
    test = read_rows(tmp_path / "world", "test")
    requests = [r for r in test if r.response_harmful is not True]
    harmful = len(test) - len(requests)
    metrics = result.metrics
    # the request side reads each request once; the answer side every labelled answer
    assert metrics.heads["mean"].types.total == len(requests) and harmful > 0
    assert metrics.generation is not None and metrics.generation.n_unsafe + metrics.generation.n_safe == len(requests)
    assert metrics.responses is not None and metrics.responses.examples == len(test)
    assert metrics.monitor is not None and len(metrics.monitor.answer_tokens) == harmful
    assert metrics.headline()["response_f1"] == round(metrics.responses.detection.f1, 3)
    report = result.report.read_text()
    assert "## Judging the answers" in report and "Response-harm F1" in report
