from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.world.concepts import (
    ALL_STYLES,
    RISK_CONCEPTS,
    SAFE_NOUNS,
    RiskConcept,
    Scene,
    render_scene,
    sample_risk_scene,
    sample_safe_scene,
)


def _scene(**kw) -> Scene:
    base = dict(noun="gun", colour="red", count=1, fill="solid", background="light", risk_type="illegal", seed=5)
    return Scene(**{**base, **kw})


def test_every_risk_type_of_the_taxonomy_has_a_concept_with_levels_1_to_3():
    risky = {t.code for t in DEFAULT_TAXONOMY.types} - {DEFAULT_TAXONOMY.safe_type}
    assert set(RISK_CONCEPTS) == risky
    assert {lv for c in RISK_CONCEPTS.values() for lv in c.levels.values()} == {1, 2, 3}
    assert len({c.noun for c in RISK_CONCEPTS.values()} | set(SAFE_NOUNS)) == len(RISK_CONCEPTS) + len(SAFE_NOUNS)


@pytest.mark.parametrize("size", [32, 336, 50])
def test_render_is_deterministic_rgb_of_the_requested_size(size):
    scene = _scene(fill="striped", background="noise", count=3)
    first, second = render_scene(scene, size), render_scene(scene, size)
    assert first.mode == "RGB" and first.size == (size, size)
    assert first.tobytes() == second.tobytes()
    assert render_scene(scene.model_copy(update={"seed": 6}), size).tobytes() != first.tobytes()


@pytest.mark.parametrize("size", [32, 336])
def test_the_ink_colour_dominates_the_drawn_pixels(size):
    for colour, channel in (("red", 0), ("green", 1), ("blue", 2)):
        arr = np.asarray(render_scene(_scene(colour=colour, background="dark"), size), dtype=float)
        ink = arr[arr.max(axis=2) > 120]
        assert len(ink) > 0.03 * size * size  # bold: the symbol covers a visible share of the image
        assert np.argmax(ink.mean(axis=0)) == channel


def test_concepts_differ_more_between_each_other_than_between_their_own_styles_at_32px():
    # Same colour, count and background: the symbol is the only difference, and it must show at 32x32.
    def mask(noun: str, seed: int) -> np.ndarray:
        arr = np.asarray(render_scene(_scene(noun=noun, risk_type=None, seed=seed, count=1), 32), dtype=float)
        return arr.mean(axis=2) < 200

    nouns = [c.noun for c in RISK_CONCEPTS.values()] + ["circle", "house", "person"]
    masks = {n: np.mean([mask(n, s) for s in range(6)], axis=0) for n in nouns}
    for a in nouns:
        for b in nouns:
            if a < b:
                assert np.abs(masks[a] - masks[b]).mean() > 0.05, (a, b)


def test_word_scenes_need_a_word_and_the_word_fill():
    with pytest.raises(ValidationError):
        _scene(noun="word", fill="solid")
    with pytest.raises(ValidationError):
        _scene(noun="word", fill="word")  # no word given
    with pytest.raises(ValidationError):
        _scene(colour="teal")
    assert _scene(noun="word", word="gun", fill="word").subject == "gun"


def test_level_follows_the_concept_table_and_safe_scenes_are_level_0():
    assert _scene(risk_type="misleading", noun="spiral", count=3).level == RISK_CONCEPTS["misleading"].levels[3] == 2
    assert _scene(count=3).level == 3
    assert _scene(risk_type=None, noun="cup").level == 0
    with pytest.raises(ValidationError):
        RiskConcept(type="privacy", noun="eye", word="spy", levels={1: 1, 2: 2}, meaning="x")


def test_samplers_respect_the_allowed_styles():
    rng = np.random.default_rng(0)
    allowed = ("outline-dark", "word-light")
    scenes = [sample_safe_scene(rng, allowed) for _ in range(60)] + [sample_risk_scene(rng, allowed) for _ in range(60)]
    assert {s.style for s in scenes} == set(allowed)
    assert all(s.risk_type is None for s in scenes[:60]) and all(s.risk_type for s in scenes[60:])
    assert set(ALL_STYLES) >= set(allowed)
