"""``psaguard demo``: a trained tiny guard judging and guarding a few requests from the synthetic world.

The assets in ``psaguard/assets/world_demo`` (a tiny LLaVA that answers questions about the world's
images, with its Stage II LoRA merged in, and the Stage I guard trained for it) come from a real
``psaguard world run`` (see docs/world.md for the command that regenerates them). Everything loads
offline in about a second. The examples are test rows picked among those the guard answered acceptably
(one per kind of request); the demo says so, and points at the report for the guard's real accuracy.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path

from PIL import Image

__all__ = ["DEMO_ASSETS", "demo_guard_dir", "demo_model_dir", "demo_requests", "run_demo"]

DEMO_ASSETS = "assets/world_demo"
"""Folder of the demo's model, guard and examples inside the psaguard package."""


def _assets() -> Path:
    return Path(str(resources.files("psaguard") / DEMO_ASSETS))


def demo_model_dir() -> Path:
    """The shipped tiny LLaVA (``save_pretrained`` format) that the demo guard was trained for."""
    return _assets() / "model"


def demo_guard_dir() -> Path:
    """The shipped trained guard (``psaguard_config.json`` + safetensors) for :func:`demo_model_dir`."""
    return _assets() / "guard"


def demo_requests() -> list[tuple[str, Image.Image, str]]:
    """The demo's (kind, image, prompt) requests: safe, image risk, harmful text, joint risk, its safe twin."""
    return [(kind, image, prompt) for kind, image, prompt, _ in _examples()]


def _headline(root: Path) -> str:
    """The run's test-split numbers, as written by ``psaguard world run --export-demo``."""
    path = root / "headline.json"
    if not path.is_file():
        return "numbers in the report"
    numbers = json.loads(path.read_text())
    parts = [f"head type macro-F1 {numbers['type_macro_f1']:.2f}"]
    if "refusal_unsafe" in numbers:
        parts.append(f"refusal on unsafe {numbers['refusal_unsafe']:.0%}")
        parts.append(f"over-refusal on safe {numbers['over_refusal_safe']:.0%}")
    return ", ".join(parts)


def _examples() -> list[tuple[str, Image.Image, str, tuple[int, int]]]:
    root = _assets()
    rows = [json.loads(line) for line in (root / "examples.jsonl").read_text().splitlines()]
    return [
        (r["kind"], Image.open(root / r["image"]).convert("RGB"), r["prompt"], (r["level"], r["type"])) for r in rows
    ]


def run_demo() -> None:
    """Load the trained tiny model and guard, print verdicts and guarded answers, and a save/reload check.

    Deterministic: the assets are fixed and decoding is greedy, so there is nothing to seed.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from psaguard.guard import SafetyGuard

    root = _assets()
    model = LlavaForConditionalGeneration.from_pretrained(demo_model_dir()).eval()
    processor = AutoProcessor.from_pretrained(demo_model_dir())
    guard = SafetyGuard.from_pretrained(demo_guard_dir(), model=model, processor=processor)
    print(f"{guard}  (trained on the synthetic safety world: psaguard world run)")
    print(
        "The examples are test rows picked among those it answered acceptably; on the whole test split it is\n"
        f"far from the project's goals ({_headline(root)}): see docs/world_report.md in the psaguard\n"
        "source repository for the whole report.\n"
    )
    examples = _examples()
    requests = [(kind, image, prompt) for kind, image, prompt, _ in examples]
    taxonomy = guard.config.taxonomy
    verdicts = guard.classify_batch([image for _, image, _ in requests], [prompt for _, _, prompt in requests])
    for (kind, _, prompt, (level, type_id)), verdict in zip(examples, verdicts):
        top = max(verdict.type_probs, key=verdict.type_probs.get)
        truth = f"{taxonomy.levels[level].code}/{taxonomy.types[type_id].code}"
        print(
            f"[{kind:10}] {prompt!r:60} -> level={verdict.level.code!r:9} type={verdict.type.code!r:12} "
            f"p({top})={verdict.type_probs[top]:.2f} action={verdict.action} rule={verdict.rule} (label {truth})"
        )
    print("\nguarded generation (greedy):")
    answers = guard.generate_batch(
        [image for _, image, _ in requests],
        [prompt for _, _, prompt in requests],
        return_blocked=True,
        max_new_tokens=24,
        do_sample=False,
    )
    for (kind, _, prompt), answer in zip(requests, answers):
        print(f"[{kind:10}] {prompt!r:60} => ({answer.action}) {answer.text!r}")
    with tempfile.TemporaryDirectory() as tmp:
        guard.save_pretrained(f"{tmp}/guard")
        reloaded = SafetyGuard.from_pretrained(f"{tmp}/guard", model=model, processor=processor)
        again = reloaded.classify_batch([image for _, image, _ in requests], [prompt for _, _, prompt in requests])
    same = all(a.type_probs == v.type_probs and a.level_probs == v.level_probs for a, v in zip(again, verdicts))
    print(f"\nsaved and reloaded: same verdict = {same}")
    print("\nfirst verdict as JSON:\n" + verdicts[0].model_dump_json(indent=2))
