"""examples/classify_remote_vlm.py runs offline: a classifier-only guard in front of a stand-in hosted VLM."""

from __future__ import annotations

from script_runner import run_script


def test_classify_remote_vlm_example_forwards_refuses_and_cannot_generate():
    lines = run_script("examples", "classify_remote_vlm.py").splitlines()
    assert lines[0].startswith("classifier-only guard: ") and "parameters loaded (vision tower" in lines[0]
    assert any(line.startswith("default policy: action=") and "hosted model's answer" in line for line in lines)
    assert any(line.startswith("strict policy: action=refuse") and "hosted" not in line for line in lines)
    assert lines[-1] == "generate(): GenerationUnavailableError"
