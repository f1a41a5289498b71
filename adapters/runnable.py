"""``GuardRunnable``: the guard as a LangChain Runnable from a request to its :class:`SafetyVerdict`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import ConfigDict, Field

from psaguard.adapters.messages import request_from_input
from psaguard.adapters.verdicts import VERDICT_EVENT, verdict_metadata
from psaguard.errors import InvalidInputError
from psaguard.guard import SafetyGuard
from psaguard.policy import TextOnlyAction
from psaguard.request import GuardRequest
from psaguard.verdict import SafetyVerdict

__all__ = ["GuardRunnable"]

logger = logging.getLogger(__name__)


class GuardRunnable(RunnableSerializable[Any, SafetyVerdict]):
    """Judges a request with a :class:`~psaguard.guard.SafetyGuard`; the output is the verdict.

    The input is a dict ``{"image": ..., "prompt": ...}``, a string, a ``PromptValue`` or chat messages with
    image content blocks (see :mod:`psaguard.adapters.messages`). A request with several images gets the
    most severe of their verdicts; more than ``guard.config.max_images_per_request`` images raise
    :class:`~psaguard.errors.InvalidInputError` before anything is judged. ``batch`` / ``abatch`` judge all
    images of all inputs in one forward pass. Every verdict is also sent as the custom callback event
    ``"psaguard_verdict"``, so tracing shows which policy rule fired.

    Example:
        >>> verdict = GuardRunnable(guard).invoke({"image": "cat.png", "prompt": "Describe it."})
        >>> verdict.action, verdict.rule
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    guard: SafetyGuard = Field(description="The guard that judges requests.")
    on_text_only: TextOnlyAction = Field(
        "allow", description="Action for requests without an image, which the image-based guard cannot judge."
    )
    allow_local_files: bool = Field(
        True, description="Read images given as local paths or file:// URLs; turn off for untrusted input."
    )

    def __init__(self, guard: SafetyGuard | None = None, /, **kwargs: Any) -> None:
        if guard is not None:
            kwargs["guard"] = guard
        super().__init__(**kwargs)

    @property
    def OutputType(self) -> type[SafetyVerdict]:
        return SafetyVerdict

    # ------------------------------------------------------------------ Runnable interface
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> SafetyVerdict:
        return self._call_with_config(self._judge_one, input, config, run_type="chain")

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> SafetyVerdict:
        return await self._acall_with_config(self._ajudge_one, input, config, run_type="chain")

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[SafetyVerdict]:
        return self._batch_with_config(
            self._judge_many, inputs, config, return_exceptions=return_exceptions, run_type="chain"
        )

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[SafetyVerdict]:
        return await self._abatch_with_config(
            self._ajudge_many, inputs, config, return_exceptions=return_exceptions, run_type="chain"
        )

    # ------------------------------------------------------------------ judging (sync)
    def judge(self, requests: Sequence[GuardRequest]) -> list[SafetyVerdict]:
        """Verdicts of parsed requests, all their images in one batch; no callbacks."""
        return self._logged(self.guard.classify_requests(requests, on_text_only=self.on_text_only))

    def _judge_one(self, input: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> SafetyVerdict:
        verdict = self.judge([self.parse(input)])[0]
        dispatch_custom_event(VERDICT_EVENT, verdict_metadata(verdict), config=_child(config, run_manager))
        return verdict

    def _judge_many(
        self, inputs: list[Any], run_manager: list[CallbackManagerForChainRun], config: list[RunnableConfig]
    ) -> list[SafetyVerdict | Exception]:
        results = self._parse_all(inputs)
        valid = [i for i, r in enumerate(results) if isinstance(r, GuardRequest)]
        try:
            verdicts = self.judge([results[i] for i in valid])
        except InvalidInputError:
            # One bad image fails the whole batched pass (fail closed); judge one by one to pin it down.
            verdicts = [_or_error(self.judge, results[i]) for i in valid]
        for i, verdict in zip(valid, verdicts):
            results[i] = verdict
            if isinstance(verdict, SafetyVerdict):
                dispatch_custom_event(VERDICT_EVENT, verdict_metadata(verdict), config=config[i])
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ judging (async)
    async def ajudge(self, requests: Sequence[GuardRequest]) -> list[SafetyVerdict]:
        """Async :meth:`judge` (the forward pass runs in a worker thread)."""
        return self._logged(await self.guard.aclassify_requests(requests, on_text_only=self.on_text_only))

    async def _ajudge_one(
        self,
        input: Any,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> SafetyVerdict:
        verdict = (await self.ajudge([self.parse(input)]))[0]
        await adispatch_custom_event(VERDICT_EVENT, verdict_metadata(verdict), config=_child(config, run_manager))
        return verdict

    async def _ajudge_many(
        self, inputs: list[Any], run_manager: list[AsyncCallbackManagerForChainRun], config: list[RunnableConfig]
    ) -> list[SafetyVerdict | Exception]:
        results = self._parse_all(inputs)
        valid = [i for i, r in enumerate(results) if isinstance(r, GuardRequest)]
        try:
            verdicts = await self.ajudge([results[i] for i in valid])
        except InvalidInputError:
            verdicts = [await _aor_error(self.ajudge, results[i]) for i in valid]
        for i, verdict in zip(valid, verdicts):
            results[i] = verdict
            if isinstance(verdict, SafetyVerdict):
                await adispatch_custom_event(VERDICT_EVENT, verdict_metadata(verdict), config=config[i])
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ helpers
    def parse(self, value: Any) -> GuardRequest:
        """The :class:`GuardRequest` of an input (a parsed request is returned as is)."""
        if isinstance(value, GuardRequest):
            return value
        return request_from_input(value, allow_local_files=self.allow_local_files)

    def _parse_all(self, inputs: list[Any]) -> list[GuardRequest | Exception]:
        results: list[GuardRequest | Exception] = []
        for value in inputs:
            try:
                results.append(self.parse(value))
            except InvalidInputError as err:
                results.append(err)
        return results

    @staticmethod
    def _logged(verdicts: list[SafetyVerdict]) -> list[SafetyVerdict]:
        for verdict in verdicts:
            logger.debug("psaguard verdict: action=%s rule=%s", verdict.action, verdict.rule)
        return verdicts


def _child(
    config: RunnableConfig, run_manager: CallbackManagerForChainRun | AsyncCallbackManagerForChainRun
) -> RunnableConfig:
    """The config of this run's children, which custom events need to name their parent run."""
    return patch_config(config, callbacks=run_manager.get_child())


def _or_error(judge: Any, request: GuardRequest) -> SafetyVerdict | Exception:
    try:
        return judge([request])[0]
    except InvalidInputError as err:
        return err


async def _aor_error(ajudge: Any, request: GuardRequest) -> SafetyVerdict | Exception:
    try:
        return (await ajudge([request]))[0]
    except InvalidInputError as err:
        return err
