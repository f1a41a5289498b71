"""Custom categories on the synthetic world: concepts held out of the guard's training, added from k examples.

    python benchmarks/category_world.py --out runs/category_world          # ~5 min on one busy core
    python benchmarks/category_world.py --out /tmp/cw --steps 20 --n-train 240 --n-test 120 --ks 1 4 --draws 1

1. Build the world and train a Stage I guard (head loss only) on the shipped world demo base model
   (``psaguard/assets/world_demo/model``, which learnt every concept's look in its own training, as a real
   VLM knows what a scam looks like), on the training rows **without any row of the held-out risk types**.
2. For each held-out type, draw k of its training rows as examples (and a fixed number of negatives from the
   kept types' training rows, as a user has their old data), fit a category per method, add all held-out
   types' categories together, and judge the test split: F1 of each category (it fires, or not, against the
   row being of that type) and the macro-F1 of the kept types (the verdict's type; a category that takes
   a kept row's verdict counts as a wrong type) next to the same guard without categories. F1 is also given
   on the test rows in familiar styles and templates (the test split adds styles and paraphrases no training
   row uses), and the head's own F1 on the held-out types (with ``--guard``, of a head trained on them).
3. Check that the fast path (features computed once, categories scored from them with the guard's own
   bank and policy functions) gives the verdicts ``guard.add_category`` + ``classify_batch`` give.

Writes ``metrics.json`` and ``f1_vs_k.png`` into ``--out`` (and ``--plot`` when given) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from importlib import resources
from pathlib import Path

import torch
from machine import describe_machine

from psaguard.categories import CategoryBank, fit_category, new_category
from psaguard.checkpoints.serialization import atomic_write, atomic_write_text
from psaguard.cli.demo import DEMO_ASSETS
from psaguard.errors import CategoryError
from psaguard.policy import decide_categories
from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.config import Stage1Config
from psaguard.training.data import Example, read_jsonl
from psaguard.training.metrics import binary_rates, confusion_matrix, one_vs_rest
from psaguard.training.stage1 import train_stage1
from psaguard.training.world.build import WorldSpec, build_world, read_rows
from psaguard.training.world.demo_assets import load_trained_guard

METHODS = ("prototype", "logistic")


def _write_kept(world: Path, split: str, held: set[int]) -> Path:
    """``<split>-kept.jsonl``: the split without the held-out types' rows."""
    rows = [row for row in read_rows(world, split) if row.safe_type not in held]
    path = world / f"{split}-kept.jsonl"
    atomic_write_text(path, "".join(row.model_dump_json() + "\n" for row in rows))
    return path


