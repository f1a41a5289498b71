"""psaguard serve: an OpenAI-compatible moderation endpoint and guarded chat completions over HTTP.

Install with ``pip install 'psaguard[serve]'``. Names load on first use, so importing this package needs
nothing beyond psaguard itself; see docs/serving.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psaguard._lazy import lazy_exports

_EXPORTS = {
    "ApiKeys": "psaguard.serving.auth",
    "BackgroundServer": "psaguard.serving.server",
    "BatchingConfig": "psaguard.serving.config",
    "DynamicBatcher": "psaguard.serving.batching",
    "LimitsConfig": "psaguard.serving.config",
    "OPENAI_CATEGORIES": "psaguard.serving.moderation",
    "ServeConfig": "psaguard.serving.config",
    "ServeMetrics": "psaguard.serving.metrics",
    "create_app": "psaguard.serving.app",
    "load_api_keys": "psaguard.serving.auth",
    "load_guard": "psaguard.serving.server",
    "run_server": "psaguard.serving.server",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from psaguard.serving.app import create_app
    from psaguard.serving.auth import ApiKeys, load_api_keys
    from psaguard.serving.batching import DynamicBatcher
    from psaguard.serving.config import BatchingConfig, LimitsConfig, ServeConfig
    from psaguard.serving.metrics import ServeMetrics
    from psaguard.serving.moderation import OPENAI_CATEGORIES
    from psaguard.serving.server import BackgroundServer, load_guard, run_server

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
