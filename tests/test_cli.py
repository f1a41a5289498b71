import json

import pytest
from dtype_helpers import AVX2_ONLY, fake_cpu, save_bf16_llava

from psaguard.cli.main import build_parser, main
from psaguard.guard import SafetyGuard


def test_demo_runs_offline_and_prints_verdicts(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "saved and reloaded: same verdict = True" in out
    assert out.count(" -> level=") == 5  # one verdict per shipped world request
    assert out.count(" => (") == 5  # and one guarded answer each
    assert "trained on the synthetic safety world" in out
    assert "drawn at random" in out and "right or wrong" in out  # not picked among the ones it got right
    # a harmful answer, forced and said to be, stopped by the streaming monitor before it is all released
    assert "a harmful answer (FORCED" in out and "classify_response: harmful=True" in out
    assert "stopped by the monitor: the judgement of the first" in out
    assert main(["demo"]) == 0  # fixed assets, greedy decoding: the same output again (but for timings)
    timed = "latency_ms"
    assert [line for line in capsys.readouterr().out.splitlines() if timed not in line] == [
        line for line in out.splitlines() if timed not in line
    ]


def test_demo_has_no_flag_without_effect_and_says_what_it_runs():
    subcommands = build_parser()._subparsers._group_actions[0]
    assert [action.dest for action in subcommands.choices["demo"]._actions] == ["help"]
    help_of = {action.dest: action.help for action in subcommands._choices_actions}
    assert "shipped example requests" in help_of["demo"]


def test_classify_prints_the_verdict_as_json(tiny_dir, tiny_model, tiny_processor, tmp_path, images, capsys):
    SafetyGuard.attach(tiny_model, tiny_processor).save_pretrained(tmp_path / "guard")
    images[0].save(tmp_path / "x.png")
    code = main(
        ["classify", "--guard", str(tmp_path / "guard"), "--model", str(tiny_dir), str(tmp_path / "x.png"), "hi"]
    )
    assert code == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["action"] in ("allow", "hint", "refuse", "block")


def test_classify_reports_typed_errors_with_exit_code_2(tiny_dir, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"not an image")
    code = main(
        ["classify", "--guard", str(tmp_path / "none"), "--model", str(tiny_dir), str(tmp_path / "x.png"), "hi"]
    )
    assert code == 2
    assert "CheckpointError" in capsys.readouterr().err


def test_parser_lists_core_subcommands():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert {"demo", "classify"} <= set(choices)


@pytest.mark.parametrize(
    ("mode", "loaded"), [(["--classifier-only"], "classifier-only parts compute in"), ([], "the model computes in")]
)
@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ([], "float32 (the checkpoint is bfloat16 and this CPU has no"),
        (["--dtype", "bfloat16"], "bfloat16 (requested)"),
    ],
)
def test_classify_computes_in_the_fast_dtype_unless_told(
    tmp_path, images, capsys, monkeypatch, mode, loaded, dtype, expected
):
    fake_cpu(monkeypatch, AVX2_ONLY)
    directory = save_bf16_llava(tmp_path / "bf16")
    images[0].save(tmp_path / "x.png")
    args = ["classify", "--guard", str(directory / "guard"), "--model", str(directory), *mode, *dtype]
    assert main(["-v", *args, str(tmp_path / "x.png"), "hi"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["action"] in ("allow", "hint", "refuse", "block")
    assert f"{loaded} {expected}" in captured.err
    assert f"safety modules compute in {expected.split()[0]}" in captured.err


def test_serve_eval_and_classify_take_dtype():
    choices = build_parser()._subparsers._group_actions[0].choices
    for command in ("classify", "serve", "eval"):
        dtype = next(action for action in choices[command]._actions if action.dest == "dtype")
        assert dtype.default == "auto" and set(dtype.choices) == {"auto", "float32", "bfloat16", "float16"}
    with pytest.raises(SystemExit):
        main(["classify", "--guard", "g", "--model", "m", "--dtype", "float64", "x.png", "hi"])
