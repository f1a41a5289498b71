"""The compute dtype rule, from faked CPU flags (never this machine's), and where the guard applies it."""

import pytest
import torch
from dtype_helpers import (
    AVX2_ONLY,
    AVX512_NO_BF16,
    COOPER_LAKE,
    GRANITE_RAPIDS,
    SAPPHIRE_RAPIDS,
    bf16_model,
    fake_cpu,
    save_bf16_llava,
)

from psaguard import ConfigError, SafetyGuard
from psaguard.dtypes import DtypeChoice, choose_dtype, cpu_flags, parse_dtype, resolve_dtype


@pytest.mark.parametrize(
    ("flags", "stored", "expected"),
    [
        (AVX2_ONLY, torch.bfloat16, torch.float32),
        (AVX2_ONLY, torch.float16, torch.float32),
        (AVX2_ONLY, torch.float32, torch.float32),
        (AVX512_NO_BF16, torch.bfloat16, torch.float32),
        (AVX512_NO_BF16, torch.float16, torch.float32),
        (COOPER_LAKE, torch.bfloat16, torch.bfloat16),
        (COOPER_LAKE, torch.float16, torch.float32),
        (SAPPHIRE_RAPIDS, torch.bfloat16, torch.bfloat16),
        (SAPPHIRE_RAPIDS, torch.float16, torch.float16),  # AVX-512-FP16
        (GRANITE_RAPIDS, torch.float16, torch.float16),
        (frozenset(), torch.bfloat16, torch.float32),  # nothing known: the safe choice
        (SAPPHIRE_RAPIDS, torch.int8, torch.float32),  # quantized storage
    ],
)
def test_the_cpu_computes_16_bits_only_with_a_native_path(flags, stored, expected):
    choice = choose_dtype("cpu", stored, flags)
    assert choice.torch_dtype == expected
    if expected == torch.float32 and stored in (torch.bfloat16, torch.float16):
        assert "no " in choice.reason  # says which path is missing


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "xpu", "mps"])
def test_accelerators_keep_the_checkpoints_dtype_whatever_the_cpu(device, stored):
    assert choose_dtype(device, stored, AVX2_ONLY).torch_dtype == stored


def test_a_request_wins_and_auto_applies_the_rule():
    assert resolve_dtype("bfloat16", "cpu", torch.bfloat16, AVX2_ONLY) == DtypeChoice(
        dtype="bfloat16", reason="requested"
    )
    assert resolve_dtype(torch.float16, "cpu", torch.bfloat16, AVX2_ONLY).dtype == "float16"
    assert resolve_dtype("auto", "cpu", torch.bfloat16, AVX2_ONLY).dtype == "float32"
    assert resolve_dtype(None, "cpu", torch.bfloat16, SAPPHIRE_RAPIDS).dtype == "bfloat16"


@pytest.mark.parametrize("bad", ["fp32", "float64", "int8", torch.float64, torch.int8, ""])
def test_unknown_dtypes_are_a_config_error(bad):
    with pytest.raises(ConfigError, match="unsupported dtype"):
        parse_dtype(bad)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu AVX2 avx512f amx_bf16\n\nprocessor\t: 1\n"
        "flags\t\t: fpu avx2\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "amx_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}


def test_without_cpuinfo_torchs_probes_answer(tmp_path):
    flags = cpu_flags(tmp_path / "missing")
    assert flags <= {"avx512_bf16", "amx_bf16", "amx_fp16"}


@pytest.mark.parametrize(("flags", "expected"), [(AVX2_ONLY, torch.float32), (SAPPHIRE_RAPIDS, torch.bfloat16)])
def test_modules_on_a_bf16_model_follow_the_cpus_paths(monkeypatch, tiny_processor, images, flags, expected):
    fake_cpu(monkeypatch, flags)
    guard = SafetyGuard.attach(bf16_model(tiny_processor), tiny_processor)
    assert guard.modules.head_tokens.dtype == expected
    assert guard.compute_dtypes == {"model": "bfloat16", "modules": str(expected).removeprefix("torch.")}
    assert f"'modules': '{guard.compute_dtypes['modules']}'" in repr(guard)
    verdict = guard.classify(images[0], "what is this ?")  # bf16 features into the modules' dtype
    assert sum(verdict.type_probs.values()) == pytest.approx(1.0, abs=1e-4)


def test_dtype_argument_overrides_the_rule_and_the_config(monkeypatch, tiny_processor, tmp_path):
    fake_cpu(monkeypatch, AVX2_ONLY)
    model = bf16_model(tiny_processor)
    guard = SafetyGuard.attach(model, tiny_processor, dtype="bfloat16")
    assert guard.modules.head_tokens.dtype == torch.bfloat16
    saved = guard.save_pretrained(tmp_path / "guard")
    assert SafetyGuard.from_pretrained(saved, model, tiny_processor).compute_dtypes["modules"] == "float32"
    loaded = SafetyGuard.from_pretrained(saved, model, tiny_processor, dtype=torch.bfloat16)
    assert loaded.compute_dtypes["modules"] == "bfloat16"
    assert torch.equal(loaded.modules.head_tokens, guard.modules.head_tokens)
    with pytest.raises(ConfigError, match="unsupported dtype"):
        SafetyGuard.attach(model, tiny_processor, dtype="fp8")


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    return save_bf16_llava(tmp_path_factory.mktemp("bf16"))


@pytest.mark.parametrize(("flags", "expected"), [(AVX2_ONLY, "float32"), (SAPPHIRE_RAPIDS, "bfloat16")])
def test_classifier_only_computes_in_what_the_cpu_runs_fast(monkeypatch, bf16_dir, flags, expected, caplog):
    fake_cpu(monkeypatch, flags)
    with caplog.at_level("INFO", logger="psaguard"):
        guard = SafetyGuard.from_pretrained_classifier(bf16_dir / "guard", bf16_dir)
    assert guard.compute_dtypes == {"model": expected, "modules": expected}
    assert {p.dtype for p in guard.model.parameters()} == {parse_dtype(expected)}
    assert f"classifier-only parts compute in {expected}" in caplog.text


def test_classifier_only_dtype_request(monkeypatch, bf16_dir):
    fake_cpu(monkeypatch, AVX2_ONLY)
    guard = SafetyGuard.from_pretrained_classifier(bf16_dir / "guard", bf16_dir, dtype="bfloat16")
    assert guard.compute_dtypes == {"model": "bfloat16", "modules": "bfloat16"}
    with pytest.raises(ConfigError, match="unsupported dtype"):
        SafetyGuard.from_pretrained_classifier(bf16_dir / "guard", bf16_dir, dtype="double")
