"""Synthetic safety world: generated concept images, prompts and responses to train and test a guard.

Importing the package is cheap; each name loads its module on first use (torch and matplotlib only
for the base model and the report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psaguard._lazy import lazy_exports

_EXPORTS = {
    "BaseVlmConfig": "psaguard.training.world.base_model",
    "Scene": "psaguard.training.world.concepts",
    "WorldMetrics": "psaguard.training.world.report",
    "WorldRow": "psaguard.training.world.build",
    "WorldSpec": "psaguard.training.world.build",
    "build_world": "psaguard.training.world.build",
    "read_rows": "psaguard.training.world.build",
    "render_scene": "psaguard.training.world.concepts",
    "teach_base_vlm": "psaguard.training.world.base_model",
    "world_vocabulary": "psaguard.training.world.vocabulary",
    "write_report": "psaguard.training.world.report",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from psaguard.training.world.base_model import BaseVlmConfig, teach_base_vlm
    from psaguard.training.world.build import WorldRow, WorldSpec, build_world, read_rows
    from psaguard.training.world.concepts import Scene, render_scene
    from psaguard.training.world.report import WorldMetrics, write_report
    from psaguard.training.world.vocabulary import world_vocabulary


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
