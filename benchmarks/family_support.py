"""Which image-text-to-text families of the installed transformers the generic adapter guards, and why not.

    python benchmarks/family_support.py            # print the table
    python benchmarks/family_support.py --write    # also write it into docs/adapters.md

Runs ``tests/backbones/test_generic_families.py`` (one test per model type of transformers'
``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``) and turns its outcomes into a table: **works** (the family
passed the whole bar through the generic adapter; "works but wrap()" where only the drop-in wrapper does
not), **refused** (the adapter says why the model does not
follow the interface), **not built here** (its tiny model or processor cannot be built offline on this
machine, with the reason), **fails** (the first line of the failure). Nothing is written by hand.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import transformers

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/backbones/test_generic_families.py"
FAMILY_TEST = "test_family_meets_the_bar"
WRAP_TEST = "test_wrap_generates_exactly"
DOC = ROOT / "docs" / "adapters.md"
BEGIN, END = "<!-- family-support:begin -->", "<!-- family-support:end -->"


def outcomes(report: Path | None = None) -> dict[str, tuple[str, str]]:
    """model_type -> (result, reason), from one pytest run of the family test (or its JUnit ``report``)."""
    if report is not None:
        return _parse(ET.parse(report))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.xml"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST, f"--junitxml={path}"]
        subprocess.run(command, cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL)
        return _parse(ET.parse(path))


def _parse(tree: ET.ElementTree) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    wrap: dict[str, tuple[str, str]] = {}
    for case in tree.iter("testcase"):
        name = case.get("name", "")
        model_type = re.search(r"\[(.+)\]$", name)
        if model_type is not None and name.startswith((FAMILY_TEST, WRAP_TEST)):
            (found if name.startswith(FAMILY_TEST) else wrap)[model_type.group(1)] = _outcome(case)
    for model_type, (result, _) in list(found.items()):
        wrap_result, wrap_reason = wrap.get(model_type, ("works", ""))
        if result == "works" and wrap_result != "works":  # the bar but the drop-in wrapper
            found[model_type] = ("works but wrap()", f"wrap() {wrap_result}: {wrap_reason}")
    return found


def _outcome(case: ET.Element) -> tuple[str, str]:
    skipped = case.find("skipped")
    failure = case.find("failure") if case.find("failure") is not None else case.find("error")
    if skipped is not None:
        message = skipped.get("message", "")
        if skipped.get("type") == "pytest.xfail":
            return "known gap", message.removeprefix("reason: ")
        message = message.split("Skipped: ", 1)[-1]
        for prefix, result in (("refused: ", "refused"), ("cannot be built here: ", "not built here")):
            if message.startswith(prefix):
                return result, message.removeprefix(prefix)
        return "skipped", message
    if failure is not None:
        return "fails", failure.get("message", "").splitlines()[0][:160]
    return "works", ""


def table(found: dict[str, tuple[str, str]]) -> str:
    counts: dict[str, int] = {}
    for result, _ in found.values():
        counts[result] = counts.get(result, 0) + 1
    summary = ", ".join(f"{result}: {n}" for result, n in sorted(counts.items()))
    rows = [f"| `{t}` | {result} | {_cell(reason)} |" for t, (result, reason) in sorted(found.items())]
    return "\n".join(
        [
            f"transformers {transformers.__version__}, {len(found)} image-text-to-text model types ({summary}).",
            "",
            "| model type | through the generic adapter | why |",
            "| --- | --- | --- |",
            *rows,
        ]
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="read this JUnit XML of the test instead of running it")
    parser.add_argument("--write", action="store_true", help=f"write the table into {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    text = table(outcomes(args.report))
    print(text)
    if args.write:
        doc = DOC.read_text(encoding="utf-8")
        start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:], encoding="utf-8")


if __name__ == "__main__":
    main()
