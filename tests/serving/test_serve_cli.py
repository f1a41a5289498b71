"""``psaguard serve``: argument checks, and ``--demo`` served in a real process that stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from serving_helpers import free_port, image_message

from psaguard.cli.main import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "serve needs --guard DIR (or --demo)"),
        (["serve", "--guard", "g"], "--model DIR, or --classifier-only --base"),
        (["serve", "--guard", "g", "--classifier-only", "--model", "m"], "--base (not --model)"),
        (["serve", "--demo", "--guard", "g"], "do not combine"),
        (["serve", "--demo", "--max-batch", "0"], "invalid serve option"),
        (["serve", "--demo", "--allow-image-url", "https://host"], "invalid serve option"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_server_answers_the_openai_client_and_stops_on_sigterm(local_guard, requests_by_kind, tmp_path):
    by_action = {}
    for image, prompt in requests_by_kind.values():
        by_action.setdefault(local_guard.classify(image, prompt).action, (image, prompt))
    assert {"allow", "refuse"} <= set(by_action)  # the demo shows requests its guard lets through and refuses
    port = free_port()
    keys = tmp_path / "keys"
    keys.write_text("secret-key-of-the-test\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "psaguard.cli",
        "serve",
        "--demo",
        "--port",
        str(port),
        "--api-key-file",
        str(keys),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(f"the server did not become ready: {process.communicate(timeout=10)[1][-2000:]}")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="secret-key-of-the-test", max_retries=0)
        answer = client.chat.completions.create(model="psaguard", messages=[image_message(*by_action["refuse"])])
        assert answer.choices[0].finish_reason == "content_filter"
        # answers are checked by default: the demo guard has a response head, so an allowed chat is answered
        # (a guard without one fails it closed with a 500 response_head_missing)
        answer = client.chat.completions.create(
            model="psaguard", messages=[image_message(*by_action["allow"])], max_tokens=8
        )
        assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.content
        assert answer.psaguard["action"] == "allow"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).moderations.create(input="hi")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (so the exit says SIGTERM)
    assert process.returncode in (0, -signal.SIGTERM), err[-2000:]
    assert "Application shutdown complete." in err
