"""Neural modules of a guard: safety projector, safety head, and their container."""

from psaguard.modules.abstractor import CAbstractor, LayerNorm2d, RegStage, SqueezeExcite
from psaguard.modules.head import HeadLogits, SafetyHead
from psaguard.modules.safety import SafetyModules

__all__ = ["CAbstractor", "HeadLogits", "LayerNorm2d", "RegStage", "SafetyHead", "SafetyModules", "SqueezeExcite"]
