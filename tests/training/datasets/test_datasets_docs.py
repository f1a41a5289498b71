"""docs/datasets.md documents every format and every entry of its label table, as the code maps it."""

from __future__ import annotations

from pathlib import Path

import pytest

from psaguard.training.datasets import FORMATS

DOC = (Path(__file__).resolve().parents[3] / "docs" / "datasets.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_label_table_row_is_in_the_docs(name: str) -> None:
    assert f"### {name}: " in DOC
    section = DOC.split(f"### {name}: ", 1)[1].split("\n### ", 1)[0]
    for key, level, kind, codes, note in FORMATS[name].labels.rows():
        assert f"| `{key}` | {level} | {kind} | {codes} | {note} |" in section, key
    assert f"| {name} | " in DOC  # the sources table: where to get it, licence, size
