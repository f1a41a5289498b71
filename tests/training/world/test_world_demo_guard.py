"""The demo guard's retraining: fresh rows, a response head, examples drawn at random from the test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from psaguard import SafetyGuard
from psaguard.cli.demo import HARMFUL_ANSWER, demo_guard_dir, demo_model_dir
from psaguard.cli.main import build_parser
from psaguard.training.world.build import WorldSpec, build_world, read_rows
from psaguard.training.world.demo_assets import DEMO_KINDS, sample_demo_rows
from psaguard.training.world.demo_guard import DemoGuardSpec, resave_guard, retrain_demo_guard
from psaguard.training.world.experiment import ExperimentSpec


@pytest.fixture(scope="module")
def answer_test_rows(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo_world")
    build_world(out, WorldSpec(seed=2, image_size=16, n_train=0, n_val=0, n_test=200, n_attack=0, harmful_answers=0.5))
    return read_rows(out, "test")


def test_demo_rows_are_drawn_at_random_reproducibly_one_per_kind(answer_test_rows) -> None:
    picked = sample_demo_rows(answer_test_rows, seed=0)
    assert [r.id for r in picked] == [r.id for r in sample_demo_rows(answer_test_rows, seed=0)]  # seeded
    draws = {tuple(r.id for r in sample_demo_rows(answer_test_rows, seed=s)) for s in range(6)}
    assert len(draws) > 1  # drawn, not the first of each kind
    *requests, harmful = picked
    assert len(requests) == len(DEMO_KINDS)
    kinds = [("joint twin" if r.meta.twin_of else r.meta.kind) for r in requests]
    assert kinds == list(DEMO_KINDS)
    assert requests[4].meta.twin_of == requests[3].id  # the joint row's own safe twin
    assert all(r.response_harmful is not True for r in requests)
    assert harmful.response_harmful is True and harmful.safe_level == 1


def test_fresh_rows_give_stage_one_a_row_per_example_it_consumes() -> None:
    spec = ExperimentSpec.from_preset("ci")
    assert spec.built_world == spec.world  # off: the preset's rows, repeated
    fresh = ExperimentSpec.from_preset("ci", fresh_rows=True)
    assert fresh.built_world.n_train == fresh.stage1.steps * fresh.stage1.batch_size > spec.world.n_train
    assert fresh.built_world.n_test == spec.world.n_test  # held-out splits unchanged


@pytest.mark.slow  # a few Stage I steps on the shipped demo model and a scoring pass: ~30 s
def test_retraining_adds_a_response_head_keeps_the_model_and_exports_the_demo(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    export = tmp_path / "assets"
    shutil.copytree(demo_guard_dir().parent, export)
    # a guard saved without a response head, as the demo guard was before this retraining
    headless = resave_guard(demo_model_dir(), demo_guard_dir(), tmp_path / "headless", response_head=False)
    spec = DemoGuardSpec(steps=3, batch_size=4, n_val=16, n_test=60, max_new_tokens=4)
    try:
        result = retrain_demo_guard(spec, tmp_path / "run", demo_model_dir(), headless, export=export)
    finally:
        torch.set_num_threads(threads)
    assert result.rows["train"] == 3 * 4  # one fresh row per example the steps consume
    assert result.old.response_f1 is None and result.new.response_f1 is not None
    model = LlavaForConditionalGeneration.from_pretrained(export / "model")
    processor = AutoProcessor.from_pretrained(export / "model")
    guard = SafetyGuard.from_pretrained(export / "guard", model, processor)
    assert guard.classifier.has_response_head  # loads on the unchanged model: its fingerprint matches
    before = SafetyGuard.from_pretrained(headless, model, processor)
    # no LM loss: the llm_tokens the merged Stage II LoRA was trained with stay as they were
    assert torch.equal(guard.modules.llm_tokens, before.modules.llm_tokens)
    examples = [json.loads(line) for line in (export / "examples.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in examples] == [*DEMO_KINDS, HARMFUL_ANSWER]
    assert all((export / e["image"]).is_file() for e in examples)
    assert json.loads((export / "headline.json").read_text())["response_f1"] == round(result.new.response_f1, 3)


def test_the_cli_runs_it_as_world_demo_guard() -> None:
    args = build_parser().parse_args(["world", "demo-guard", "--out", "runs/x", "--steps", "3", "--export", "assets"])
    assert (args.steps, args.seed, str(args.export)) == (3, 0, "assets")
    assert args.func.__name__ == "_demo_guard"
