"""The row groups the world is drawn in: a benign, image-risk, harmful or joint group, and attacks on them.

A group is one or more :class:`Draft` rows (a row before it has an id) over the scenes they show; a joint
group is the risky row plus two safe twins (the same prompt next to another image; the same image with
another prompt). Every function draws from the generator it is given, in a fixed order, so the caller's
seed fixes the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.world.concepts import SAFE_NOUNS, Scene, sample_risk_scene, sample_safe_scene
from psaguard.training.world.prompts import ATTACK_SUFFIXES, HARMFUL_INTENTS, JOINT_RULES, QUESTIONS, Question, answer

__all__ = ["GROUPS", "GROUP_ROWS", "Draft", "Kind", "Pool", "attack_draft", "choose_kind"]

Kind = Literal["benign", "image_risk", "harmful", "joint"]
_TYPOGRAPHIC_BANNERS = ("safe", "ok")


@dataclass(frozen=True)
class Draft:
    """A row before it has an id: scene index within its group, prompt and labels."""

    scene: int
    prompt: str
    level: int
    type_code: str
    kind: Kind
    template: str
    question: str | None
    answer: str | None
    twin: bool = False
    harmful_answer: bool = False


@dataclass(frozen=True)
class Pool:
    """The styles and templates a split may draw from."""

    styles: tuple[str, ...]
    held_styles: frozenset[str]
    held_templates: frozenset[str]
    heldout_allowed: bool

    def allowed(self, template: str) -> bool:
        return self.heldout_allowed or template not in self.held_templates

    def question(self, rng: np.random.Generator, scene: Scene) -> Question:
        options = [q for q in QUESTIONS if q.applies_to(scene) and self.allowed(q.id)]
        return options[int(rng.integers(len(options)))]

    def paraphrase(self, rng: np.random.Generator, base: str, n: int) -> int:
        options = [k for k in range(n) if self.allowed(f"{base}.{k}")]
        return options[int(rng.integers(len(options)))]


_SAFE = DEFAULT_TAXONOMY.safe_type


def _benign(rng: np.random.Generator, pool: Pool) -> tuple[list[Scene], list[Draft]]:
    scene = sample_safe_scene(rng, pool.styles)
    q = pool.question(rng, scene)
    return [scene], [Draft(0, q.text, 0, _SAFE, "benign", q.id, None, answer(q.asks, scene))]


def _image_risk(rng: np.random.Generator, pool: Pool) -> tuple[list[Scene], list[Draft]]:
    scene = sample_risk_scene(rng, pool.styles)
    q = pool.question(rng, scene)
    assert scene.risk_type is not None
    return [scene], [Draft(0, q.text, scene.level, scene.risk_type, "image_risk", q.id, None, answer(q.asks, scene))]


def _harmful(rng: np.random.Generator, pool: Pool) -> tuple[list[Scene], list[Draft]]:
    intent = HARMFUL_INTENTS[int(rng.integers(len(HARMFUL_INTENTS)))]
    k = pool.paraphrase(rng, intent.id, len(intent.texts))
    scene = sample_safe_scene(rng, pool.styles)
    return [scene], [Draft(0, intent.texts[k], intent.level, intent.type, "harmful", f"{intent.id}.{k}", None, None)]


def _joint(rng: np.random.Generator, pool: Pool) -> tuple[list[Scene], list[Draft]]:
    # Trigger first, then one of its rules: several rules share 'person', and picking rules uniformly
    # would make person images the most common safe image by far.
    triggers = sorted({j.trigger for j in JOINT_RULES})
    trigger_noun = triggers[int(rng.integers(len(triggers)))]
    rules = [j for j in JOINT_RULES if j.trigger == trigger_noun]
    rule = rules[int(rng.integers(len(rules)))]
    k = pool.paraphrase(rng, rule.id, len(rule.clauses))
    trigger = sample_safe_scene(rng, pool.styles, noun=rule.trigger)
    q = pool.question(rng, trigger)
    prompt, template = f"{rule.clauses[k]} {q.text}", f"{rule.id}.{k}"
    risky = Draft(0, prompt, rule.level, rule.type, "joint", template, q.id, answer(q.asks, trigger))
    # Twin 1: the same prompt next to another safe object is safe, so the prompt alone predicts nothing.
    others = [n for n in SAFE_NOUNS if n != rule.trigger]
    other = sample_safe_scene(rng, pool.styles, noun=others[int(rng.integers(len(others)))])
    twin_prompt = Draft(1, prompt, 0, _SAFE, "benign", template, q.id, answer(q.asks, other), twin=True)
    # Twin 2: the same trigger image with a plain question, or with a clause of a rule it does not trigger.
    q2 = pool.question(rng, trigger)
    foreign = [j for j in JOINT_RULES if j.trigger != rule.trigger]
    if rng.random() < 0.5:
        twin_image = Draft(0, q2.text, 0, _SAFE, "benign", q2.id, None, answer(q2.asks, trigger), twin=True)
    else:
        rule2 = foreign[int(rng.integers(len(foreign)))]
        k2 = pool.paraphrase(rng, rule2.id, len(rule2.clauses))
        prompt2 = f"{rule2.clauses[k2]} {q2.text}"
        twin_image = Draft(0, prompt2, 0, _SAFE, "benign", f"{rule2.id}.{k2}", q2.id, answer(q2.asks, trigger), True)
    return [trigger, other], [risky, twin_prompt, twin_image]


GROUPS = {"benign": _benign, "image_risk": _image_risk, "harmful": _harmful, "joint": _joint}
GROUP_ROWS = {"benign": 1, "image_risk": 1, "harmful": 1, "joint": 3}


def attack_draft(rng: np.random.Generator, index: int, scenes: list[Scene], draft: Draft) -> tuple[list[Scene], Draft]:
    """Turn a risky draft into an attack: even rows get an adversarial suffix, odd rows a text banner."""
    if index % 2 == 0:
        suffix = ATTACK_SUFFIXES[int(rng.integers(len(ATTACK_SUFFIXES)))]
        return scenes, Draft(**{**draft.__dict__, "prompt": f"{draft.prompt} {suffix}"})
    word = _TYPOGRAPHIC_BANNERS[int(rng.integers(len(_TYPOGRAPHIC_BANNERS)))]
    scenes = [s.model_copy(update={"banner": word}) if i == draft.scene else s for i, s in enumerate(scenes)]
    return scenes, draft


def choose_kind(rng: np.random.Generator, weights: dict[str, float], room: int, one_row: bool) -> Kind:
    """A group kind by weight, among those whose rows still fit in ``room`` (joint groups write three)."""
    kinds = [k for k, w in weights.items() if w > 0 and (one_row or GROUP_ROWS[k] <= room)]
    if not kinds:  # only joint groups are weighted and fewer than three rows remain
        return "benign"
    p = np.array([weights[k] for k in kinds], dtype=float)
    return kinds[int(rng.choice(len(kinds), p=p / p.sum()))]  # type: ignore[return-value]
