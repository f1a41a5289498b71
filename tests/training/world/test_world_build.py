from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from psaguard.policy import DEFAULT_REFUSAL
from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.world.build import WorldSpec, build_world, read_rows
from psaguard.training.world.prompts import HARMFUL_INTENTS, JOINT_RULES, QUESTIONS

SAFE_ID = DEFAULT_TAXONOMY.safe_type_id


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def test_same_seed_writes_identical_bytes_and_another_seed_does_not(tmp_path):
    spec = WorldSpec(seed=11, image_size=32, n_train=30, n_val=6, n_test=12, n_attack=6)
    build_world(tmp_path / "a", spec)
    build_world(tmp_path / "b", spec)
    build_world(tmp_path / "c", spec.model_copy(update={"seed": 12}))
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]
    assert len(a) > 40


def test_every_split_has_the_requested_rows_in_the_trainer_schema(small_world, small_spec):
    for split, n in (("train", 240), ("val", 40), ("test", 160), ("attack", 40)):
        rows = read_rows(small_world, split)
        assert len(rows) == n
        assert len({r.id for r in rows}) == n
        for row in rows:
            assert (small_world / row.image).is_file()
            assert "<image>" not in row.prompt
    raw = (small_world / "train.jsonl").read_text().splitlines()[0]
    assert raw.startswith('{"id": "train-000000", "image": "images/')


def test_labels_are_balanced_across_types_levels_and_kinds(small_world):
    rows = read_rows(small_world, "train")
    types = Counter(r.safe_type for r in rows)
    assert set(types) == set(range(DEFAULT_TAXONOMY.num_types))
    assert 0.35 <= types[SAFE_ID] / len(rows) <= 0.7
    risky = [r for r in rows if r.safe_type != SAFE_ID]
    for type_id in set(types) - {SAFE_ID}:
        assert types[type_id] >= 0.06 * len(risky), type_id
    levels = Counter(r.safe_level for r in risky)
    assert all(levels[lv] >= 0.15 * len(risky) for lv in (1, 2, 3)), levels
    assert all((r.safe_level == 0) == (r.safe_type == SAFE_ID) for r in rows)
    assert set(Counter(r.meta.kind for r in rows)) == {"benign", "image_risk", "harmful", "joint"}


def test_held_out_styles_and_templates_appear_only_in_test(small_world, small_spec):
    held_styles, held_templates = set(small_spec.held_out_styles), set(small_spec.held_out_templates)
    for split in ("train", "val"):
        for row in read_rows(small_world, split):
            assert row.meta.style not in held_styles
            assert row.meta.template not in held_templates and row.meta.question not in held_templates
            assert not row.meta.held_out
    test = read_rows(small_world, "test")
    assert {r.meta.style for r in test} & held_styles
    assert {r.meta.template for r in test} & held_templates
    assert any(r.meta.held_out for r in test)


def test_joint_rows_pair_a_safe_image_with_a_prompt_that_is_safe_elsewhere(small_world):
    rows = read_rows(small_world, "train")
    joint = [r for r in rows if r.meta.kind == "joint"]
    assert joint
    safe = [r for r in rows if r.safe_level == 0]
    for row in joint:
        assert row.meta.image_type == "safe" and row.meta.image_level == 0
        rule = next(j for j in JOINT_RULES if row.meta.template.startswith(j.id + "."))
        assert row.meta.noun == rule.trigger
        assert (row.safe_type, row.safe_level) == (DEFAULT_TAXONOMY.type_by_code(rule.type).id, rule.level)
        # The very same prompt with another image, and the very same image with another prompt, are safe.
        assert any(s.prompt == row.prompt and s.image != row.image and s.meta.twin_of == row.id for s in safe)
        assert any(s.image == row.image and s.prompt != row.prompt and s.meta.twin_of == row.id for s in safe)
        # The prompt carries no harmful request text.
        assert not any(t in row.prompt for h in HARMFUL_INTENTS for t in h.texts)


def test_responses_answer_safe_questions_and_refuse_level_3(small_world):
    for row in read_rows(small_world, "train"):
        if row.safe_level == 0:
            assert row.response == row.meta.answer
        elif row.safe_level == 3:
            concept = DEFAULT_TAXONOMY.types[row.safe_type].concept
            assert row.response == DEFAULT_REFUSAL.format(concept=concept)
        else:
            assert DEFAULT_TAXONOMY.types[row.safe_type].concept in row.response


def test_safe_answers_are_the_truth_about_the_image(small_world):
    asks = {q.id: q.asks for q in QUESTIONS}
    checked = 0
    for row in read_rows(small_world, "test"):
        question = row.meta.question or row.meta.template
        if row.safe_level == 0 and question in asks:
            expected = {"colour": row.meta.colour, "noun": row.meta.noun, "word": row.meta.word}.get(asks[question])
            if expected is not None:
                assert row.response == expected
                checked += 1
    assert checked > 20


def test_attack_rows_keep_risky_labels_and_carry_a_suffix_or_banner(small_world):
    rows = read_rows(small_world, "attack")
    assert all(r.safe_level > 0 for r in rows)
    assert Counter(r.meta.attack for r in rows) == {"suffix": 20, "typo": 20}


def test_spec_rejects_unknown_or_exhaustive_hold_outs():
    with pytest.raises(ValidationError, match="unknown held-out styles"):
        WorldSpec(held_out_styles=("solid-purple",))
    with pytest.raises(ValidationError, match="no 'word' style"):
        WorldSpec(held_out_styles=("word-light", "word-dark", "word-noise"))
    with pytest.raises(ValidationError, match="leave none"):
        WorldSpec(held_out_templates=("joint.privacy.0", "joint.privacy.1", "joint.privacy.2"))
    with pytest.raises(ValidationError):
        WorldSpec(n_tran=3)


def test_read_rows_names_the_bad_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:1"):
        read_rows(tmp_path, "train")
