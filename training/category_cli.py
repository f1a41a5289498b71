"""``psaguard category add / list / remove``: custom risk categories of a saved guard, from JSONL examples.

psaguard category add --guard G --model M --code scam --level 3 --examples scam.jsonl [--negatives ok.jsonl] --out G2
psaguard category list --guard G
psaguard category remove --guard G --model M --code scam --out G2

Rows are in the training JSONL schema (:class:`psaguard.training.rows.SampleRow`), one image each. Their
labels are not used: every row of ``--examples`` shows the category, every row of ``--negatives`` is benign.
``safe_type`` may name the new code (or any type of the guard's taxonomy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

from psaguard.cli.logs import add_log_level_option
from psaguard.cli.main import add_guard_arguments, load_guard
from psaguard.taxonomy import RiskType, Taxonomy
from psaguard.training.data import read_jsonl
from psaguard.verdict import Action

# Heavy modules (torch, the facade) load when a subcommand runs, so that `psaguard --help` stays fast.
_METHODS = ("auto", "prototype", "logistic")  # psaguard.categories.FitMethod

__all__ = ["read_pairs", "register", "run_add", "run_list", "run_remove"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``category`` with its ``add``, ``list`` and ``remove`` subcommands."""
    category = subparsers.add_parser("category", help="add, list or remove custom risk categories of a saved guard")
    commands = category.add_subparsers(dest="category_command", required=True)

    add = commands.add_parser(
        "add", help="add a category from example rows (no retraining)", description=run_add.__doc__
    )
    add_guard_arguments(add)
    add.add_argument("--code", required=True, help="the category's code (lowercase, not a taxonomy type)")
    add.add_argument("--level", type=int, required=True, help="risk level id the category carries (1 or more)")
    add.add_argument("--examples", type=Path, required=True, help="JSONL rows showing the category")
    add.add_argument("--negatives", type=Path, help="JSONL rows of benign requests (set the threshold)")
    add.add_argument("--name", help="display name (default: the code)")
    add.add_argument("--concept", help="phrase for hints and refusals (default: the name)")
    add.add_argument("--action", choices=get_args(Action), help="action when it fires (default: the level's)")
    add.add_argument(
        "--method",
        choices=_METHODS,
        default="auto",
        help="how to fit it (auto: logistic with negatives, else prototype)",
    )
    add.add_argument("--image-root", type=Path, help="directory image paths are relative to (default: each file's)")
    add.add_argument("--out", type=Path, required=True, help="directory to save the guard with the category")
    add_log_level_option(add)
    add.set_defaults(func=run_add)

    listing = commands.add_parser("list", help="print a saved guard's custom categories as JSON")
    listing.add_argument("--guard", type=Path, required=True, help="saved guard directory")
    add_log_level_option(listing)
    listing.set_defaults(func=run_list)

    remove = commands.add_parser("remove", help="remove a category and save the guard", description=run_remove.__doc__)
    add_guard_arguments(remove)
    remove.add_argument("--code", required=True, help="the category to remove")
    remove.add_argument("--out", type=Path, required=True, help="directory to save the guard without it")
    add_log_level_option(remove)
    remove.set_defaults(func=run_remove)


def run_add(args: argparse.Namespace) -> int:
    """Fit a custom category on the guard's pooled features of the example rows (and negatives), save the guard
    with it to --out and print the category as JSON."""
    from psaguard.categories.bank import new_category
    from psaguard.categories.config import check_categories

    category = new_category(args.code, level=args.level)  # a bad code or level fails before any model loads
    guard = load_guard(args.guard, args.model, classifier_only=args.classifier_only, dtype=args.dtype)
    taxonomy = guard.classifier.config.taxonomy
    check_categories((*guard.categories, category), taxonomy)  # before the rows are read with the code as a type
    examples = read_pairs(args.examples, args.code, taxonomy, args.image_root)
    negatives = read_pairs(args.negatives, args.code, taxonomy, args.image_root) if args.negatives else None
    category = guard.add_category(
        args.code,
        examples,
        level=args.level,
        name=args.name,
        negatives=negatives,
        action=args.action,
        concept=args.concept,
        method=args.method,
    )
    guard.save_pretrained(args.out)
    print(category.model_dump_json(indent=2))
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print the custom categories of a saved guard (its config, checked against the digest in its weights)."""
    from psaguard.checkpoints.serialization import CONFIG_DIGEST_KEY, read_metadata
    from psaguard.config import SafetyGuardConfig
    from psaguard.loading import WEIGHTS_NAME

    digest = read_metadata(args.guard / WEIGHTS_NAME).get(CONFIG_DIGEST_KEY)
    config = SafetyGuardConfig.load(args.guard, digest=digest)
    print(json.dumps([category.model_dump(mode="json") for category in config.categories], indent=2))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove a custom category from a saved guard and save the guard to --out."""
    guard = load_guard(args.guard, args.model, classifier_only=args.classifier_only, dtype=args.dtype)
    removed = guard.remove_category(args.code)
    guard.save_pretrained(args.out)
    print(removed.model_dump_json(indent=2))
    return 0


def read_pairs(path: Path, code: str, taxonomy: Taxonomy, image_root: Path | None) -> list[tuple[Path, str]]:
    """The (image, prompt) pairs of a JSONL file of training rows; rows may label themselves with ``code``."""
    extended = taxonomy.model_copy(
        update={"types": (*taxonomy.types, RiskType(id=taxonomy.num_types, code=code, name=code))}
    )
    examples, _ = read_jsonl(path, image_root=image_root, taxonomy=extended)
    for example in examples:
        if len(example.images) != 1:
            raise example.error(f"category rows hold one image each, this one {len(example.images)}")
    return [(example.images[0], example.prompt) for example in examples]
