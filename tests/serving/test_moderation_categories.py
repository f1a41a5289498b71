"""``/v1/moderations`` lists a guard's custom categories beside the built-in ones, as ``psaguard/<code>``."""

from __future__ import annotations

import pytest
from category_helpers import variant
from serving_helpers import data_url, openai_client

from psaguard.serving import BackgroundServer, ServeConfig, create_app, load_guard


def parts(image, text) -> list[dict]:
    return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": data_url(image)}}]


@pytest.fixture(scope="module")
def category_server(demo_dirs, requests_by_kind):
    guard = load_guard(*demo_dirs, classifier_only=False)  # its own guard: the session's stays without categories
    image, prompt = requests_by_kind["image_risk"]
    benign = [requests_by_kind[kind] for kind in ("benign", "joint twin")]
    guard.add_category(
        "word_risk", [(variant(image, seed), prompt) for seed in range(4)], level=3, negatives=benign, name="Words"
    )
    with BackgroundServer(create_app(guard, ServeConfig(model_name="demo"))) as server:
        yield server, guard


def test_a_firing_custom_category_is_flagged_under_its_code(category_server, requests_by_kind):
    server, guard = category_server
    image, prompt = requests_by_kind["image_risk"]
    expected = guard.classify(image, prompt)
    (result,) = openai_client(server).moderations.create(input=parts(image, prompt)).results
    assert expected.rule == "category:word_risk/level:reject" and result.psaguard["rule"] == expected.rule
    categories, scores = result.categories.model_dump(), result.category_scores.model_dump()
    assert categories["psaguard/word_risk"] is True and sum(map(bool, categories.values())) == 1
    assert scores["psaguard/word_risk"] == pytest.approx(expected.custom_scores["word_risk"], abs=1e-5)
    assert result.category_applied_input_types.model_dump()["psaguard/word_risk"] == ["text", "image"]
    assert "illicit" in categories  # the built-in categories stay


def test_a_benign_request_reports_the_custom_score_unflagged(category_server, requests_by_kind):
    server, guard = category_server
    image, prompt = requests_by_kind["benign"]
    (result,) = openai_client(server).moderations.create(input=parts(image, prompt)).results
    assert result.categories.model_dump()["psaguard/word_risk"] is False
    score = result.category_scores.model_dump()["psaguard/word_risk"]
    assert score == pytest.approx(guard.classify(image, prompt).custom_scores["word_risk"], abs=1e-5) and score < 0.5
