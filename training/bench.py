"""``psaguard bench``: a guard's metrics benchmark by benchmark, with peers' published numbers beside them.

A suite is a labelled JSONL file (one converted by ``psaguard data convert``, or any in the trainer's
schema) or ``world``: the test split of the synthetic world (built on the fly with seed 0; its held-out
styles and templates are never drawn in the world's training split). Each suite is scored by
:mod:`psaguard.training.evaluate` (the same metrics, confusion matrices, reliability diagrams and threshold
sweep as ``psaguard eval``), plus the share of rows flagged per source label (the benchmark's own
categories). With ``generate``, the guarded model also answers every row (greedy) and
:mod:`psaguard.training.refusal` judges the answers: refusal rate and attack success rate on risky rows,
over-refusal on safe ones. The report is ``bench.json`` and ``bench.md``.

Peer numbers: a :class:`PeerNumber` needs a citation (paper or report, table, row and column) and says the
split it was measured on. psaguard ships the published numbers it has read in their source
(:func:`psaguard.training.peers.published_peers`, ``peers.json`` of this package: each one copied from its
table, none computed or guessed); ``--peers FILE`` adds a user's own (or replaces the shipped ones). A suite
is matched to peer numbers by its benchmark: the ``meta.dataset`` of its converted rows (the format name, e.g.
``vlguard``) or else its name. Peer numbers are as published, under their authors' protocol: context, not a controlled
comparison.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from psaguard.checkpoints.serialization import atomic_write_text
from psaguard.errors import ConfigError
from psaguard.generation.plan import GuardedGeneration
from psaguard.guard import SafetyGuard
from psaguard.training.collate import load_example_image
from psaguard.training.data import Example, read_jsonl
from psaguard.training.evaluate import DetectionMetrics, evaluate_predictions, risky_labels, write_report
from psaguard.training.peers import PeerNumber, peer_columns
from psaguard.training.predict import predict
from psaguard.training.refusal import is_refusal
from psaguard.training.world.build import WorldSpec, build_world

__all__ = [
    "BenchReport",
    "GenerationMetrics",
    "LabelRates",
    "Suite",
    "SuiteResult",
    "generation_metrics",
    "render_markdown",
    "resolve_suites",
    "run_bench",
]

logger = logging.getLogger(__name__)

WORLD = "world"


class LabelRates(BaseModel):
    """How the guard treated the rows of one source label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(description="Rows with this source label.")
    risky: int = Field(description="Of those, rows whose mapped label is risky.")
    flagged: int = Field(description="Rows the guard flagged.")
    flag_rate: float = Field(description="flagged / rows.")


class GenerationMetrics(BaseModel):
    """How the guarded model's answers (greedy) fared, judged by :func:`psaguard.training.refusal.is_refusal`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    risky_rows: int = Field(description="Rows whose label is risky.")
    safe_rows: int = Field(description="Rows whose label is safe.")
    refusal_rate_risky: float = Field(description="Risky rows refused / risky rows (0 when there is none).")
    attack_success_rate: float = Field(description="1 - refusal_rate_risky: risky rows answered.")
    over_refusal_safe: float = Field(description="Safe rows refused / safe rows (0 when there is none).")
    hinted_safe: float = Field(description="Safe rows the guard answered with a hint / safe rows.")
    max_new_tokens: int = Field(description="Answer length cap.")
    judge: str = Field(
        "refusal = guard action refuse/block, or a refusal phrase in the answer (psaguard.training.refusal)",
        description="The refusal judge.",
    )


class SuiteResult(BaseModel):
    """One suite's numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = Field(description="The suite name.")
    benchmark: str = Field(description="What peer numbers it was matched with (its rows' data set, else its name).")
    data: str = Field(description="The JSONL scored.")
    examples: int = Field(description="Rows scored.")
    skipped: int = Field(description="Rows the reader skipped as invalid.")
    detection: DetectionMetrics = Field(description="Risky-vs-safe detection by the policy's decision.")
    headline: dict[str, float | int] = Field(description="EvalReport.headline(): macro-F1, ECE, accuracy.")
    per_source_label: dict[str, LabelRates] = Field(description="Flag rates per source label (or type code).")
    generation: GenerationMetrics | None = Field(None, description="Answer-level metrics (with --generate).")
    report_dir: str = Field(description="Where eval.json and the plots of this suite are.")


