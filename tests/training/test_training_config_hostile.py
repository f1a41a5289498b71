"""Hostile training config files and override values: typed ConfigErrors within a second, never a hang."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
from fifo_helpers import error_without_blocking

from psaguard.errors import ConfigError
from psaguard.training.config import Stage1Config, apply_overrides, load_config
from psaguard.training.config_files import MAX_CONFIG_DEPTH, MAX_CONFIG_NODES

REQUIRED = "model: m\ntrain_data: rows.jsonl\noutput_dir: out\n"


def _billion_laughs() -> str:
    """The classic: nine levels of nine aliases each, 10^9 strings from a few hundred bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghi"
    for previous, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


HOSTILE_YAML = {
    "billion-laughs": (_billion_laughs(), "expands to"),
    "recursive-alias": ("a: &a [*a]\n", "recursive"),
    "recursive-mapping": ("a: &a {b: *a}\n", "recursive"),
    "20k-deep-yaml": ("a: " + "[" * 20_000 + "]" * 20_000 + "\n", "deeper"),
    "5000-digit-int": ("epochs: " + "9" * 5000 + "\n", "digits"),
    "impossible-date": ("seed: 2021-02-30\n", "cannot parse"),
    "empty-tagged-int": ("x: !!int \n", "cannot parse"),  # PyYAML raised a bare IndexError
    "python-object-tag": ("x: !!python/object/apply:os.system ['true']\n", "cannot parse"),
    "alias-chain-deeper-than-the-limit": (
        "".join(f"a{i}: &a{i} [*a{i - 1}]\n" if i else "a0: &a0 [1]\n" for i in range(MAX_CONFIG_DEPTH + 2)),
        "deeper",
    ),
}


def _cpu_seconds(action) -> float:
    start = time.process_time()
    action()
    return time.process_time() - start


@pytest.mark.parametrize(("text", "message"), HOSTILE_YAML.values(), ids=HOSTILE_YAML.keys())
def test_hostile_yaml_configs_are_config_errors_within_a_second(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(REQUIRED + text)

    def load() -> None:
        with pytest.raises(ConfigError, match=message):
            load_config(Stage1Config, path)

    assert _cpu_seconds(load) < 1.0


def test_the_billion_laughs_file_is_a_few_hundred_bytes() -> None:
    assert len(_billion_laughs().encode()) < 400


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"epochs": ' + "9" * 5000 + "}", '{"epochs": 1, "epochs": 2}', '{"a": NaN}'],
    ids=["100k-deep-json", "5000-digit-int", "duplicate-key", "nan"],
)
def test_hostile_json_configs_are_config_errors_within_a_second(tmp_path: Path, text: str) -> None:
    path = tmp_path / "train.json"
    path.write_text(text)

    def load() -> None:
        with pytest.raises(ConfigError):
            load_config(Stage1Config, path)

    assert _cpu_seconds(load) < 1.0


def test_a_fifo_as_config_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "train.yaml"
    os.mkfifo(fifo)
    err = error_without_blocking(lambda: load_config(Stage1Config, fifo), fifo, ConfigError)
    assert "not a regular file" in str(err)


def test_an_oversized_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(REQUIRED + "#" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError, match="exceeds the limit"):
        load_config(Stage1Config, path)


@pytest.mark.parametrize(
    "override",
    ["lr=" + "[" * 20_000, "epochs=" + "9" * 5000, "seed=&a [*a]"],
    ids=["deep", "5000-digit-int", "recursive-alias"],
)
def test_hostile_override_values_are_config_errors(override: str) -> None:
    with pytest.raises(ConfigError):
        apply_overrides({}, [override])


def test_a_recursive_python_dict_is_a_config_error() -> None:
    raw: dict = {"a": []}
    raw["a"].append(raw)
    with pytest.raises(ConfigError, match="copied"):
        apply_overrides(raw, [])


def test_anchors_and_aliases_within_the_bounds_still_load(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model: m\ntrain_data: &rows rows.jsonl\neval_data: *rows\noutput_dir: out\nepochs: 1_0\n")
    config = load_config(Stage1Config, path)
    assert config.eval_data == config.train_data == Path("rows.jsonl") and config.epochs == 10


def test_a_config_just_under_the_node_bound_loads(tmp_path: Path) -> None:
    # 3 aliases of a 10,000-item list: ~30,000 nodes expanded, under the bound; the same at 11 aliases is over.
    items = "[" + ",".join(["1"] * 10_000) + "]"
    under = REQUIRED + f"x: &x {items}\nmeta: [*x, *x]\n"
    path = tmp_path / "train.yaml"
    path.write_text(under)
    with pytest.raises(ConfigError, match="meta"):  # loaded, then refused by the schema: an unknown key
        load_config(Stage1Config, path)
    path.write_text(REQUIRED + f"x: &x {items}\nmeta: [" + ",".join(["*x"] * (MAX_CONFIG_NODES // 10_000)) + "]\n")
    with pytest.raises(ConfigError, match="expands to"):
        load_config(Stage1Config, path)
