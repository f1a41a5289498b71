"""Every word the world writes, so a word-level tokenizer built from it never produces ``<unk>``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from psaguard.policy import DEFAULT_HINTS, DEFAULT_REFUSAL
from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.world.concepts import COLOURS, RISK_CONCEPTS, SAFE_NOUNS, SAFE_WORDS, Scene
from psaguard.training.world.prompts import (
    ATTACK_SUFFIXES,
    HARMFUL_INTENTS,
    JOINT_RULES,
    QUESTIONS,
    answer,
    harmful_answer,
    respond,
)

__all__ = ["split_words", "world_texts", "world_vocabulary"]

# psaguard.testing.llava's pre-tokenizer: split on whitespace, then isolate every punctuation character.
_WORD = re.compile(r"[^\W_]+|[^\w\s]|_")

# psaguard.policy.error_verdict formats the refusal with this phrase.
_ERROR_CONCEPT = "a request the guard could not judge"


def split_words(text: str) -> list[str]:
    """The words of ``text`` as psaguard.testing.llava's word-level tokenizer splits them."""
    return _WORD.findall(text)


def _scenes() -> Iterator[Scene]:
    colour = next(iter(COLOURS))
    for count in (1, 2, 3):
        for noun in (*SAFE_NOUNS, *(c.noun for c in RISK_CONCEPTS.values())):
            yield Scene(noun=noun, colour=colour, count=count, fill="solid", background="light", seed=0)
        for word in (*SAFE_WORDS, *(c.word for c in RISK_CONCEPTS.values())):
            yield Scene(noun="word", word=word, colour=colour, count=count, fill="word", background="light", seed=0)


def world_texts() -> Iterable[str]:
    """Every template, answer and response text of the world, plus the policy's default hints and refusal."""
    yield from _template_texts()
    yield from _answer_texts()
    yield from _policy_texts()


def _template_texts() -> Iterator[str]:
    """Questions, harmful requests, joint clauses, attack suffixes and colour names."""
    yield from (q.text for q in QUESTIONS)
    yield from (t for h in HARMFUL_INTENTS for t in h.texts)
    yield from (c for j in JOINT_RULES for c in j.clauses)
    yield from ATTACK_SUFFIXES
    yield from COLOURS


def _answer_texts() -> Iterator[str]:
    """The short answers to every question about every scene, then the responses of each risk type."""
    for scene in _scenes():
        yield from (answer(q.asks, scene) for q in QUESTIONS if q.applies_to(scene))
    for risk_type in DEFAULT_TAXONOMY.types:
        if risk_type.code != DEFAULT_TAXONOMY.safe_type:
            yield from (respond(level, risk_type.code, None) for level in (1, 2, 3))
            yield harmful_answer(risk_type.code)


def _policy_texts() -> Iterator[str]:
    """The policy's default hints and refusal for every concept, the error verdict's included."""
    for concept in (*(t.concept for t in DEFAULT_TAXONOMY.types), _ERROR_CONCEPT):
        yield from (hint.format(concept=concept) for hint in DEFAULT_HINTS.values())
        yield DEFAULT_REFUSAL.format(concept=concept)


def world_vocabulary() -> tuple[str, ...]:
    """Sorted unique words of :func:`world_texts`; pass to ``TinyLlavaSpec(extra_words=...)``."""
    return tuple(sorted({w for text in world_texts() for w in split_words(text)}))
