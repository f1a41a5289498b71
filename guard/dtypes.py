"""The compute dtype: what the device runs fast, chosen from the device, the CPU's flags and the checkpoint's dtype.

Checkpoints ship in bfloat16 or float16, but a CPU computes those fast only with a native path: AVX-512-BF16 or
AMX-BF16 for bfloat16, AVX-512-FP16 or AMX-FP16 for float16. Without one, PyTorch converts element by element
and a bfloat16 matmul runs several times slower than float32 (see docs/classifier_only.md), so on such a CPU the
default is float32, at twice the memory of 16 bits. On CUDA and other accelerators the checkpoint's dtype stays.

:func:`choose_dtype` is the rule, a pure function of (device, CPU flags, checkpoint dtype);
:func:`resolve_dtype` applies an explicit request (``dtype=`` in the API, ``--dtype`` on the command line)
or, for ``None``/``"auto"``, the rule with this machine's flags (:func:`cpu_flags`).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from psaguard.errors import ConfigError

__all__ = [
    "DTYPE_CHOICES",
    "DTYPE_NAMES",
    "INSTRUCTION_SETS",
    "NATIVE_CPU_FLAGS",
    "DtypeChoice",
    "DtypeRequest",
    "add_dtype_option",
    "choose_dtype",
    "config_dtype",
    "cpu_flags",
    "cpu_model",
    "describe_cpu",
    "dtype_name",
    "instruction_sets",
    "parse_dtype",
    "resolve_dtype",
]

DTYPE_NAMES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Names of the floating dtypes a guard computes in -> torch dtypes."""

DTYPE_CHOICES = ("auto", *DTYPE_NAMES)
"""What ``--dtype`` accepts on the command line."""

NATIVE_CPU_FLAGS: dict[torch.dtype, tuple[str, ...]] = {
    torch.bfloat16: ("amx_bf16", "avx512_bf16"),
    torch.float16: ("amx_fp16", "avx512_fp16"),
}
"""CPU flags (as Linux's /proc/cpuinfo spells them) that give a 16-bit dtype a native path; any one suffices."""

DtypeRequest = str | torch.dtype | None
"""A dtype asked for: a torch dtype, one of :data:`DTYPE_NAMES`, or None / ``"auto"`` for :func:`choose_dtype`."""

_CPUINFO = Path("/proc/cpuinfo")
# Where /proc/cpuinfo is missing (macOS, Windows): torch's own probes, by the flag each one stands for.
_TORCH_PROBES = {
    "avx512_bf16": "_is_avx512_bf16_supported",
    "amx_bf16": "_is_amx_tile_supported",  # AMX-TILE ships with AMX-BF16 on every CPU that has it
    "amx_fp16": "_is_amx_fp16_supported",
}


class DtypeChoice(BaseModel):
    """The dtype a guard computes in, and why (for the log, the repr and the server's ``/v1/models``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16"] = Field(description="The dtype chosen.")
    reason: str = Field(description="Why: requested, the checkpoint's on an accelerator, or the CPU's paths.")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPE_NAMES[self.dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a name of :data:`DTYPE_NAMES` (or a floating torch dtype, returned as is).

    Raises :class:`~psaguard.errors.ConfigError` for anything else.
    """
    if isinstance(value, torch.dtype) and value in DTYPE_NAMES.values():
        return value
    if isinstance(value, str) and value in DTYPE_NAMES:
        return DTYPE_NAMES[value]
    raise ConfigError(f"unsupported dtype {value!r}; use 'auto' or one of {sorted(DTYPE_NAMES)}")


