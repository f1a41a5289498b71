"""psaguard in LangChain: a guard runnable, a guard in front of any chat model, and a guarded local LLaVA.

Runs offline on the shipped demo (a tiny LLaVA and the guard trained for it on the synthetic safety world);
pass ``--model-dir`` to use a real LLaVA checkpoint and ``--guard-dir`` for its trained guard (a model without
a guard gets an untrained one, whose verdicts are random).

    python examples/langchain_chain.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
from pathlib import Path

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from psaguard import GuardPolicy, SafetyGuard
from psaguard.adapters import GuardedChatModel, GuardRunnable, guarded
from psaguard.cli.demo import demo_guard_dir, demo_model_dir, demo_requests


def load_guard(model_dir: Path, guard_dir: Path | None) -> SafetyGuard:
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    if guard_dir is not None:
        return SafetyGuard.from_pretrained(guard_dir, model, processor)
    print("note: no --guard-dir: attaching an untrained guard, so the verdicts below are random")
    return SafetyGuard.attach(model, processor)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def main(model_dir: Path, guard_dir: Path | None) -> None:
    guard = load_guard(model_dir, guard_dir)
    (_, image, question), (_, risky_image, risky_question) = demo_requests()[:2]  # benign, image risk
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer in one short sentence."),
            ("user", [{"type": "image_url", "image_url": {"url": "{image_url}"}}, {"type": "text", "text": "{q}"}]),
        ]
    )
    inputs = {"image_url": data_url(image), "q": question}

    # 1. The guard alone: a Runnable from a request to its SafetyVerdict.
    verdict = (prompt | GuardRunnable(guard)).invoke(inputs)
    print(f"verdict: action={verdict.action} rule={verdict.rule} level={verdict.level.code} type={verdict.type.code}")

    # 2. The guard in front of any chat model (a stand-in for a hosted VLM): risky inputs never reach it, and
    # (with a guard that has a response head) its answers are judged before they are passed on.
    checks = guard.has_response_head  # a guard without one is refused unless answer checks are turned off
    if not checks:
        print("note: this guard has no response head, so answers are not judged (check_answers=False)")
    hosted = FakeListChatModel(responses=["A purple shape."] * 4)
    chain = prompt | guarded(hosted, guard, on_block="end", check_answers=checks) | StrOutputParser()
    print("guarded hosted model:", chain.invoke(inputs))
    strict = guard.with_policy(GuardPolicy(level_actions={1: "refuse", 2: "refuse", 3: "refuse"}))
    strict_chain = prompt | guarded(hosted, strict, on_block="end", check_answers=checks) | StrOutputParser()
    risky = {"image_url": data_url(risky_image), "q": risky_question}
    print("risky request, strict policy:", strict_chain.invoke(risky))

    # 3. A guarded local LLaVA as a LangChain chat model: invoke, stream, batch, async.
    chat = GuardedChatModel(guard=guard, max_tokens=12, on_block="end", check_answers=checks)
    reply = (prompt | chat).invoke(inputs)
    meta = reply.response_metadata["psaguard"]
    print(f"local model: {reply.content!r} (action={meta['action']}, rule={meta['rule']})")
    streamed = "".join(chunk for chunk in (prompt | chat | StrOutputParser()).stream(inputs))
    print(f"streamed:    {streamed!r}")
    answers = await (prompt | chat | StrOutputParser()).abatch([inputs, {**inputs, "q": "what colour is it ?"}])
    print("async batch:", answers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a LLaVA checkpoint directory (default: the shipped demo's)")
    parser.add_argument("--guard-dir", type=Path, help="its trained guard (default: the demo's, or untrained)")
    args = parser.parse_args()
    guard_dir = args.guard_dir or (None if args.model_dir else demo_guard_dir())
    asyncio.run(main(args.model_dir or demo_model_dir(), guard_dir))
