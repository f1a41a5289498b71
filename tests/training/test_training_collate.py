"""Collation: SFT masking on the answers only, one image placeholder per example, right padding."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from psaguard.errors import DatasetError
from psaguard.testing.llava import build_tiny_processor
from psaguard.training.collate import IGNORE_INDEX, Collator
from psaguard.training.data import Example


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    return tmp_path / "a.png"


def example(image: Path, *turns: tuple[str, str]) -> Example:
    return Example(images=(image,), turns=turns, level=3, type=1, path="d.jsonl", line=7)


def collator(processor, max_length: int = 256) -> Collator:
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    return Collator(
        processor, image_id, lambda images: processor.image_processor(images, return_tensors="pt"), max_length
    )


def labelled_text(processor, ids: list[int], labels: list[int]) -> list[str]:
    return processor.tokenizer.convert_ids_to_tokens([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_only_the_answers_are_labelled_and_the_head_reads_the_judged_text(tiny_processor, image_path: Path) -> None:
    batch = collator(tiny_processor)(
        [
            example(image_path, ("what is this image ?", "a red square"), ("why ?", "it is red")),
            example(image_path, ("describe it", "no")),
        ]
    )
    # The head reads what the guard judges at inference: every turn of the request (all but the last answer).
    assert batch.prompts == ["what is this image ?\na red square\nwhy ?", "describe it"]
    ids, labels, mask = batch.input_ids[0].tolist(), batch.labels[0].tolist(), batch.attention_mask[0].tolist()
    assert labelled_text(tiny_processor, ids, labels) == ["a", "red", "square", "</s>", "it", "is", "red", "</s>"]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))  # teacher forcing: labels = ids
    short = int(batch.attention_mask[1].sum())
    assert batch.labels[1, short:].eq(IGNORE_INDEX).all() and batch.attention_mask[1, short:].eq(0).all()
    assert sum(mask) == len(mask)
    image_id = tiny_processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (batch.input_ids == image_id).sum(1).tolist() == [1, 1]
    assert batch.level.tolist() == [3, 3] and batch.pixel_values.shape == (2, 3, 32, 32)


def test_eos_is_appended_when_the_template_does_not_end_answers_with_it(image_path: Path) -> None:
    processor = build_tiny_processor()
    processor.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}<image> {% else %}{{ p['text'] }} {% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    ids, labels = collator(processor).encode(example(image_path, ("what ?", "a red square")))
    assert labelled_text(processor, ids, labels) == ["a", "red", "square", "</s>"]


def test_an_example_cut_before_its_answer_is_a_dataset_error_naming_its_line(tiny_processor, image_path) -> None:
    with pytest.raises(DatasetError, match=r"d\.jsonl:7: .*max_length"):
        collator(tiny_processor, max_length=16).encode(example(image_path, ("what " * 20, "a red square")))


def test_a_hint_goes_to_the_last_user_turn_unlabelled_and_the_head_never_reads_it(
    tiny_processor, image_path: Path
) -> None:
    image_id = tiny_processor.tokenizer.convert_tokens_to_ids("<image>")
    preprocess = lambda images: tiny_processor.image_processor(images, return_tensors="pt")  # noqa: E731
    rows = [example(image_path, ("what is this ?", "a"), ("describe it", "red square"))]
    plain = Collator(tiny_processor, image_id, preprocess)(rows)
    hinted = Collator(tiny_processor, image_id, preprocess, hint=lambda e: " red image")(rows)
    assert hinted.prompts == plain.prompts == ["what is this ?\na\ndescribe it"]
    text = " ".join(tiny_processor.tokenizer.convert_ids_to_tokens(hinted.input_ids[0].tolist()))
    assert "what is this ? </s>" in text and "describe it red image </s> assistant : red square" in text
    assert labelled_text(tiny_processor, hinted.input_ids[0].tolist(), hinted.labels[0].tolist()) == labelled_text(
        tiny_processor, plain.input_ids[0].tolist(), plain.labels[0].tolist()
    )


def test_label_hints_are_the_hints_guarded_generation_adds(tiny_processor) -> None:
    from psaguard.policy import GenerationOptions, GuardPolicy
    from psaguard.taxonomy import DEFAULT_TAXONOMY
    from psaguard.training.hints import label_hint

    policy, options = GuardPolicy(), GenerationOptions()
    privacy = DEFAULT_TAXONOMY.type_by_code("privacy").id
    hint = label_hint(2, privacy, policy, DEFAULT_TAXONOMY, options)
    assert hint is not None and hint.startswith("\nSafe Hint: ") and "privacy" in hint.lower()
    assert label_hint(0, DEFAULT_TAXONOMY.safe_type_id, policy, DEFAULT_TAXONOMY, options) is None
    assert label_hint(3, privacy, policy, DEFAULT_TAXONOMY, options) is None  # refused without running the LLM
