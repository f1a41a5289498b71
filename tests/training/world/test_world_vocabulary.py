from __future__ import annotations

import pytest

from psaguard.policy import DEFAULT_HINTS, DEFAULT_REFUSAL
from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.testing.llava import TinyLlavaSpec, build_tiny_processor
from psaguard.training.world.build import SPLITS, read_rows
from psaguard.training.world.vocabulary import split_words, world_texts, world_vocabulary


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_processor(TinyLlavaSpec(extra_words=world_vocabulary())).tokenizer


def _unknown(tokenizer, text: str) -> list[str]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.convert_ids_to_tokens(i) for i in ids if i == tokenizer.unk_token_id] and [text]


def test_every_prompt_and_response_of_a_built_world_tokenizes_without_unk(small_world, tokenizer):
    texts = {t for split in SPLITS for r in read_rows(small_world, split) for t in (r.prompt, r.response)}
    assert len(texts) > 100
    assert [t for t in texts if _unknown(tokenizer, t)] == []


def test_policy_hints_and_refusals_tokenize_without_unk(tokenizer):
    concepts = [t.concept for t in DEFAULT_TAXONOMY.types]
    texts = [h.format(concept=c) for c in concepts for h in DEFAULT_HINTS.values()]
    texts += [DEFAULT_REFUSAL.format(concept=c) for c in concepts]
    assert [t for t in texts if _unknown(tokenizer, t)] == []


def test_split_words_matches_the_tiny_tokenizer(tokenizer):
    for text in world_texts():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == split_words(text)


def test_vocabulary_is_sorted_unique_and_keeps_case():
    vocab = world_vocabulary()
    assert list(vocab) == sorted(set(vocab))
    assert {"I", "i", "sorry", "'", "spiral", "loser", "three"} <= set(vocab)
    assert "<unk>" not in vocab
