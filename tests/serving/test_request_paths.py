"""One guarded request gets one verdict on every path: the facade, generation, streaming, LangChain, HTTP.

The request holds two images of different shapes on a tiny LLaVA-OneVision, whose processor treats the images
of a multi-image request differently from single images (untiled): a path that judged the images one by one,
as separate requests, would give other probabilities.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from langchain_core.messages import HumanMessage
from PIL import Image
from serving_helpers import data_url, openai_client
from transformers import LlavaOnevisionForConditionalGeneration

from psaguard import GuardRequest, SafetyGuard, SafetyVerdict
from psaguard.adapters import GuardRunnable
from psaguard.policy import worst_verdict
from psaguard.serving import BackgroundServer, ServeConfig, create_app
from psaguard.testing import build_tiny_family
from psaguard.testing.llava import save_pretrained_pair

PROMPT = "compare the two pictures"


@pytest.fixture(scope="module")
def onevision_guard(tmp_path_factory) -> SafetyGuard:
    build = build_tiny_family("llava_onevision")
    path = save_pretrained_pair(tmp_path_factory.mktemp("onevision"), build.model, build.processor)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(path).eval()
    torch.manual_seed(0)
    return SafetyGuard.attach(model, type(build.processor).from_pretrained(path))


@pytest.fixture(scope="module")
def request_images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 80), (80, 40))]


def same(verdict: SafetyVerdict | dict, expected: SafetyVerdict, tolerance: float = 1e-6) -> None:
    """``verdict`` (or its JSON, as the server sends it) is ``expected``."""
    data = verdict.model_dump(mode="json") if isinstance(verdict, SafetyVerdict) else verdict
    wanted = expected.model_dump(mode="json")
    for key in ("action", "rule", "level", "type", "hint", "refusal"):
        assert data[key] == wanted[key], key
    # the same request is judged in the same batch shape on every path: equal up to float32 summation order
    assert data["level_probs"] == pytest.approx(wanted["level_probs"], abs=tolerance)
    assert data["type_probs"] == pytest.approx(wanted["type_probs"], abs=tolerance)


def test_every_path_gives_the_verdict_of_the_whole_request(onevision_guard, request_images):
    guard = onevision_guard
    expected = guard.classify_requests([GuardRequest.of(request_images, PROMPT)])[0]
    # judged as two separate requests, the images give other probabilities on this family: the equalities
    # below can tell a path that does not keep the request together
    apart = worst_verdict(guard.classify_batch(request_images, [PROMPT] * 2))
    assert apart.type_probs != pytest.approx(expected.type_probs, abs=5e-4)  # 1.7e-3 apart on this model

    same(guard.generate(request_images, PROMPT, max_new_tokens=1).verdict, expected)
    same(guard.stream(request_images, PROMPT, max_new_tokens=1).verdict, expected)
    runnable = GuardRunnable(guard)
    same(runnable.invoke({"image": request_images, "prompt": PROMPT}), expected)
    content = [*({"type": "image_url", "image_url": {"url": data_url(image)}} for image in request_images)]
    message = HumanMessage(content=[*content, {"type": "text", "text": PROMPT}])
    same(runnable.invoke([message]), expected)  # what guarded() and the agent middleware judge with

    # The drop-in wrapper judges the app's own processor output (its pixels, the prompt read back from its
    # ids): the same request, computed in another order (measured 1e-5 here), far from judging apart.
    turn = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": PROMPT}]
    text = guard.processor.apply_chat_template([{"role": "user", "content": turn}], add_generation_prompt=True)
    inputs = guard.processor(text=[text], images=[request_images], return_tensors="pt")
    _, (wrapped,) = guard.wrap().generate_with_results(**inputs, max_new_tokens=1)
    same(wrapped.verdict, expected, tolerance=1e-4)

    with BackgroundServer(create_app(guard, ServeConfig(model_name="tiny", check_answers=False))) as server:
        client = openai_client(server)
        parts = [{"type": "text", "text": PROMPT}, *content]
        (result,) = client.moderations.create(model="tiny", input=parts).results
        same(result.psaguard, expected)
        answer = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": [*content, {"type": "text", "text": PROMPT}]}],
            max_tokens=1,
        )
        same(answer.psaguard, expected)