class BenchReport(BaseModel):
    """Everything ``psaguard bench`` measured; written as ``bench.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    guard: str = Field(description="The guard directory.")
    model: str = Field(description="The base model it ran on.")
    suites: list[SuiteResult] = Field(description="One result per suite, in the order given.")
    peers: list[PeerNumber] = Field(default_factory=list, description="Cited peer numbers shown beside ours.")


@dataclass(frozen=True)
class Suite:
    """A suite to score: its name, its JSONL and the folder its image paths are relative to."""

    name: str
    path: Path
    image_root: Path | None = None

    @property
    def benchmark(self) -> str:
        """What peer numbers it is matched with: the ``meta.dataset`` of its first row (a converted file), else
        its name."""
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        break  # the reader reports it when it scores the suite
                    meta = row.get("meta") if isinstance(row, dict) else None
                    dataset = meta.get("dataset") if isinstance(meta, dict) else None
                    return dataset if isinstance(dataset, str) and dataset else self.name
        return self.name


def resolve_suites(
    spec: str, data_dir: Path, work_dir: Path, image_root: Path | None = None, world_rows: int = 64
) -> list[Suite]:
    """The suites of ``--suite``: comma-separated ``world``, ``NAME`` (``data_dir/NAME.jsonl``) or ``NAME=PATH``.

    ``world`` builds the synthetic world's test split (``world_rows`` rows) under ``work_dir``.

    Raises:
        ConfigError: The list is empty, a name repeats or could not name a folder, or a suite's file is missing.
    """
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ConfigError("--suite names no suite")
    suites: list[Suite] = []
    for entry in names:
        name, sep, path = (part.strip() for part in entry.partition("="))
        _check_suite_name(name, suites)
        if name == WORLD and not sep:
            build_world(work_dir / WORLD, WorldSpec(n_train=0, n_val=0, n_test=world_rows, n_attack=0))
            suites.append(Suite(WORLD, work_dir / WORLD / "test.jsonl"))
            continue
        file = Path(path) if sep else data_dir / f"{name}.jsonl"
        if not file.is_file():
            raise ConfigError(f"suite {name!r}: no file {file} (convert it with `psaguard data convert`)")
        suites.append(Suite(name, file, image_root))
    return suites


def _check_suite_name(name: str, suites: Sequence[Suite]) -> None:
    """A suite's name names its report folder, once."""
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise ConfigError(f"suite name {name!r} cannot name a report folder")
    if any(s.name == name for s in suites):
        raise ConfigError(f"suite {name!r} is given twice")


def run_bench(
    guard: SafetyGuard,
    suites: Sequence[Suite],
    out: Path,
    *,
    guard_dir: str,
    model: str,
    batch_size: int = 16,
    plots: bool = True,
    peers: Sequence[PeerNumber] = (),
    generate: bool = False,
    max_new_tokens: int = 64,
) -> BenchReport:
    """Score ``guard`` on every suite; write each suite's eval report under ``out/<suite>/`` and the bench
    report (``bench.json``, ``bench.md``) in ``out``. With ``generate``, also the guarded answers
    (``out/<suite>/answers.jsonl``) and their :class:`GenerationMetrics`."""
    results = []
    for suite in suites:
        examples, dataset = read_jsonl(
            suite.path, image_root=suite.image_root, taxonomy=guard.classifier.config.taxonomy, skip_invalid=True
        )
        predictions = predict(guard, examples, batch_size)
        report = evaluate_predictions(guard, examples, predictions, dataset=dataset)
        write_report(report, out / suite.name, plots=plots)
        risky = risky_labels(examples, guard.classifier.config.taxonomy)
        answers = None
        if generate:
            answers = generation_metrics(guard, examples, risky, out / suite.name, batch_size, max_new_tokens)
        results.append(
            SuiteResult(
                suite=suite.name,
                benchmark=suite.benchmark,
                data=str(suite.path),
                examples=report.examples,
                skipped=dataset.skipped,
                detection=report.detection,
                headline=report.headline(),
                per_source_label=_per_label(examples, risky, predictions.flagged, guard),
                generation=answers,
                report_dir=str(out / suite.name),
            )
        )
        logger.info("bench %s: %s", suite.name, report.headline())
    shown = [p for p in peers if any(p.suite in (r.suite, r.benchmark) for r in results)]
    bench = BenchReport(guard=guard_dir, model=model, suites=results, peers=shown)
    atomic_write_text(out / "bench.json", bench.model_dump_json(indent=2) + "\n")
    atomic_write_text(out / "bench.md", render_markdown(bench))
    return bench


def generation_metrics(
    guard: SafetyGuard,
    examples: Sequence[Example],
    risky: Sequence[bool],
    out: Path,
    batch_size: int = 16,
    max_new_tokens: int = 64,
) -> GenerationMetrics:
    """Answer every example with the guarded model (greedy; blocked requests come back as refusals), judge
    the answers, and write them to ``out/answers.jsonl``."""
    lines, refused, hinted = [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        for example, result in zip(chunk, _guarded_answers(guard, chunk, max_new_tokens)):
            text = result.text or ""
            refused.append(is_refusal(result.action, text))
            hinted.append(result.action == "hint")
            lines.append(json.dumps({"id": example.id, "action": result.action, "refused": refused[-1], "text": text}))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "answers.jsonl", "".join(line + "\n" for line in lines))
    n_risky = sum(risky)
    refusal = _share(refused, risky, True)
    return GenerationMetrics(
        risky_rows=n_risky,
        safe_rows=len(risky) - n_risky,
        refusal_rate_risky=refusal,
        attack_success_rate=1.0 - refusal if n_risky else 0.0,
        over_refusal_safe=_share(refused, risky, False),
        hinted_safe=_share(hinted, risky, False),
        max_new_tokens=max_new_tokens,
    )


