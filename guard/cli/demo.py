"""``psaguard demo``: a trained tiny guard judging and guarding a few requests from the synthetic world.

The assets in ``psaguard/assets/world_demo`` are a tiny LLaVA that answers questions about the world's
images and the guard trained for it, with a response head, both from a real ``psaguard world run --preset
cpu-long`` (its Stage II LoRA merged in; docs/world_experiment.md gives the command). Everything
loads offline in about a second. The examples are test rows drawn at random (seeded) from the world's test split,
one per kind of request, whatever the guard makes of them; the demo quotes the guard's test-split numbers.
The last example is a request answered harmfully: the tiny model never writes a harmful answer on its own
(it was never taught one), so the demo forces its decode to that answer token by token and shows the
streaming monitor stopping it, and says that the answer is forced.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path

from PIL import Image

from psaguard.generation.forcing import ForcedAnswer

__all__ = [
    "DEMO_ASSETS",
    "HARMFUL_ANSWER",
    "demo_guard_dir",
    "demo_model_dir",
    "demo_requests",
    "run_demo",
]

HARMFUL_ANSWER = "harmful answer"
"""Kind of the example whose answer the demo forces (a harmful one) through the streaming monitor."""

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
    """The demo's (kind, image, prompt) requests: safe, image risk, harmful text, joint risk, its safe twin
    (requests the model answers on its own; the forced harmful answer's request is not among them)."""
    return [(e["kind"], e["image"], e["prompt"]) for e in _examples() if e["kind"] != HARMFUL_ANSWER]


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
    if "response_f1" in numbers:
        parts.append(f"response-harm F1 {numbers['response_f1']:.2f}")
    return ", ".join(parts)


def _examples() -> list[dict]:
    """The rows of ``examples.jsonl`` with their images opened (``image``) and labels as ``(level, type)``."""
    root = _assets()
    rows = [json.loads(line) for line in (root / "examples.jsonl").read_text().splitlines()]
    return [
        {**r, "image": Image.open(root / r["image"]).convert("RGB"), "label": (r["level"], r["type"])} for r in rows
    ]


def run_demo() -> None:
    """Load the trained tiny model and guard, print verdicts and guarded answers, stop a (forced) harmful
    answer with the streaming monitor, and check a save/reload.

    Deterministic: the assets are fixed and decoding is greedy, so there is nothing to seed.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from psaguard.guard import SafetyGuard

    root = _assets()
    model = LlavaForConditionalGeneration.from_pretrained(demo_model_dir()).eval()
    processor = AutoProcessor.from_pretrained(demo_model_dir())
    guard = SafetyGuard.from_pretrained(demo_guard_dir(), model=model, processor=processor)
    print(f"{guard}  (trained on the synthetic safety world: psaguard world run --preset cpu-long)")
    print(
        "The examples are test rows drawn at random (seeded), right or wrong; on the whole test split the\n"
        f"guard is still far from the project's goals ({_headline(root)}):\n"
        "see docs/world.md and docs/world_report.md in the psaguard source repository.\n"
    )
    examples = _examples()
    shown = [e for e in examples if e["kind"] != HARMFUL_ANSWER]
    images, prompts = [e["image"] for e in shown], [e["prompt"] for e in shown]
    verdicts = guard.classify_batch(images, prompts)
    _show_verdicts(guard, shown, verdicts)
    print("\nguarded generation (greedy; the monitor judges each answer as it is written):")
    answers = guard.generate_batch(images, prompts, return_blocked=True, max_new_tokens=24, do_sample=False)
    for example, answer in zip(shown, answers):
        stopped = " [stopped by the monitor]" if answer.stopped else ""
        print(f"[{example['kind']:10}] {example['prompt']!r:60} => ({answer.action}) {answer.text!r}{stopped}")
    for example in (e for e in examples if e["kind"] == HARMFUL_ANSWER):
        _show_stopped_answer(guard, example)
    print(
        f"\nsaved and reloaded: same verdict = {_same_after_reload(guard, model, processor, images, prompts, verdicts)}"
    )
    print("\nfirst verdict as JSON:\n" + verdicts[0].model_dump_json(indent=2))


def _same_after_reload(guard, model, processor, images: list, prompts: list[str], verdicts: list) -> bool:
    """Whether the guard saved and loaded again onto ``model`` gives the same probabilities as ``verdicts``."""
    with tempfile.TemporaryDirectory() as tmp:
        guard.save_pretrained(f"{tmp}/guard")
        reloaded = type(guard).from_pretrained(f"{tmp}/guard", model=model, processor=processor)
        again = reloaded.classify_batch(images, prompts)
    return all(a.type_probs == v.type_probs and a.level_probs == v.level_probs for a, v in zip(again, verdicts))


def _show_verdicts(guard, shown: list[dict], verdicts: list) -> None:
    """One line per example: its verdict (level, type, top type probability, action, rule) beside its label."""
    taxonomy = guard.config.taxonomy
    for example, verdict in zip(shown, verdicts):
        level, type_id = example["label"]
        top = max(verdict.type_probs, key=verdict.type_probs.get)
        truth = f"{taxonomy.levels[level].code}/{taxonomy.types[type_id].code}"
        print(
            f"[{example['kind']:10}] {example['prompt']!r:60} -> level={verdict.level.code!r:9} "
            f"type={verdict.type.code!r:12} p({top})={verdict.type_probs[top]:.2f} action={verdict.action} "
            f"rule={verdict.rule} (label {truth})"
        )


def _show_stopped_answer(guard, example: dict) -> None:
    """Judge a harmful answer with ``classify_response``, then force the decode to it and stream it."""
    image, prompt, answer = example["image"], example["prompt"], example["expected"]
    level, type_id = example["label"]
    taxonomy = guard.config.taxonomy
    print(
        f"\na harmful answer (FORCED: the tiny model never writes one on its own, so a logits processor makes it\n"
        f"decode this world answer token by token; the guard judges the forced tokens as it would its own):\n"
        f"request {prompt!r} (label {taxonomy.levels[level].code}/{taxonomy.types[type_id].code}), answer {answer!r}"
    )
    judged = guard.classify_response(image, prompt, answer)
    print(
        f"classify_response: harmful={judged.harmful} p(harm)={judged.harm_prob:.2f} type={judged.type.code!r} "
        f"action={judged.action} risk_source={judged.risk_source}"
    )
    tokenizer = guard.processor.tokenizer
    forced = ForcedAnswer(tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id)
    stream = guard.stream(image, prompt, max_new_tokens=48, do_sample=False, logits_processor=[forced])
    released = list(stream)
    result = stream.result
    window = guard.policy.response.window
    print(f"request verdict: {stream.action} ({stream.verdict.rule}); streamed chunks: {released!r}")
    if result.stopped:
        print(
            f"stopped by the monitor: the judgement of the first {result.stopped_at} answer tokens flagged it "
            f"(p(harm)={result.response_verdict.harm_prob:.2f}); {result.released_tokens} tokens had been released "
            f"(hold-back window {window}); the client got {result.text!r}"
        )
    elif not result.generated:
        print(f"the request itself was {result.action}d, so no answer was written: {result.text!r}")
    else:
        print(f"NOT stopped: the monitor let the forced harmful answer through: {result.text!r}")
