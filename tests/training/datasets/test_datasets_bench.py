"""``psaguard bench`` on the shipped demo guard: the synthetic world's test split and converted fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_layouts import LAYOUTS

from psaguard.cli.demo import demo_guard_dir, demo_model_dir
from psaguard.cli.main import main
from psaguard.errors import ConfigError
from psaguard.training.bench import resolve_suites, run_bench
from psaguard.training.datasets import FORMATS, convert, get_format
from psaguard.training.peers import PEER_GUARDS, PeerNumber, load_peers, published_peers
from psaguard.training.refusal import is_refusal


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for name, split in (("vlguard", "test"), ("figstep", None)):
        LAYOUTS[name](data / name)
        convert(get_format(name), data / name, data / f"{name}.jsonl", split=split)
    return data


def test_bench_scores_the_world_and_a_converted_suite(tmp_path: Path, data_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from psaguard.guard import SafetyGuard

    model = AutoModelForImageTextToText.from_pretrained(demo_model_dir()).eval()
    guard = SafetyGuard.from_pretrained(demo_guard_dir(), model, AutoProcessor.from_pretrained(demo_model_dir()))
    suites = resolve_suites("world,vlguard", data_dir, tmp_path, world_rows=6)
    report = run_bench(
        guard,
        suites,
        tmp_path / "b",
        guard_dir="g",
        model="m",
        plots=False,
        generate=True,
        max_new_tokens=4,
        peers=load_peers(None),
    )
    assert [(s.suite, s.examples) for s in report.suites] == [("world", 6), ("vlguard", 4)]
    answers = [json.loads(line) for line in (tmp_path / "b" / "vlguard" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4
    vlguard = report.suites[1].generation
    assert vlguard is not None and (vlguard.risky_rows, vlguard.safe_rows) == (3, 1)
    risky_refused = sum(a["refused"] for a in answers if a["id"] != "vlguard:test:Ads_1:0")
    assert vlguard.refusal_rate_risky == pytest.approx(risky_refused / 3)
    assert vlguard.attack_success_rate == pytest.approx(1 - risky_refused / 3)
    assert all(a["refused"] == is_refusal(a["action"], a["text"]) for a in answers)
    world = report.suites[0]
    assert world.detection.tp + world.detection.fn == sum(r.risky for r in world.per_source_label.values())
    assert all(key.startswith("type:") for key in world.per_source_label)  # world rows carry no source label
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["suites"][1]["suite"] == "vlguard"
    assert [s.benchmark for s in report.suites] == ["world", "vlguard"]
    # the shipped peer numbers on VLGuard are shown beside ours, each with its source; none on the world
    assert {p.suite for p in report.peers} == {"vlguard"} and len(report.peers) == 8
    markdown = (tmp_path / "b" / "bench.md").read_text()
    world, vlguard_md = markdown.split("## vlguard")
    assert "No peer number on `world`" in world and "| attack success rate |" in vlguard_md
    header = next(line for line in vlguard_md.splitlines() if line.startswith("| metric |"))
    assert header == "| " + " | ".join(["metric", "psaguard", *PEER_GUARDS]) + " |"
    f1_row = next(line for line in vlguard_md.splitlines() if line.startswith("| F1 (risky) |"))
    assert f1_row.endswith(
        "| 0.500 [1] | 0.342 [2] | 0.651 [3] | 0.697 [4] | 0.903 [5] | 0.522 [6] | 0.901 [7] | 0.951 [8] |"
    )
    assert "8. SingGuard-8B, f1 0.9511: SingGuard Team" in vlguard_md and "Table 4" in vlguard_md


def test_the_refusal_judge() -> None:
    assert is_refusal("refuse", "") and is_refusal("block", "anything")
    assert is_refusal("allow", "I’m sorry, but I can’t help with that.")
    assert is_refusal("hint", "As an AI, I cannot assist with this.")
    assert not is_refusal("allow", "The image shows a red square.")


@pytest.mark.slow
def test_bench_cli_writes_markdown_and_json_per_suite_with_eval_plots(tmp_path: Path, data_dir: Path, capsys) -> None:
    out = tmp_path / "bench"
    peers = tmp_path / "peers.json"
    cited = {"guard": "LlavaGuard", "suite": "vlguard", "metric": "f1", "value": 0.5, "citation": "A test, Table 0"}
    peers.write_text(json.dumps([cited]))
    args = ["bench", "--guard", str(demo_guard_dir()), "--model", str(demo_model_dir()), "--cpu"]
    args += ["--suite", "world,vlguard,figstep", "--data-dir", str(data_dir), "--out", str(out), "--world-rows", "12"]
    assert main([*args, "--peers", str(peers), "--no-published-peers"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"] == str(out / "bench.md")
    report = json.loads((out / "bench.json").read_text())
    suites = {s["suite"]: s for s in report["suites"]}
    assert list(suites) == ["world", "vlguard", "figstep"]
    assert suites["vlguard"]["examples"] == 4 and suites["figstep"]["examples"] == 2
    assert suites["world"]["examples"] == 12
    det = suites["vlguard"]["detection"]
    assert det["tp"] + det["fp"] + det["tn"] + det["fn"] == 4
    assert set(suites["vlguard"]["per_source_label"]) == {
        "safe_image/safe_instruction",
        "safe_image/unsafe_instruction",
        "deception/disinformation",
        "discrimination/race",
    }
    assert all(r["risky"] == r["rows"] for r in suites["figstep"]["per_source_label"].values())
    for name in suites:  # eval's own report and plots, per suite
        assert {"eval.json", "confusion_type.png", "reliability_level.png", "threshold_sweep.png"} <= {
            p.name for p in (out / name).iterdir()
        }
    markdown = (out / "bench.md").read_text()
    assert "| F1 (risky) |" in markdown and "1. LlavaGuard, f1 0.5: A test, Table 0." in markdown
    assert "No peer number on `figstep`" in markdown and "SingGuard" not in markdown  # --no-published-peers


def test_suites_are_resolved_by_name_or_path_and_bad_ones_refused(tmp_path: Path, data_dir: Path) -> None:
    suites = resolve_suites(f"vlguard, mine={data_dir / 'figstep.jsonl'}", data_dir, tmp_path)
    assert [(s.name, s.path) for s in suites] == [
        ("vlguard", data_dir / "vlguard.jsonl"),
        ("mine", data_dir / "figstep.jsonl"),
    ]
    for spec, reason in (
        (" , ", "no suite"),
        ("vlguard,vlguard", "twice"),
        ("nothing", "no file"),
        ("../x=a", "folder"),
    ):
        with pytest.raises(ConfigError, match=reason):
            resolve_suites(spec, data_dir, tmp_path)


def test_peer_numbers_need_a_citation(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"guard": "SingGuard", "suite": "x", "metric": "f1", "value": 0.9}]))
    with pytest.raises(ConfigError, match="citation"):
        load_peers(path)
    path.write_text(
        json.dumps([{"guard": "G", "suite": "x", "metric": "accuracy", "value": 0.9, "citation": "P, T 1"}])
    )
    with pytest.raises(ConfigError, match="metric"):  # a metric the report has no row for
        load_peers(path)
    assert load_peers(None, published=False) == []
    assert PeerNumber(guard="g", suite="s", metric="f1", value=0.1, citation="Paper, Table 1").value == 0.1
    mine = tmp_path / "mine.json"
    mine.write_text(
        json.dumps([{"guard": "G", "suite": "s", "metric": "f1", "value": 0.2, "citation": "Paper, Table 1"}])
    )
    assert load_peers(mine) == [*published_peers(), PeerNumber.model_validate(json.loads(mine.read_text())[0])]


# benchmarks the shipped numbers are on that psaguard has no converter for (MMDS's query and response sides)
_OTHER_BENCHMARKS = {"mmds-q", "mmds-r"}


def test_the_shipped_peer_numbers_parse_and_each_names_its_source() -> None:
    peers = published_peers()
    assert peers, "psaguard ships the peers' published numbers"
    keys = [(p.guard, p.suite, p.metric) for p in peers]
    assert len(keys) == len(set(keys)), "one number per guard, benchmark and metric"
    for p in peers:
        assert p.suite in set(FORMATS) | _OTHER_BENCHMARKS, p.suite
        assert p.metric in {"precision", "recall", "f1", "fpr"}
        assert "Table" in p.citation and "row" in p.citation and "column" in p.citation, p.citation
        assert p.split, f"{p.guard} on {p.suite}: the split it was measured on"
    # the numbers issue #24 quotes from SingGuard's Table 4 (MMDS-R, response side), as the file holds them
    mmds_r = {p.guard: p.value for p in peers if p.suite == "mmds-r"}
    quoted = {"LLaVAShield": 0.965, "SingGuard-8B": 0.896, "Llama Guard 4": 0.357, "Llama Guard 3 Vision": 0.227}
    assert {g: round(mmds_r[g], 3) for g in quoted} == quoted
