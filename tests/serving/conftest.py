"""Servers for the serving tests: the shipped demo guard and tiny model, served on 127.0.0.1 on free ports.

The serving tests need the ``serve`` extra and the ``openai`` client, both in the ``dev`` extra. The demo guard
has a response head, so its servers check answers (the default); test_answer_checks.py tests answer checks in
detail, with guards whose response heads are trained to flag chosen answers.
"""

from __future__ import annotations

from importlib import resources

import pytest
from PIL import Image

from psaguard.cli.demo import DEMO_ASSETS, demo_requests
from psaguard.serving import BackgroundServer, ServeConfig, create_app, load_guard


@pytest.fixture(scope="session")
def demo_dirs() -> tuple[str, str]:
    root = resources.files("psaguard") / DEMO_ASSETS
    return str(root / "guard"), str(root / "model")


@pytest.fixture(scope="session")
def requests_by_kind() -> dict[str, tuple[Image.Image, str]]:
    """The demo's requests by kind: benign, image_risk, harmful, joint, 'joint twin', 'harmful answer'."""
    return {kind: (image, prompt) for kind, image, prompt in demo_requests()}


@pytest.fixture(scope="session")
def requests_by_action(local_guard, requests_by_kind) -> dict[str, tuple[Image.Image, str]]:
    """A demo request the demo guard allows and one it refuses (its own verdicts, this run), and one it hints
    on where there is one (the demo guard hints on none of the shipped requests)."""
    by_action: dict[str, tuple[Image.Image, str]] = {}
    for image, prompt in requests_by_kind.values():
        by_action.setdefault(local_guard.classify(image, prompt).action, (image, prompt))
    missing = {"allow", "refuse"} - set(by_action)
    assert not missing, f"the demo's requests lack one the demo guard would {sorted(missing)}"
    return by_action


@pytest.fixture(scope="session")
def local_guard(demo_dirs):
    guard_dir, model_dir = demo_dirs
    return load_guard(guard_dir, model_dir, classifier_only=False)


@pytest.fixture(scope="session")
def classifier_guard(demo_dirs):
    guard_dir, model_dir = demo_dirs
    return load_guard(guard_dir, model_dir, classifier_only=True)


@pytest.fixture(scope="module")
def local_server(local_guard):
    with BackgroundServer(create_app(local_guard, ServeConfig(model_name="demo"))) as server:
        yield server


@pytest.fixture(scope="module")
def proxy_server(classifier_guard, local_server):
    config = ServeConfig(mode="proxy", upstream=local_server.base_url, model_name="demo-proxy")
    with BackgroundServer(create_app(classifier_guard, config)) as server:
        yield server
