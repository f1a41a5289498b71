"""LangChain's standard unit tests for chat models, run on GuardedChatModel over the tiny LLaVA, offline."""

from __future__ import annotations

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from psaguard.adapters import GuardedChatModel


class TestGuardedChatModelStandard(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _tiny_guard(self, guard) -> None:
        self._guard = guard

    @property
    def chat_model_class(self) -> type[GuardedChatModel]:
        return GuardedChatModel

    @property
    def chat_model_params(self) -> dict:
        # The shared tiny guard has no response head: answers unchecked (the request side is what is tested here).
        return {"guard": self._guard, "model": "tiny-llava", "check_answers": False}