def _train_guard(args: argparse.Namespace, base: Path, world: Path, held: set[int]) -> Path:
    cfg = Stage1Config(
        model=str(base),
        train_data=_write_kept(world, "train", held),
        eval_data=_write_kept(world, "val", held),
        eval_every=max(1, args.steps // 10),
        early_stopping={"metric": "macro_f1", "patience": None},
        output_dir=args.out / "stage1",
        num_safe=None,
        lm_loss_weight=0.0,  # the head only, as the world's cpu preset
        guard={"tokens": {"num_tokens": 16, "init_std": 1.0}, "head": {"pooling": "mean"}},
        max_steps=args.steps,
        batch_size=16,
        grad_accum=1,
        lr=1e-2,
        warmup_steps=min(20, args.steps // 5),
        seed=args.seed,
        checkpoint_every=args.steps + 1,
        log_every=max(1, args.steps // 10),
        progress_bar=False,
        cpu=True,
        plots=False,
    )
    return train_stage1(cfg)


def _pairs(examples: list[Example]) -> tuple[list[Path], list[str]]:
    return [e.images[0] for e in examples], [e.prompt for e in examples]


def _macro_f1_kept(labels: list[str], predicted: list[str], kept: list[str]) -> float:
    """Macro-F1 over the kept type codes; any other prediction (a custom category) is a miss of its row's type."""
    index = {code: i for i, code in enumerate(kept)}
    confusion = confusion_matrix(
        [index[code] for code in labels], [index.get(code, len(kept)) for code in predicted], len(kept) + 1
    )
    return statistics.mean(binary_rates(*counts)[2] for counts in one_vs_rest(confusion)[: len(kept)])


def _rates(truth: list[bool], fired: list[bool]) -> dict[str, float]:
    """Precision, recall and F1 of a category firing on the rows that are ``truth``."""
    tp = sum(t and f for t, f in zip(truth, fired))
    fp = sum(f and not t for t, f in zip(truth, fired))
    fn = sum(t and not f for t, f in zip(truth, fired))
    precision, recall, f1, _ = binary_rates(tp, fp, len(truth) - tp - fp - fn, fn)
    return {"precision": precision, "recall": recall, "f1": f1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--hold", nargs="+", default=["privacy", "fairness"], help="risk types held out")
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 4, 16], help="examples per category")
    parser.add_argument("--draws", type=int, default=3, help="random draws of the examples per k")
    parser.add_argument(
        "--negatives", type=int, default=256, help="negatives per category (kept types' rows, as a user's old data)"
    )
    parser.add_argument("--steps", type=int, default=600, help="Stage I steps")
    parser.add_argument("--n-train", type=int, default=1200, help="world training rows")
    parser.add_argument("--n-test", type=int, default=400, help="world test rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and the guard")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--plot", type=Path, help="also write the plot here")
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["image_risk", "harmful", "joint"],
        help="row kinds (benign, image_risk, harmful, joint) that make a held-out concept: its examples are drawn "
        "from them and its test positives are its rows of them; its other rows are left out of its F1",
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="base VLM directory (default: the shipped demo model), e.g. one saved by 'psaguard world base'",
    )
    parser.add_argument("--reuse", action="store_true", help="reuse the world and the Stage I guard in --out")
    parser.add_argument(
        "--guard",
        type=Path,
        help="judge with this saved guard instead of training one (e.g. the demo guard, which saw every type: "
        "a reference for how far the categories get where the features know the concept)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    taxonomy = DEFAULT_TAXONOMY
    held = {taxonomy.type_by_code(code).id for code in args.hold}
    kept = [t.code for t in taxonomy.types if t.id not in held]
    clock = time.perf_counter()

    world = args.out / "world"
    base = args.base or Path(str(resources.files("psaguard") / DEMO_ASSETS / "model"))
    guard_dir = args.out / "stage1"
    if not args.reuse:
        spec = WorldSpec(seed=args.seed, image_size=32, n_train=args.n_train, n_val=100, n_test=args.n_test, n_attack=0)
        build_world(world, spec)
    if args.guard is not None:
        guard_dir = args.guard
    elif not args.reuse:
        guard_dir = _train_guard(args, base, world, held)
    train_seconds = time.perf_counter() - clock
    guard = load_trained_guard(base, guard_dir, adapter=False)

    train, _ = read_jsonl(world / "train.jsonl", taxonomy=taxonomy)
    test, _ = read_jsonl(world / "test.jsonl", taxonomy=taxonomy)
    train_kinds = [row.meta.kind for row in read_rows(world, "train")]
    test_kinds = [row.meta.kind for row in read_rows(world, "test")]
    # rows in the styles and templates training uses (the test split adds held-out ones): how far the world's
    # distribution shift, not the category, takes F1 down
    familiar = {i for i, row in enumerate(read_rows(world, "test")) if not row.meta.held_out}
    pools = {
        code: [
            e for e, kind in zip(train, train_kinds) if e.type == taxonomy.type_by_code(code).id and kind in args.kinds
        ]
        for code in args.hold
    }
    kept_train = [e for e in train if e.type not in held]
    base_verdicts = [
        v for start in range(0, len(test), 32) for v in guard.classify_batch(*_pairs(test[start : start + 32]))
    ]
    test_pooled = guard.classifier.category_features(*_pairs(test))
    train_pooled = guard.classifier.category_features(*_pairs(train))
    row_of = {id(e): i for i, e in enumerate(train)}

    labels = [taxonomy.types[e.type].code for e in test]
    # a held-out type's rows of other kinds are neither positives nor negatives of its category
    scored = {
        code: [i for i, (label, kind) in enumerate(zip(labels, test_kinds)) if label != code or kind in args.kinds]
        for code in args.hold
    }
    kept_rows = [i for i, e in enumerate(test) if e.type not in held]
    baseline_macro = _macro_f1_kept(
        [labels[i] for i in kept_rows], [base_verdicts[i].type.code for i in kept_rows], kept
    )
    results, refused, lasts = [], [], {}
    for method in METHODS:
        for k in args.ks:
            for draw in range(args.draws):
                rng = random.Random(f"{args.seed}-{k}-{draw}")
                negatives = rng.sample(kept_train, args.negatives)
                bank = CategoryBank.empty(test_pooled.shape[1])
                chosen = {}
                for code in args.hold:
                    chosen[code] = rng.sample(pools[code], k)
                    positives = train_pooled[[row_of[id(e)] for e in chosen[code]]]
                    neg = train_pooled[[row_of[id(e)] for e in negatives]]
                    (category, weight, bias), error = _fit(f"new_{code}", positives, neg, method)
                    if error:
                        refused.append({"method": method, "k": k, "draw": draw, "type": code, "error": error})
                    bank = bank.with_category(category, weight, bias)
                probs = bank.probabilities(test_pooled)
                verdicts = [
                    decide_categories(v, bank.categories, p.tolist(), guard.policy, taxonomy)
                    for v, p in zip(base_verdicts, probs)
                ]
                rates = {
                    code: _rates([labels[i] == code for i in scored[code]], (probs[scored[code], j] >= 0.5).tolist())
                    for j, code in enumerate(args.hold)
                }
                f1 = {code: r["f1"] for code, r in rates.items()}
                familiar_f1 = {
                    code: _rates(
                        [labels[i] == code for i in scored[code] if i in familiar],
                        [bool(probs[i, j] >= 0.5) for i in scored[code] if i in familiar],
                    )["f1"]
                    for j, code in enumerate(args.hold)
                }
                macro = _macro_f1_kept([labels[i] for i in kept_rows], [verdicts[i].type.code for i in kept_rows], kept)
                results.append(
                    {
                        "method": method,
                        "k": k,
                        "draw": draw,
                        "held_out_f1": f1,
                        "held_out_f1_familiar_rows": familiar_f1,
                        "held_out": rates,
                        "kept_macro_f1": macro,
                    }
                )
                if k == max(args.ks) and draw == 0:
                    lasts[method] = (chosen, negatives, verdicts)
    agreement = {method: _end_to_end(guard, test, last, args.hold, method) for method, last in lasts.items()}
    # What a linear scorer on these features reaches with every training row: all the held-out type's rows of
    # the kinds against all the kept types' rows (no few-shot limit; the features are then the bound).
    probe = {}
    kept_pooled = train_pooled[[row_of[id(e)] for e in kept_train]]
    for method in METHODS:
        for code in args.hold:
            positives = train_pooled[[row_of[id(e)] for e in pools[code]]]
            (category, weight, bias), _ = _fit(f"new_{code}", positives, kept_pooled, method)
            fired = CategoryBank.empty(weight.shape[0]).with_category(category, weight, bias).probabilities(test_pooled)
            truth = [labels[i] == code for i in scored[code]]
            probe[f"{method}/{code}"] = _rates(truth, (fired[scored[code], 0] >= 0.5).tolist())
    summary = _summarise(results, args, baseline_macro)
    head_flags = {
        code: statistics.mean(base_verdicts[i].flagged for i in scored[code] if labels[i] == code) for code in args.hold
    }
    # The head's own F1 on the held-out types (0 for a guard trained without them; with --guard, what a head
    # trained on them reaches on the same rows: the bar a category's features are up against)
    head_f1 = {
        f"{code}{part}": _rates(
            [labels[i] == code for i in scored[code] if i in rows],
            [base_verdicts[i].type.code == code for i in scored[code] if i in rows],
        )
        for code in args.hold
        for part, rows in (("", set(range(len(test)))), ("/familiar_rows", familiar))
    }
    report = {
        "machine": describe_machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "stage1_seconds": round(train_seconds, 1),
        "test_rows": len(test),
        "held_out_test_rows": {code: sum(labels[i] == code for i in scored[code]) for code in args.hold},
        "head_flags_held_out_rows_without_categories": head_flags,
        "head_type_f1_on_held_out_types": head_f1,
        "baseline_kept_macro_f1": baseline_macro,
        "summary": summary,
        "runs": results,
        "end_to_end_identical_verdicts": agreement,
        "refused_categories": refused,
        "all_rows_probe": probe,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "metrics.json", json.dumps(report, indent=2) + "\n")
    for path in (args.out / "f1_vs_k.png", args.plot):
        if path is not None:
            _plot(summary, args, path)
    _print(report)


def _fit(code: str, positives: torch.Tensor, negatives: torch.Tensor, method: str):
    """``fit_category``'s result and None; when it refuses, a stand-in that never fires and the reason."""
    try:
        return fit_category(code, positives, negatives, level=2, method=method), None
    except CategoryError as err:  # refused: counted by the caller, and the category never fires
        return (new_category(code, level=2), torch.zeros(positives.shape[1]), -1e4), str(err)


def _end_to_end(guard, test: list[Example], last, hold: list[str], method: str) -> str:
    """Verdicts of ``add_category`` + ``classify_batch`` against the fast path's, for one configuration."""
    chosen, negatives, expected = last
    benign = [(e.images[0], e.prompt) for e in negatives]
    for code in hold:
        examples = [(e.images[0], e.prompt) for e in chosen[code]]
        try:
            guard.add_category(f"new_{code}", examples, level=2, negatives=benign, method=method)
        except CategoryError:
            continue  # refused on the fast path too, where it never fires
    verdicts = [v for start in range(0, len(test), 32) for v in guard.classify_batch(*_pairs(test[start : start + 32]))]
    for category in guard.categories:
        guard.remove_category(category.code)
    same = sum(a.rule == b.rule and a.action == b.action for a, b in zip(verdicts, expected))
    return f"{same}/{len(test)}"


def _summarise(results: list[dict], args: argparse.Namespace, baseline: float) -> list[dict]:
    rows = []
    for method in METHODS:
        for k in args.ks:
            runs = [r for r in results if r["method"] == method and r["k"] == k]
            row = {
                "method": method,
                "k": k,
                "kept_macro_f1_change": statistics.mean(r["kept_macro_f1"] for r in runs) - baseline,
            }
            for code in args.hold:
                values = [r["held_out_f1"][code] for r in runs]
                row[code] = {"mean": statistics.mean(values), "min": min(values), "max": max(values)}
                row[code]["mean_familiar_rows"] = statistics.mean(r["held_out_f1_familiar_rows"][code] for r in runs)
                for rate in ("precision", "recall"):
                    row[code][rate] = statistics.mean(r["held_out"][code][rate] for r in runs)
            rows.append(row)
    return rows


def _plot(summary: list[dict], args: argparse.Namespace, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for method, style in zip(METHODS, ("-o", "--s")):
        for code in args.hold:
            rows = [r for r in summary if r["method"] == method]
            means = [r[code]["mean"] for r in rows]
            spread = [
                [m - r[code]["min"] for m, r in zip(means, rows)],
                [r[code]["max"] - m for m, r in zip(means, rows)],
            ]
            axes.errorbar([r["k"] for r in rows], means, yerr=spread, fmt=style, capsize=3, label=f"{code} ({method})")
    axes.set(xscale="log", xticks=args.ks, xticklabels=[str(k) for k in args.ks], ylim=(0, 1.02))
    axes.set(
        xlabel="examples per category (k)",
        ylabel="F1 on the test split",
        title="held-out concepts as custom categories",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def _print(report: dict) -> None:
    hold = list(report["held_out_test_rows"])
    print(
        f"machine: {report['machine']['cpu']}; Stage I {report['stage1_seconds']} s; test rows {report['test_rows']} "
        f"(held out: {report['held_out_test_rows']})"
    )
    print(f"head alone flags held-out rows: {report['head_flags_held_out_rows_without_categories']}")
    print(f"kept types' macro-F1 without categories: {report['baseline_kept_macro_f1']:.3f}")
    head_f1 = {code: round(rates["f1"], 3) for code, rates in report["head_type_f1_on_held_out_types"].items()}
    print(f"the head's own type F1 on the held-out types (0 when it never saw them; all rows, familiar): {head_f1}")
    print(f"categories refused by add_category (never fire, F1 0): {len(report['refused_categories'])}")
    columns = " | ".join(f"F1 {code} (min-max) P / R; familiar rows" for code in hold)
    print(f"| method | k | {columns} | kept macro-F1 change |")
    print("|---|---:|" + "---:|" * len(hold) + "---:|")
    for row in report["summary"]:
        cells = " | ".join(
            f"{row[c]['mean']:.3f} ({row[c]['min']:.2f}-{row[c]['max']:.2f}) {row[c]['precision']:.2f} / "
            f"{row[c]['recall']:.2f}; {row[c]['mean_familiar_rows']:.3f}"
            for c in hold
        )
        print(f"| {row['method']} | {row['k']} | {cells} | {100 * row['kept_macro_f1_change']:+.1f} pt |")
    probe = {name: {k: round(v, 3) for k, v in rates.items()} for name, rates in report["all_rows_probe"].items()}
    print(f"every training row of the held-out types (a linear probe's bound): {probe}")
    same = report["end_to_end_identical_verdicts"]
    print(f"end-to-end (add_category + classify_batch) verdicts identical to the fast path: {same}")


if __name__ == "__main__":
    main()
