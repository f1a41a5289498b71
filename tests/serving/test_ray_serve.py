"""Ray Serve: the app as a deployment with two replicas on a local Ray instance, called with the openai client."""

from __future__ import annotations

import openai
import pytest
from serving_helpers import free_port, image_message

pytest.importorskip("ray.serve")

import ray
from ray import serve

from psaguard.serving import ServeConfig
from psaguard.serving.ray_serve import ReplicaSpec, build_application

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_server(demo_dirs):
    guard_dir, model_dir = demo_dirs
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        spec = ReplicaSpec(
            guard_dir=guard_dir, model=model_dir, config=ServeConfig(model_name="ray"), num_replicas=2, num_cpus=0.5
        )
        serve.run(build_application(spec), name="psaguard", route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_moderations_and_guarded_chat(ray_server, local_guard, requests_by_kind):
    status = serve.status().applications["psaguard"]
    replicas = status.deployments["psaguard"].replica_states
    assert replicas.get("RUNNING") == 2
    client = openai.OpenAI(base_url=ray_server, api_key="unused", max_retries=0, timeout=120)
    for kind in ("benign", "harmful"):
        image, prompt = requests_by_kind[kind]
        expected = local_guard.generate([image], prompt, max_new_tokens=8, do_sample=False)
        answer = client.chat.completions.create(model="ray", messages=[image_message(image, prompt)], max_tokens=8)
        assert answer.choices[0].message.content == expected.text
        assert answer.psaguard["rule"] == expected.verdict.rule
    results = [client.moderations.create(input="hello").results[0] for _ in range(8)]
    assert all(result.psaguard["rule"] == "no_image" for result in results)
