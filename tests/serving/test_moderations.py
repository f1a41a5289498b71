"""``/v1/moderations`` through the official openai client: OpenAI's shape, psaguard's verdict, input policies."""

from __future__ import annotations

import base64

import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from serving_helpers import data_url, openai_client

from psaguard.serving import BackgroundServer, ServeConfig, create_app
from psaguard.serving.moderation import OPENAI_CATEGORIES


def parts(image, text) -> list[dict]:
    return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": data_url(image)}}]


@pytest.mark.parametrize("kind", ["benign", "image_risk", "harmful", "joint"])
def test_multimodal_input_gets_the_guards_verdict(local_server, local_guard, requests_by_kind, kind):
    image, prompt = requests_by_kind[kind]
    expected = local_guard.classify(image, prompt)
    response = openai_client(local_server).moderations.create(model="demo", input=parts(image, prompt))
    assert response.model == "demo" and response.id.startswith("modr-")
    (result,) = response.results
    verdict = result.psaguard
    assert (verdict["action"], verdict["rule"]) == (expected.action, expected.rule)
    assert (verdict["level"]["code"], verdict["type"]["code"]) == (expected.level.code, expected.type.code)
    assert verdict["type_probs"] == pytest.approx(expected.type_probs, abs=1e-5)
    assert result.flagged == expected.flagged
    name = OPENAI_CATEGORIES.get(expected.type.code, f"psaguard/{expected.type.code}")
    categories = result.categories.model_dump()
    if expected.flagged:
        assert categories[name] is True
        assert result.category_applied_input_types.model_dump()[name] == ["text", "image"]
    assert sum(bool(flag) for flag in categories.values()) == int(expected.flagged)
    scores = result.category_scores.model_dump()
    risky = 1 - expected.level_probs["safe"]
    for code, probability in expected.type_probs.items():
        if code != "safe":
            assert scores[OPENAI_CATEGORIES.get(code, f"psaguard/{code}")] == pytest.approx(
                probability * risky, abs=1e-5
            )


def test_refused_request_is_flagged_under_the_openai_category_of_its_type(
    local_server, local_guard, requests_by_action
):
    image, prompt = requests_by_action["refuse"]
    code = local_guard.classify(image, prompt).type.code
    (result,) = openai_client(local_server).moderations.create(input=parts(image, prompt)).results
    assert result.flagged and result.categories.model_dump()[OPENAI_CATEGORIES.get(code, f"psaguard/{code}")]
    assert result.psaguard["refusal"]


def test_text_without_image_follows_the_text_only_policy(local_server):
    response = openai_client(local_server).moderations.create(input=["hello there", "how are you"])
    assert len(response.results) == 2
    for result in response.results:
        assert result.flagged is False
        assert result.psaguard["rule"] == "no_image" and result.psaguard["action"] == "allow"
        assert all(types == [] for types in result.category_applied_input_types.model_dump().values() if types)


def test_remote_image_url_is_refused_without_an_allow_list(local_server):
    remote = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/a.png"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(local_server).moderations.create(input=remote)
    assert caught.value.code == "remote_image_refused"
    assert caught.value.body["type"] == "invalid_request_error"


def test_corrupt_image_is_a_400_naming_the_part(local_server):
    bad = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(local_server).moderations.create(input=bad)
    assert caught.value.code == "invalid_image" and "input[0].image_url[0]" in caught.value.message


@pytest.fixture(scope="module")
def image_host(requests_by_action):
    """A loopback web server with one PNG and redirects."""
    image, _ = requests_by_action["refuse"]
    png = base64.b64decode(data_url(image).split(",", 1)[1])
    app = FastAPI()
    app.get("/img.png")(lambda: Response(png, media_type="image/png"))
    app.get("/redirect")(lambda: RedirectResponse("/img.png"))
    app.get("/img-redirect")(lambda: RedirectResponse("/redirect"))
    with BackgroundServer(app) as server:
        yield server


def test_remote_images_are_fetched_only_under_an_allowed_prefix(local_guard, requests_by_action, image_host):
    image, prompt = requests_by_action["refuse"]
    config = ServeConfig(image_url_allowlist=(image_host.root_url + "/img",))
    with BackgroundServer(create_app(local_guard, config)) as server:

        def moderate(path: str):
            url = image_host.root_url + path
            remote = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
            return openai_client(server).moderations.create(input=remote).results[0]

        assert moderate("/img.png").psaguard["rule"] == local_guard.classify(image, prompt).rule
        # outside the prefix: refused unfetched; inside it but redirecting: not followed
        for path, code in (("/redirect", "remote_image_refused"), ("/img-redirect", "invalid_image")):
            with pytest.raises(openai.BadRequestError) as caught:
                moderate(path)
            assert caught.value.code == code


def test_dot_segments_never_leave_an_allowed_prefix(local_guard, requests_by_action, image_host):
    _, prompt = requests_by_action["refuse"]
    config = ServeConfig(image_url_allowlist=(image_host.root_url + "/public/",))
    with BackgroundServer(create_app(local_guard, config)) as server:
        for path in ("/public/../img.png", "/public/%2e%2e/img.png", "/public/..%2Fimg.png", "/public/./../img.png"):
            remote = [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": image_host.root_url + path}},
            ]
            with pytest.raises(openai.BadRequestError) as caught:
                openai_client(server).moderations.create(input=remote)
            assert caught.value.code == "remote_image_refused", path
