"""The requests the 7B-shape benchmarks time, and the random checkpoint they time them on.

One place for the model shapes (LLaVA-1.5-7B from ``shapes.py``, or the tiny test model), the processor
(psaguard's word-level tokenizer with CLIP's 336 px / 14 px image processing at 7B shapes), the images and
prompts, the separate guard model's request, and the checkpoint directory layout: the model's sharded
safetensors, its processor, and a trained-shape guard (default ``SafetyGuardConfig``) in ``guard/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from random_checkpoint import checkpoint_bytes, write_random_checkpoint
from shapes import llava_15_7b_config
from transformers import LlavaForConditionalGeneration

from psaguard import GuardPolicy, ResponsePolicy, SafetyGuard
from psaguard.classifier_only import load_classifier_parts
from psaguard.testing.llava import TinyLlavaSpec, build_tiny_llava, build_tiny_processor

__all__ = [
    "ALLOW_ALL",
    "ANSWER_TOKENS",
    "GUARD_DIR",
    "GUARD_PROMPT",
    "PROMPT",
    "add_overhead_arguments",
    "allow_answers",
    "answer",
    "chat_text",
    "guard_response_prompt",
    "images",
    "model_config",
    "plain_generate",
    "processor",
    "random_checkpoint_bytes",
    "tiny_stream_setup",
    "write_train_data",
    "write_workload",
]

PROMPT = "what is shown in this image ? describe the colour and the shape please"
# What a Llama Guard-style guard model is asked. Kept short, so that the separate guard's cost is a lower
# bound: real templates list the whole hazard taxonomy, a few hundred tokens more.
GUARD_PROMPT = (
    "task : check if there is unsafe content in the user message with the image according to our safety "
    f"policy . user : {PROMPT} . provide your safety assessment : say safe or unsafe , and if unsafe the "
    "violated categories ."
)
ALLOW_ALL = GuardPolicy(level_actions={1: "allow", 2: "allow", 3: "allow"})
"""Every guarded request generates, so guarded runs time the guard's machinery, not its decisions."""
ANSWER_TOKENS = 256
"""Length of the answer the response-side comparison judges."""
_ANSWER_WORDS = "this image is a photo of a red circle on a white square , there is a blue triangle in it .".split()
GUARD_DIR = "guard"
IMAGE_SIDES = (640, 480)  # a typical photo (COCO's size), resized and cropped by the processor
GiB = 2**30


def allow_answers(monitor: bool) -> GuardPolicy:
    """:data:`ALLOW_ALL` for answers too, with the streaming monitor on or off (default interval and window):
    monitored runs judge every answer and never stop one."""
    allow = ALLOW_ALL.level_actions
    return ALLOW_ALL.model_copy(update={"response": ResponsePolicy(monitor=monitor, level_actions=allow)})


def add_overhead_arguments(parser: Any) -> None:
    """The options the tiny-model overhead scripts share (monitor_overhead.py, answer_check_overhead.py)."""
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def tiny_stream_setup(threads: int | None) -> tuple[Any, Any, Image.Image]:
    """The tiny LLaVA, its processor and a seeded random 64 x 64 image, after setting torch's ``threads``."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    proc = build_tiny_processor()
    model = build_tiny_llava(processor=proc)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return proc, model, image


def answer(proc: Any, tokens: int = ANSWER_TOKENS) -> str:
    """An answer of exactly ``tokens`` tokens of ``proc``'s tokenizer (words the tiny vocabulary has too)."""
    tok = proc.tokenizer
    words = (_ANSWER_WORDS * (tokens // len(_ANSWER_WORDS) + 2))[: tokens + 8]
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"][:tokens]
    text = tok.decode(ids, skip_special_tokens=True)
    if len(tok(text, add_special_tokens=False)["input_ids"]) != tokens:
        raise ValueError(f"could not write an answer of {tokens} tokens with this tokenizer")
    return text


def guard_response_prompt(answer_text: str) -> str:
    """What a Llama Guard-style guard model is asked about an answer: the request and the answer, short form."""
    return (
        "task : check if there is unsafe content in the agent message with the image according to our safety "
        f"policy . user : {PROMPT} . agent : {answer_text} . provide your safety assessment for the agent : say "
        "safe or unsafe , and if unsafe the violated categories ."
    )


def processor(tiny: bool):  # -> LlavaProcessor
    """The benchmarks' processor: tiny test sizes, or CLIP ViT-L/14-336's image processing."""
    return build_tiny_processor(TinyLlavaSpec() if tiny else TinyLlavaSpec(image_size=336, patch_size=14))


def model_config(tiny: bool, proc: Any):  # -> LlavaConfig
    """The tiny test model's config, or LLaVA-1.5-7B's with ``proc``'s special tokens."""
    if tiny:
        return build_tiny_llava(processor=proc).config
    tok = proc.tokenizer
    config = llava_15_7b_config(tok.convert_tokens_to_ids("<image>"))
    for part in (config, config.text_config):  # the word-level tokenizer's special tokens, for generate
        part.pad_token_id, part.bos_token_id, part.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return config


def images(count: int, seed: int = 0) -> list[Image.Image]:
    """``count`` distinct photo-sized RGB images of random pixels."""
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIDES
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def chat_text(proc: Any, prompt: str) -> str:
    """``prompt`` with one image in the processor's chat template, ready for the assistant's answer."""
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def plain_generate(
    model: Any, proc: Any, prompt: str, batch: list[Image.Image], tokens: int, device: torch.device
) -> Callable[[], object]:
    """A call of ``model.generate`` answering ``prompt`` for each image in ``batch`` with ``tokens`` tokens."""
    text = chat_text(proc, prompt)

    def run() -> object:
        inputs = proc(images=batch, text=[text] * len(batch), padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    return run


def random_checkpoint_bytes(tiny: bool) -> int:
    """Bytes of the checkpoint :func:`write_workload` writes (counted on the meta device)."""
    with torch.device("meta"):
        return checkpoint_bytes(LlavaForConditionalGeneration(model_config(tiny, processor(tiny))).to(torch.bfloat16))


def write_workload(directory: Path, tiny: bool) -> Path:
    """Write the random bf16 checkpoint, its processor and a trained-shape guard (``guard/``) to ``directory``."""
    proc = processor(tiny)
    shard = 64 * 1024 if tiny else 2 * GiB  # several shards at tiny shapes too
    write_random_checkpoint(
        LlavaForConditionalGeneration, model_config(tiny, proc), directory, torch.bfloat16, shard_bytes=shard
    )
    proc.save_pretrained(directory)
    # The guard is sized from the classifier-only parts: all it reads of the model.
    model, proc = load_classifier_parts(directory, proc)
    SafetyGuard.attach(model, proc).save_pretrained(directory / GUARD_DIR)
    return directory


def write_train_data(directory: Path, rows: int) -> Path:
    """``train.jsonl`` in ``directory``: ``rows`` requests alternating risky and safe, with PNGs beside it."""
    risky = {"response": "sorry i can't help with that request", "safe_level": 3, "safe_type": "illegal"}
    safe = {"response": "this is a blue square", "safe_level": 0, "safe_type": "safe"}
    lines = []
    for index, image in enumerate(images(rows, seed=1)):
        name = f"train_{index}.png"
        image.save(directory / name)
        row = {"id": f"train-{index}", "image": name, "prompt": PROMPT, **(risky if index % 2 == 0 else safe)}
        lines.append(json.dumps(row) + "\n")
    path = directory / "train.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path