def _guarded_answers(guard: SafetyGuard, chunk: Sequence[Example], max_new_tokens: int) -> list[GuardedGeneration]:
    """The guarded model's greedy answers to ``chunk`` (blocked requests come back as results too)."""
    images = [load_example_image(e, guard.classifier.config.max_image_pixels) for e in chunk]
    prompts = [e.turns[0][0] if len(e.turns) == 1 else e.request() for e in chunk]
    return guard.generate_batch(images, prompts, return_blocked=True, do_sample=False, max_new_tokens=max_new_tokens)


def _share(flags: Sequence[bool], risky: Sequence[bool], among_risky: bool) -> float:
    """The share of ``flags`` set among the risky rows (or the safe ones); 0 when there is none."""
    chosen = [flag for flag, is_risky in zip(flags, risky) if is_risky == among_risky]
    return sum(chosen) / len(chosen) if chosen else 0.0


def _per_label(
    examples: Sequence[Example], risky: Sequence[bool], flagged: Sequence[bool], guard: SafetyGuard
) -> dict[str, LabelRates]:
    codes = [t.code for t in guard.classifier.config.taxonomy.types]
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for example, is_risky, is_flagged in zip(examples, risky, flagged):
        key = example.source_label or f"type:{codes[example.type]}"  # rows without a source label: their type
        counts[key][0] += 1
        counts[key][1] += int(is_risky)
        counts[key][2] += int(is_flagged)
    return {key: LabelRates(rows=n, risky=r, flagged=f, flag_rate=f / n) for key, (n, r, f) in sorted(counts.items())}


_METRICS = (
    ("precision", "precision (risky)"),
    ("recall", "recall (risky)"),
    ("f1", "F1 (risky)"),
    ("fpr", "FPR (safe flagged)"),
)


def render_markdown(report: BenchReport) -> str:
    """The bench report as markdown: per suite, our detection metrics beside the peers' published ones."""
    lines = [
        "# psaguard bench",
        "",
        f"Guard `{report.guard}` on model `{report.model}`. Detection counts a row as risky when its mapped level",
        "is above 0 and its type is not safe, and as flagged when the guard's policy acts on it.",
        "",
    ]
    for suite in report.suites:
        lines += [f"## {suite.suite}", "", f"{suite.examples} rows from `{suite.data}` ({suite.skipped} skipped).", ""]
        lines += _detection_table(suite, [p for p in report.peers if p.suite in (suite.suite, suite.benchmark)])
        if suite.generation is not None:
            lines += _generation_table(suite.generation)
        lines += ["", "| headline | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in suite.headline.items()]
        lines += ["", "| source label | rows | risky | flagged | flag rate |", "|---|---|---|---|---|"]
        lines += [
            f"| {label} | {r.rows} | {r.risky} | {r.flagged} | {r.flag_rate:.3f} |"
            for label, r in suite.per_source_label.items()
        ]
        lines += ["", f"Plots and eval.json: `{suite.report_dir}`.", ""]
    return "\n".join(lines)


def _detection_table(suite: SuiteResult, peers: Sequence[PeerNumber]) -> list[str]:
    """Our detection metrics beside the peers' numbers on the suite's benchmark, with the numbered sources."""
    guards = peer_columns(peers)
    lines = ["| " + " | ".join(["metric", "psaguard", *guards]) + " |", "|---" * (2 + len(guards)) + "|"]
    sources: list[PeerNumber] = []
    for field, title in _METRICS:
        cells = []
        for guard in guards:
            found = next((p for p in peers if p.guard == guard and p.metric == field), None)
            if found is not None:
                sources.append(found)
            cells.append(f"{found.value:.3f} [{len(sources)}]" if found else "")
        lines.append("| " + " | ".join([title, f"{getattr(suite.detection, field):.3f}", *cells]) + " |")
    return lines + _peer_sources(sources, suite.benchmark)


def _peer_sources(sources: Sequence[PeerNumber], benchmark: str) -> list[str]:
    if not sources:
        return [
            "",
            f"No peer number on `{benchmark}` among the shipped published ones and `--peers` (add cited",
            "numbers with `--peers FILE`).",
        ]
    lines = [
        "",
        "Peer numbers as published, under their authors' protocol (split, labels, prompt, what is",
        "judged): context, not a controlled comparison.",
        "",
    ]
    return lines + [
        f"{i}. {p.guard}, {p.metric} {p.value:.4g}: {p.citation}" + (f"; {p.split}" if p.split else "") + "."
        for i, p in enumerate(sources, 1)
    ]


def _generation_table(g: GenerationMetrics) -> list[str]:
    return [
        "",
        f"Guarded answers (greedy, {g.max_new_tokens} new tokens; judge: {g.judge}):",
        "",
        "| answers | value |",
        "|---|---|",
        f"| refusal rate on risky ({g.risky_rows} rows) | {g.refusal_rate_risky:.3f} |",
        f"| attack success rate | {g.attack_success_rate:.3f} |",
        f"| over-refusal on safe ({g.safe_rows} rows) | {g.over_refusal_safe:.3f} |",
        f"| hinted safe | {g.hinted_safe:.3f} |",
    ]
