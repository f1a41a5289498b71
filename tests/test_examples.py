import json
import re
from pathlib import Path

import pytest
from script_runner import run_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str) -> str:
    return run_script("examples", name)


def test_classify_standalone_prints_a_verdict():
    out = run_example("classify_standalone.py")
    start = out.index("{")
    end = out.index("\n}\n") + 2
    verdict = json.loads(out[start:end])
    assert set(verdict) >= {"level", "type", "level_probs", "type_probs", "action", "rule", "flagged"}
    assert "note: no GUARD_DIR" not in out  # the shipped trained guard, not a random one
    harmful = re.search(r"^\[harmful\] '.+' *: .*action=(\w+)$", out, re.MULTILINE)
    assert harmful and harmful.group(1) == "refuse", out  # the shipped guard refuses its harmful example
    assert re.search(r"with '\w+' disabled: allow", out)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_covered(name):
    tests = Path(__file__).read_text() + "".join(p.read_text() for p in Path(__file__).parent.rglob("test_*.py"))
    assert f'"{name}"' in tests, f"examples/{name} is not run by any test"
