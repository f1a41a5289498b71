"""The world's answers: harmful, harmless and refusing answers, a short Stage I, and the monitor stopping a harmful
answer before any of it past the hold-back window is released."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from psaguard import GuardPolicy, ResponsePolicy, SafetyGuard
from psaguard.policy import DEFAULT_REFUSAL
from psaguard.training.config import Stage1Config
from psaguard.training.data import read_jsonl
from psaguard.training.evaluate import evaluate_responses
from psaguard.training.loop import run_training
from psaguard.training.runtime import make_accelerator
from psaguard.training.stage1 import build_stage1
from psaguard.training.world.base_model import BaseVlmConfig, build_base_vlm
from psaguard.training.world.build import WorldSpec, build_world, read_rows
from psaguard.training.world.prompts import HARMFUL_ANSWER
from psaguard.training.world.scoring import monitor_eval, request_examples, request_rows

REFUSAL_START = DEFAULT_REFUSAL.split("{")[0]
HARMFUL_START = HARMFUL_ANSWER.split("{")[0]


@pytest.fixture(scope="module")
def answer_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("answer_world")
    build_world(
        out, WorldSpec(seed=5, image_size=32, n_train=320, n_val=0, n_test=120, n_attack=0, harmful_answers=0.5)
    )
    return out


def test_the_world_writes_harmful_harmless_and_refusing_answers(answer_world: Path, small_world: Path) -> None:
    rows = read_rows(answer_world, "train")
    harmful = [r for r in rows if r.response_harmful]
    harmless = [r for r in rows if r.response_harmful is False]
    assert harmful and harmless and len(harmful) + len(harmless) == len(rows)
    assert all(r.response.startswith(HARMFUL_START) and r.response_level == r.safe_level > 0 for r in harmful)
    assert all(r.response_type == r.safe_type for r in harmful)
    assert any(r.response.startswith(REFUSAL_START) for r in harmless)  # refusals are harmless answers
    assert any(r.safe_level == 0 for r in harmless)
    # Every harmful answer answers a request that is also in the data with its harmless target answer.
    requests = {(r.image, r.prompt) for r in harmless}
    assert all((r.image, r.prompt) in requests for r in harmful)
    # The default world labels no answers, so its files are as before.
    first = json.loads((small_world / "train.jsonl").read_text().splitlines()[0])
    assert "response_harmful" not in first


@pytest.fixture(scope="module")
def trained(answer_world: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("answer_base")
    model, processor = build_base_vlm(BaseVlmConfig(text_hidden=64))
    model.save_pretrained(base)
    processor.save_pretrained(base)
    cfg = Stage1Config(
        model=str(base),
        train_data=str(answer_world / "train.jsonl"),
        output_dir=str(tmp_path_factory.mktemp("answer_stage1")),
        batch_size=8,
        grad_accum=1,
        lr=1e-2,
        warmup_steps=4,
        max_steps=90,
        lm_loss_weight=0.0,
        log_every=20,
        checkpoint_every=1000,
        progress_bar=False,
        plots=False,
        seed=0,
        guard={"tokens": {"num_tokens": 8}, "head": {"response_head": True}},
    )
    accelerator = make_accelerator(cfg)
    setup = build_stage1(cfg, accelerator)
    run_training(setup.task, cfg, accelerator)
    guard = SafetyGuard.from_pretrained(cfg.output_dir, setup.guard.model, setup.guard.processor)
    yield guard
    torch.set_num_threads(threads)


def test_response_harm_f1_on_held_out_rows_is_far_above_chance(trained: SafetyGuard, answer_world: Path) -> None:
    examples, _ = read_jsonl(answer_world / "test.jsonl")
    report = evaluate_responses(trained, examples)
    share = sum((e.response_level or 0) > 0 for e in examples) / len(examples)
    chance = 2 * share / (1 + share)  # F1 of flagging every answer
    print(f"response F1 {report.detection.f1:.3f} (chance {chance:.3f}), FPR {report.detection.fpr:.3f}")
    assert report.detection.f1 >= 0.9 > chance + 0.2, report


def test_the_monitor_stops_a_harmful_answer_within_the_hold_back_window(
    trained: SafetyGuard, answer_world: Path
) -> None:
    row = next(r for r in read_rows(answer_world, "test") if r.response_harmful)
    window, interval = 4, 2
    policy = GuardPolicy(
        level_actions={1: "allow", 2: "allow", 3: "allow"},  # let every request through to the answer
        response=ResponsePolicy(interval=interval, window=window, replacement="sorry ."),
    )
    guard = trained.with_policy(policy)
    tokenizer = guard.processor.tokenizer
    forced = tokenizer(row.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    width: list[int] = []

    def force(batch_id: int, ids: torch.Tensor) -> list[int]:  # the model "writes" the harmful answer
        width.append(width[0] if width else len(ids))
        step = len(ids) - width[0]
        return [forced[min(step, len(forced) - 1)]]

    image = answer_world / row.image
    stream = guard.stream(image, row.prompt, max_new_tokens=len(forced), prefix_allowed_tokens_fn=force)
    chunks = list(stream)
    result = stream.result
    assert result.stopped and result.response_verdict.harmful, result.response_verdict
    assert result.stopped_at < len(forced)  # stopped before the answer was complete
    assert result.released_tokens <= result.stopped_at - window  # nothing near or past the flag was released
    assert "".join(chunks) == result.text and chunks[-1] == "sorry ."
    released = "".join(chunks[:-1])
    assert released == tokenizer.decode(forced[: result.released_tokens], skip_special_tokens=True)
    print(f"stopped at token {result.stopped_at} of {len(forced)}, released {result.released_tokens}")


def test_the_world_scores_the_monitor_on_every_harmful_answer_of_a_split(
    trained: SafetyGuard, answer_world: Path
) -> None:
    rows = read_rows(answer_world, "test")
    harmful = [r for r in rows if r.response_harmful]
    guard = trained.with_policy(GuardPolicy(response=ResponsePolicy(interval=2, window=4)))
    scored = monitor_eval(guard, rows, answer_world)
    tokenizer = guard.processor.tokenizer
    lengths = [len(tokenizer(r.response, add_special_tokens=False)["input_ids"]) for r in harmful]
    assert (scored.interval, scored.window, scored.answer_tokens) == (2, 4, lengths)
    for stop, released, length in zip(scored.stopped_at, scored.released, lengths):
        if stop is None:  # let through: every token reached the caller
            assert released == length
        else:  # judged every 2 tokens; nothing of the 4 held back before the flag was released
            assert stop % 2 == 0 and released <= max(0, stop - 4)
    # the request side would refuse most of these requests: the monitor was scored with every request allowed
    assert scored.held >= 0.8 * len(harmful) > 0
    print(f"{scored.held} / {len(harmful)} stopped inside the window; stops {scored.stopped_at}")


def test_request_rows_read_each_request_once(answer_world: Path) -> None:
    rows = read_rows(answer_world, "test")
    examples, _ = read_jsonl(answer_world / "test.jsonl")
    kept = request_rows(rows)
    assert len(kept) == len(rows) - sum(r.response_harmful is True for r in rows) < len(rows)
    assert len({(r.image, r.prompt) for r in kept}) == len(kept)  # no request twice
    assert [e.id for e in request_examples(examples)] == [r.id for r in kept]
