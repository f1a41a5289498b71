"""A tiny LLaVA checkpoint stored in bfloat16, with a guard beside it, and faked CPU flags (tests of the dtype rule)."""

from pathlib import Path

import pytest
import torch

from psaguard import SafetyGuard
from psaguard.testing.llava import build_tiny_llava, build_tiny_processor, save_pretrained_pair

# /proc/cpuinfo flags of CPU kinds, abridged to what matters.
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})  # e.g. AMD EPYC Rome, Intel Haswell
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # e.g. Intel Ice Lake
COOPER_LAKE = AVX512_NO_BF16 | {"avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_NO_BF16 | {"avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}
GRANITE_RAPIDS = SAPPHIRE_RAPIDS | {"amx_fp16"}


def fake_cpu(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str]) -> None:
    """Make the dtype rule see a CPU with ``flags`` instead of this machine's."""
    monkeypatch.setattr("psaguard.dtypes.cpu_flags", lambda: flags)


def bf16_model(processor):  # -> LlavaForConditionalGeneration
    return build_tiny_llava(processor=processor).to(torch.bfloat16)


def save_bf16_llava(path: Path) -> Path:
    """A tiny LLaVA saved in bfloat16 in ``path``, with a guard for it (float32 modules) in ``path/guard``."""
    processor = build_tiny_processor()
    directory = save_pretrained_pair(path, bf16_model(processor), processor)
    SafetyGuard.attach(bf16_model(processor), processor, dtype="float32").save_pretrained(directory / "guard")
    return directory
