from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration

from psaguard.injection import IGNORE_INDEX
from psaguard.training.world.base_model import BaseVlmConfig, build_base_vlm, train_safe_vqa
from psaguard.training.world.build import read_rows
from psaguard.training.world.language import encode_pairs, paraphrase_pairs
from psaguard.training.world.prompts import HARMFUL_INTENTS, JOINT_RULES, QUESTIONS
from psaguard.training.world.vocabulary import split_words

_GROUPS = [
    *({q.text for q in QUESTIONS if q.asks == a} for a in {q.asks for q in QUESTIONS}),
    *(set(h.texts) for h in HARMFUL_INTENTS),
    *(set(j.clauses) for j in JOINT_RULES),
]


def _held_out_texts() -> set[str]:
    texts = {q.text for q in QUESTIONS if q.id.endswith(".2")}
    return texts | {h.texts[2] for h in HARMFUL_INTENTS} | {j.clauses[2] for j in JOINT_RULES}


def test_pairs_rewrite_each_paraphrase_as_every_other_one_of_its_template():
    pairs = paraphrase_pairs()
    assert len(pairs) == len(set(pairs)) == sum(len(g) * (len(g) - 1) for g in _GROUPS)
    assert all(source != target for source, target in pairs)
    assert all(any({source, target} <= group for group in _GROUPS) for source, target in pairs)
    held_out = _held_out_texts()
    assert held_out <= {s for s, _ in pairs} and held_out <= {t for _, t in pairs}


def test_encoded_pairs_are_text_only_and_supervise_only_the_target():
    _, processor = build_base_vlm(BaseVlmConfig(text_hidden=64))
    source, target = paraphrase_pairs()[0]
    (item,) = encode_pairs(processor, [(source, target)])
    assert set(item) == {"input_ids", "labels"}
    supervised = processor.tokenizer.decode(item["input_ids"][item["labels"] != IGNORE_INDEX])
    assert supervised.split() == [*split_words(target), processor.tokenizer.eos_token]
    assert processor.tokenizer.unk_token_id not in item["input_ids"].tolist()


def _held_out_only_words(rows) -> list[str]:
    """Words of held-out paraphrases that no training row's prompt or response contains."""
    seen = {w for r in rows for w in (*split_words(r.prompt), *split_words(r.response))}
    return sorted({w for t in _held_out_texts() for w in split_words(t)} - seen)


def test_the_paraphrase_corpus_trains_words_only_held_out_text_uses(small_world):
    rows = read_rows(small_world, "train")[:60]
    words = _held_out_only_words(rows)
    assert words  # the held-out paraphrases bring words of their own

    def embedding_change(language: str) -> float:
        config = BaseVlmConfig(text_hidden=64, steps=4, batch_size=4, warmup=0, language=language, language_batch=8)
        model, processor = build_base_vlm(config)
        ids = processor.tokenizer.convert_tokens_to_ids(words)
        table = model.get_input_embeddings().weight
        before = table[ids].detach().clone()
        train_safe_vqa(model, processor, rows, small_world, config)
        return float((table[ids].detach() - before).abs().max())

    # Never read, they keep their random init but for weight decay (~lr x 0.01 of a ~0.02 weight per step);
    # AdamW moves each one that a paraphrase batch reaches by about lr per step.
    unread, read = embedding_change("none"), embedding_change("paraphrases")
    assert unread < 1e-5 and read > 1e-4


def test_a_tied_base_model_shares_its_embeddings_through_save_and_load(tmp_path):
    untied, _ = build_base_vlm(BaseVlmConfig(text_hidden=64))
    assert untied.lm_head.weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()
    model, _ = build_base_vlm(BaseVlmConfig(text_hidden=64, tie_embeddings=True))
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
