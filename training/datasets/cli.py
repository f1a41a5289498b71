"""``psaguard data convert`` and ``psaguard data formats``: subcommands registered into the main CLI.

psaguard data formats [NAME]
psaguard data convert --format vlguard --src ~/data/VLGuard --out data/vlguard_train.jsonl --split train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register", "run_convert", "run_formats"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` with its ``convert`` and ``formats`` subcommands; each sets ``func(args) -> exit code``.

    Building the parser imports nothing heavy: the converters (which load torch through the atomic file
    writer) are imported when a subcommand runs.
    """
    data = subparsers.add_parser("data", help="convert public safety data sets to psaguard JSONL")
    commands = data.add_subparsers(dest="data_command", required=True)

    conv = commands.add_parser("convert", help="convert one data set split", description=run_convert.__doc__)
    conv.add_argument("--format", required=True, help="the data set's format (`psaguard data formats` lists them)")
    conv.add_argument("--src", type=Path, required=True, help="the downloaded data set's folder")
    conv.add_argument("--out", type=Path, required=True, help="the JSONL to write (a report goes beside it)")
    conv.add_argument("--split", help="which split (default: the format's first; see `psaguard data formats`)")
    conv.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    conv.add_argument(
        "--map",
        dest="overrides",
        action="append",
        default=[],
        metavar="LABEL=LEVEL:TYPE",
        help="map a source label (its table key) to a level and type code, e.g. 'no=reject:illegal'; repeatable",
    )
    conv.set_defaults(func=run_convert)

    formats = commands.add_parser("formats", help="list the formats, or one format's label table")
    formats.add_argument("name", nargs="?", help="show this format's label table")
    formats.set_defaults(func=run_formats)


def run_convert(args: argparse.Namespace) -> int:
    """Convert a data set from its own on-disk layout to psaguard JSONL whose rows point at its images; bad
    records are skipped and counted with their reasons (--strict: the first one is an error naming its place)."""
    from psaguard.training.datasets import convert, get_format, parse_override  # loads torch: only when run

    fmt = get_format(args.format)
    overrides = dict(parse_override(text) for text in args.overrides)
    report = convert(fmt, args.src, args.out, split=args.split, strict=args.strict, overrides=overrides)
    summary = report.model_dump(exclude={"errors"})
    summary["first_errors"] = report.errors[:5]
    print(json.dumps(summary, indent=2))
    print(f"train/eval with image_root={report.image_root} (JSONL rows are relative to it)")
    return 0


def run_formats(args: argparse.Namespace) -> int:
    """List the formats (name, splits, what the layout was written from), or print one format's label table."""
    from psaguard.training.datasets import FORMATS, get_format

    if args.name is None:
        for name, cls in FORMATS.items():
            print(f"{name:16} {cls.title:22} splits={','.join(cls.splits):40} layout from {cls.verified}")
        return 0
    fmt = get_format(args.name)
    print(f"{fmt.title}: {fmt.source}\nsplits: {', '.join(fmt.splits)}; layout from {fmt.verified}")
    print(f"{'source label key':40} {'level':8} {'type':11} {'MLCommons':26} note")
    for key, level, kind, codes, note in fmt.labels.rows():
        print(f"{key:40} {level:8} {kind:11} {codes:26} {note}")
    return 0
