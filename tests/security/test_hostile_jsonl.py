"""Fuzzing training JSONL rows: every file gives examples or a DatasetError naming file and line."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psaguard.errors import DatasetError

pytest.importorskip("psaguard.training.data")
from psaguard.training.data import read_jsonl

FUZZ = settings.get_profile(f"psaguard-{os.environ.get('PSAGUARD_FUZZ', 'ci')}")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.text(max_size=12), st.floats(allow_nan=False))
turn = st.fixed_dictionaries(
    {}, optional={"from": st.sampled_from(["human", "gpt", "user", "x"]), "value": st.text(max_size=20), "z": scalars}
)
rows = st.fixed_dictionaries(
    {},
    optional={
        "id": scalars,
        "image": st.one_of(
            st.sampled_from(["a.png", "", "missing.png", "../a.png", "/etc/passwd", "a.png<split>../a.png", "l.png"]),
            st.lists(st.text(max_size=6), max_size=2),
        ),
        "prompt": st.one_of(st.text(max_size=20), st.just("<image> hi"), scalars),
        "response": st.one_of(st.text(max_size=20), scalars),
        "conversations": st.lists(turn, max_size=4),
        "safe_level": st.one_of(st.integers(-1, 5), scalars),
        "safe_type": st.one_of(st.integers(-1, 8), st.sampled_from(["privacy", "nope", "safe"]), scalars),
        "meta": st.one_of(st.dictionaries(st.text(max_size=3), scalars, max_size=2), scalars),
        "extra": scalars,
    },
).map(json.dumps)
hostile_lines = st.sampled_from(
    [
        "[" * 5000 + "]" * 5000,
        '{"safe_level": ' + "9" * 5000 + "}",  # int() refuses > 4300 digits with a bare ValueError
        '{"image": "a.png", "image": "../a.png"}',  # duplicate key
        '{"safe_level": NaN}',
        '{"prompt": "a\u2028b"}',  # a line separator inside a string (one row, not two)
        '"x"',
        "",
    ]
)
lines = st.one_of(rows, st.text(max_size=40), hostile_lines)


@FUZZ
@given(file_lines=st.lists(lines, max_size=6), skip=st.booleans())
def test_jsonl_files_give_examples_or_a_dataset_error(tmp_path_factory, file_lines, skip) -> None:
    directory = tmp_path_factory.mktemp("data")
    (directory / "a.png").write_bytes(b"\x89PNG")
    (directory / "l.png").symlink_to(directory.parent / "elsewhere.png")
    path = directory / "train.jsonl"
    path.write_text("\n".join(file_lines), encoding="utf-8", errors="surrogatepass")
    try:
        examples, report = read_jsonl(path, skip_invalid=skip)
    except DatasetError as err:
        assert str(err) and err.path == str(path)
    else:
        assert examples and report.kept == len(examples) <= report.rows
        root = directory.resolve()
        assert all(image.resolve().is_relative_to(root) for example in examples for image in example.images)