def choose_dtype(
    device: str | torch.device, checkpoint_dtype: torch.dtype, flags: frozenset[str] | set[str]
) -> DtypeChoice:
    """The dtype to compute in on ``device`` for weights stored in ``checkpoint_dtype``, given the CPU's ``flags``.

    On an accelerator (CUDA, XPU, MPS, ...) the checkpoint's dtype; on the CPU the checkpoint's dtype when it
    is float32 or has a native path there (:data:`NATIVE_CPU_FLAGS`), else float32. A dtype other than
    those of :data:`DTYPE_NAMES` (quantized or float8 storage) computes in float32.
    """
    kind = torch.device(device).type
    stored = dtype_name(checkpoint_dtype)
    if stored not in DTYPE_NAMES:
        return DtypeChoice(dtype="float32", reason=f"{stored} storage computes in float32")
    if kind != "cpu":
        return DtypeChoice(dtype=stored, reason=f"the checkpoint's dtype on {kind}")
    if checkpoint_dtype == torch.float32:
        return DtypeChoice(dtype="float32", reason="the checkpoint's dtype")
    native = NATIVE_CPU_FLAGS.get(checkpoint_dtype, ())
    found = sorted(set(native) & set(flags))
    if found:
        return DtypeChoice(dtype=stored, reason=f"the checkpoint's dtype; this CPU has a native path ({found[0]})")
    missing = " or ".join(native) if native else "a native path"
    return DtypeChoice(dtype="float32", reason=f"the checkpoint is {stored} and this CPU has no {missing}")


def resolve_dtype(
    requested: DtypeRequest,
    device: str | torch.device,
    checkpoint_dtype: torch.dtype,
    flags: frozenset[str] | None = None,
) -> DtypeChoice:
    """``requested`` if it names a dtype, else (None or ``"auto"``) :func:`choose_dtype` with ``flags``
    (default: this machine's, :func:`cpu_flags`). Raises :class:`~psaguard.errors.ConfigError` for an
    unknown name."""
    if requested is not None and requested != "auto":
        return DtypeChoice(dtype=dtype_name(parse_dtype(requested)), reason="requested")
    return choose_dtype(device, checkpoint_dtype, cpu_flags() if flags is None else flags)


def cpu_flags(cpuinfo: Path = _CPUINFO) -> frozenset[str]:
    """This CPU's instruction-set flags, lower case: the ``flags`` line of ``cpuinfo`` (Linux, x86), else
    those of :data:`NATIVE_CPU_FLAGS` that torch's CPU probes find. Empty where neither says anything."""
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):  # x86 spells it "flags", arm64 "Features"
                return frozenset(value.lower().split())
    return frozenset(flag for flag, probe in _TORCH_PROBES.items() if getattr(torch.cpu, probe, lambda: False)())


INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
"""The CPU flags that decide how fast torch's float32 / bfloat16 / float16 kernels are (and so, across
machines, the last digits of their results)."""


def cpu_model(cpuinfo: Path = _CPUINFO) -> str:
    """This CPU's model name (``model name`` of ``cpuinfo``, else what :mod:`platform` says)."""
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or platform.machine()


def instruction_sets(flags: frozenset[str]) -> str:
    """Which of :data:`INSTRUCTION_SETS` ``flags`` has, and torch's CPU capability: ``avx2 avx512f (torch: AVX512)``."""
    found = " ".join(name for name in INSTRUCTION_SETS if name in flags) or "none of " + " ".join(INSTRUCTION_SETS)
    return f"{found} (torch: {torch.backends.cpu.get_cpu_capability()})"


def describe_cpu() -> str:
    """``model; instruction sets (torch: kernel level)`` of this CPU, for test headers and benchmark reports."""
    return f"{cpu_model()}; {instruction_sets(cpu_flags())}"


def config_dtype(config: Any) -> torch.dtype:
    """The dtype a transformers config says its checkpoint is stored in (float32 where it says none)."""
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, torch.dtype):
        return stored
    return DTYPE_NAMES.get(str(stored), torch.float32)


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    """Give a subcommand ``--dtype`` (default ``auto``: :func:`choose_dtype` on this machine)."""
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="compute dtype (default auto: the checkpoint's, or float32 on a CPU without a native path for it)",
    )
