"""Fuzzing configs and policies: anything accepted works for every verdict, anything else is a precise error."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from psaguard import SafetyGuard
from psaguard.config import CONFIG_NAME, SafetyGuardConfig
from psaguard.errors import CheckpointError, ConfigError
from psaguard.policy import GenerationOptions, GuardPolicy, decide
from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.checkpoint import read_state
from psaguard.training.config import Stage1Config, load_config
from psaguard.verdict import SafetyVerdict

FUZZ = settings.get_profile(f"psaguard-{os.environ.get('PSAGUARD_FUZZ', 'ci')}")

ACTIONS = st.sampled_from(["allow", "hint", "refuse", "block", "warn", ""])
LEVEL = st.integers(-1, 5)
TEMPLATE = st.one_of(
    st.sampled_from(["{concept}", "careful: {concept}", "{0}", "{other}", "{", "}", "", " "]),
    st.sampled_from(["{concept.nope}", "{concept:{x}}", "{concept.upper}", "{concept!r}"]),
    st.text(),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))

type_rules = st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.one_of(st.booleans(), json_scalars),
        "threshold": st.one_of(st.floats(-0.5, 1.5), json_scalars),
        "min_level": st.one_of(LEVEL, json_scalars),
        "actions": st.dictionaries(LEVEL, ACTIONS, max_size=3),
        "hints": st.dictionaries(LEVEL, TEMPLATE, max_size=3),
        "refusal": st.one_of(st.none(), TEMPLATE),
        "unknown_key": json_scalars,
    },
)
policies = st.fixed_dictionaries(
    {},
    optional={
        "level_actions": st.dictionaries(LEVEL, ACTIONS, max_size=5),
        "hints": st.dictionaries(LEVEL, TEMPLATE, max_size=4),
        "refusal": TEMPLATE,
        "types": st.dictionaries(
            st.sampled_from(["privacy", "illegal", "safe", "nope", "Privacy"]), type_rules, max_size=3
        ),
        "default_rule": type_rules,
        "on_error": ACTIONS,
        "on_eror": ACTIONS,
    },
)
probabilities = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8).map(lambda ws: [w / (sum(ws) or 1.0) for w in ws])


def _policy_or_none(raw: dict) -> GuardPolicy | None:
    try:
        policy = GuardPolicy.model_validate(raw).validate_against(DEFAULT_TAXONOMY)
    except ValidationError as err:
        assert err.errors()  # pydantic names the field and the reason
        event("policy rejected by pydantic")
        return None
    except ConfigError as err:
        assert str(err)
        event("policy rejected by validate_against")
        return None
    event("policy accepted")
    return policy


@FUZZ
@given(raw=policies, level=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4), kind=st.integers(0, 6))
def test_accepted_policies_decide_every_verdict(raw: dict, level: list[float], kind: int) -> None:
    policy = _policy_or_none(raw)
    if policy is None:
        return
    total = sum(level) or 1.0
    level_probs = [p / total for p in level]
    type_probs = [0.9 if i == kind else 0.1 / 6 for i in range(7)]
    verdict = decide(level_probs, type_probs, policy, DEFAULT_TAXONOMY)
    assert isinstance(verdict, SafetyVerdict)
    assert (verdict.hint is not None) == (verdict.action == "hint")
    assert GuardPolicy.model_validate_json(policy.model_dump_json()) == policy


@FUZZ
@given(raw=policies)
def test_on_error_is_a_failure_action(raw: dict) -> None:
    policy = _policy_or_none(raw)
    if policy is not None:
        assert policy.on_error in ("block", "refuse", "allow")


@FUZZ
@given(
    raw=st.fixed_dictionaries(
        {},
        optional={
            "format_version": st.one_of(st.integers(-1, 3), json_scalars),
            "head": st.fixed_dictionaries(
                {},
                optional={
                    "num_heads": st.one_of(st.integers(-2, 16), json_scalars),
                    "pooling": st.sampled_from(["mean", "first", "max", ""]),
                    "max_prompt_tokens": st.one_of(st.integers(-5, 600), json_scalars),
                    "level_temperature": st.one_of(st.floats(allow_nan=True), json_scalars),
                    "typo": json_scalars,
                },
            ),
            "tokens": st.fixed_dictionaries({}, optional={"num_tokens": st.integers(-1, 100), "init_std": st.floats()}),
            "max_image_pixels": st.one_of(st.integers(-5, 10**9), json_scalars),
            "max_vision_patches": st.one_of(st.integers(-5, 10**7), json_scalars),
            "dtype": st.sampled_from(["auto", "float32", "int8", "float64"]),
            "policy": policies,
            "extra": json_scalars,
        },
    )
)
def test_guard_configs_load_or_raise_config_error(tmp_path_factory: pytest.TempPathFactory, raw: dict) -> None:
    directory = tmp_path_factory.mktemp("cfg")
    (directory / CONFIG_NAME).write_text(json.dumps(raw))
    try:
        config = SafetyGuardConfig.load(directory)
    except ConfigError as err:
        assert str(err)
        event("config rejected")
        return
    except CheckpointError as err:  # json.dumps writes NaN/Infinity, which are not JSON: a parse error
        assert "not valid JSON" in str(err)
        event("config unparsable")
        return
    event("config accepted")
    config.save(directory)
    assert SafetyGuardConfig.load(directory) == config


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_config_files_of_any_bytes_raise_typed_errors(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    directory = tmp_path_factory.mktemp("cfg")
    (directory / CONFIG_NAME).write_bytes(data)
    try:
        SafetyGuardConfig.load(directory)
    except (ConfigError, CheckpointError) as err:
        assert str(err)


def test_deeply_nested_config_json_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises((ConfigError, CheckpointError)):
        SafetyGuardConfig.load(tmp_path)


def _config_file(tmp_path: Path, **sections: dict) -> Path:
    (tmp_path / CONFIG_NAME).write_text(json.dumps(sections))
    return tmp_path


@pytest.mark.parametrize(
    "sections",
    [
        {"tokens": {"num_tokens": 10**12}},  # used to allocate, then raise RuntimeError
        {"projector": {"depth": 20_000}},  # used to loop for 74 s before its typed error
        {"projector": {"hidden_size": 10**9}},
        {"head": {"num_heads": 10**6}},
        {"head": {"max_prompt_tokens": 10**9}},
        {"max_image_pixels": 10**15},
        {"max_vision_patches": 10**9},  # a budget that bounds nothing
        {"max_vision_patches": 1},  # below one merge unit of any family
    ],
)
def test_config_sizes_are_bounded_when_the_file_loads(tmp_path: Path, sections: dict) -> None:
    start = time.process_time()
    with pytest.raises(ConfigError):
        SafetyGuardConfig.load(_config_file(tmp_path, **sections))
    assert time.process_time() - start < 1.0


def test_a_five_thousand_digit_integer_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).write_text('{"tokens": {"num_tokens": ' + "9" * 5000 + "}}")
    with pytest.raises(CheckpointError, match="digits"):
        SafetyGuardConfig.load(tmp_path)


@pytest.mark.parametrize(
    "config",
    [
        SafetyGuardConfig(head={"num_heads": 3}),  # does not divide the tiny model's width: was a bare ValueError
        SafetyGuardConfig(projector={"num_queries": 5}),  # not a square
        SafetyGuardConfig(projector={"depth": 64, "hidden_size": 65_536}),  # ~800 G parameters
    ],
)
def test_configs_the_modules_cannot_have_are_config_errors_before_allocating(tiny_model, tiny_processor, config):
    start = time.process_time()
    with pytest.raises(ConfigError):
        SafetyGuard.attach(tiny_model, tiny_processor, config)
    assert time.process_time() - start < 1.0


BAD_CONCEPT_TEMPLATES = ["{concept:d}", "{concept!z}", "{concept!r}", "{concept:>1000000000}", "{concept.__class__}"]


@pytest.mark.parametrize("template", BAD_CONCEPT_TEMPLATES)
def test_policy_templates_may_only_use_the_plain_concept_field(template: str) -> None:
    for raw in (
        {"refusal": template},
        {"hints": {1: template, 2: "ok {concept}", 3: "ok"}},
        {"types": {"privacy": {"refusal": template}}},  # type rules were not checked at all
        {"default_rule": {"hints": {1: template}}},
    ):
        with pytest.raises(ValidationError, match="plain"):
            GuardPolicy.model_validate(raw)


@pytest.mark.parametrize(
    ("field", "template"),
    [
        ("hint_template", "{hint.__class__.__mro__}"),
        ("hint_template", "{hint:>1000000000}"),
        ("hint_template", "{hint!r}"),
        ("hint_template", "{refusal}"),
        ("refusal_hint", "{refusal:d}"),
        ("refusal_hint", "{refusal[0]}"),
    ],
)
def test_generation_option_templates_may_only_use_their_plain_field(field: str, template: str) -> None:
    with pytest.raises(ValidationError, match="plain"):
        GenerationOptions(**{field: template})


# ---------------------------------------------------------------------------- training configs and resume state
REQUIRED_TRAINING_KEYS = "model: m\ntrain_data: rows.jsonl\noutput_dir: out\n"
YAML_PIECES = st.sampled_from(
    [
        *("&a ", "&b ", "*a", "*b", "[", "]", "{", "}", "x: ", "y: ", ", ", "\n", "- ", "  ", "9" * 60, "1_0", "'"),
        *('"', "!!int ", "!!python/object:os.system ", "!!binary ", "<<: ", "2021-02-30", "~", "epochs: ", "1e999"),
    ]
)


@FUZZ
@given(text=st.lists(YAML_PIECES, max_size=80).map("".join))
def test_training_config_texts_load_or_raise_config_errors_quickly(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("train") / "train.yaml"
    path.write_text(REQUIRED_TRAINING_KEYS + text)
    start = time.process_time()
    try:
        load_config(Stage1Config, path)
        event("training config accepted")
    except ConfigError as err:
        assert str(err)
        event("training config rejected")
    assert time.process_time() - start < 1.0


STEP_COUNTS = st.one_of(st.integers(-5, 20), st.integers(-(10**15), 10**15), json_scalars)


@FUZZ
@given(
    state=st.fixed_dictionaries(
        {"step": STEP_COUNTS, "total_steps": STEP_COUNTS, "steps_per_epoch": STEP_COUNTS},
        optional={"history": st.lists(st.dictionaries(st.text(max_size=4), json_scalars, max_size=3), max_size=3)},
    )
)
def test_resume_states_are_within_the_run_or_checkpoint_errors(
    tmp_path_factory: pytest.TempPathFactory, state: dict
) -> None:
    directory = tmp_path_factory.mktemp("step")
    data = {"num_examples": 8, "batch_size": 2, "grad_accum": 1, "world_size": 1, "seed": 0}
    (directory / "state.json").write_text(json.dumps({**state, "data": data}))
    try:
        loaded = read_state(directory)
    except CheckpointError as err:
        assert str(err)
        event("state rejected")
        return
    event("state accepted")
    assert 0 <= loaded.step <= loaded.total_steps and loaded.steps_per_epoch >= 1
    assert 0 <= loaded.step_in_epoch < loaded.steps_per_epoch
