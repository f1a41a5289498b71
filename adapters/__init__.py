"""LangChain adapters for psaguard (``pip install 'psaguard[langchain]'``).

Names load on first use, so importing this package needs nothing beyond psaguard itself; using one needs
``langchain-core`` (and the ``langchain`` v1 package for :class:`PsaGuardMiddleware`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "GuardRequest": "psaguard.request",
    "GuardRunnable": "psaguard.adapters.runnable",
    "GuardedChatModel": "psaguard.adapters.chat_model",
    "GuardGate": "psaguard.adapters.gate",
    "OnBlock": "psaguard.adapters.gate",
    "PsaGuardMiddleware": "psaguard.adapters.middleware",
    "VERDICT_EVENT": "psaguard.adapters.verdicts",
    "guarded": "psaguard.adapters.gate",
    "request_from_input": "psaguard.adapters.messages",
    "request_from_messages": "psaguard.adapters.messages",
}

__all__ = sorted(_EXPORTS)

# Old names kept for one release (they warn when used; see CHANGELOG.md).
_DEPRECATED = {"GuardedRunnable": "psaguard.adapters.gate"}

if TYPE_CHECKING:
    from psaguard.adapters.chat_model import GuardedChatModel
    from psaguard.adapters.gate import GuardGate, OnBlock, guarded
    from psaguard.adapters.messages import request_from_input, request_from_messages
    from psaguard.adapters.middleware import PsaGuardMiddleware
    from psaguard.adapters.runnable import GuardRunnable
    from psaguard.adapters.verdicts import VERDICT_EVENT
    from psaguard.request import GuardRequest


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name) or _DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module 'psaguard.adapters' has no attribute {name!r}")
    try:
        return getattr(import_module(module), name)
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in ("langchain_core", "langchain", "langgraph"):
            raise
        hint = "pip install 'psaguard[langchain]'" if top == "langchain_core" else "pip install 'langchain>=1.0'"
        raise ImportError(f"psaguard.adapters.{name} needs the {top.replace('_', '-')} package: {hint}") from err


def __dir__() -> list[str]:
    return __all__
