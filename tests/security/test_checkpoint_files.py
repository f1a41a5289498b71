"""Guard files: atomic saves; truncated, tampered or mismatched files are refused; never unpickled."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from psaguard import SafetyGuard
from psaguard.config import CONFIG_NAME
from psaguard.errors import CheckpointError, CheckpointMismatchError, ConfigError
from psaguard.guard import WEIGHTS_NAME
from psaguard.serialization import atomic_write, load_tensors, save_tensors


@pytest.fixture
def saved(guard, tmp_path: Path) -> Path:
    return guard.save_pretrained(tmp_path / "guard")


def _load(path: Path, guard: SafetyGuard) -> SafetyGuard:
    return SafetyGuard.from_pretrained(path, guard.model, guard.processor)


def test_round_trip_gives_the_same_verdicts(saved: Path, guard, images) -> None:
    assert _load(saved, guard).classify(images[0], "hi").level_probs == guard.classify(images[0], "hi").level_probs


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, 0.999])
def test_truncated_weights_are_refused(saved: Path, guard, keep: float) -> None:
    weights = saved / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError):
        _load(saved, guard)


@pytest.mark.parametrize("where", ["header_length", "header_json", "data_start", "data_end"])
def test_flipped_bytes_are_refused(saved: Path, guard, where: str) -> None:
    weights = saved / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little")
    offset = {"header_length": 1, "header_json": 8 + header // 2, "data_start": 8 + header, "data_end": len(data) - 1}
    data[offset[where]] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        _load(saved, guard)


def test_wrong_shapes_extra_and_missing_keys_are_named(saved: Path, guard) -> None:
    tensors = load_tensors(saved / WEIGHTS_NAME)
    tensors["head_tokens"] = torch.zeros(1, 3, 3)
    tensors["backdoor"] = torch.zeros(1)
    del tensors["llm_tokens"]
    save_tensors(saved / WEIGHTS_NAME, tensors)
    with pytest.raises(CheckpointError, match=r"missing \['llm_tokens'\].*unexpected \['backdoor'\].*head_tokens"):
        _load(saved, guard)


def test_non_finite_weights_are_refused(saved: Path, guard) -> None:
    tensors = load_tensors(saved / WEIGHTS_NAME)
    tensors["head_tokens"][0, 0, 0] = float("nan")
    save_tensors(saved / WEIGHTS_NAME, tensors)  # a valid file with a fresh checksum: only the values are bad
    with pytest.raises(CheckpointError, match="NaN"):
        _load(saved, guard)


def test_labels_that_do_not_match_the_head_are_refused(saved: Path, guard) -> None:
    config = json.loads((saved / CONFIG_NAME).read_text())
    levels = config["taxonomy"]["levels"]
    config["taxonomy"]["levels"] = [*levels, {**levels[-1], "id": len(levels), "code": "extra"}]
    config["policy"]["level_actions"]["4"] = "block"
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        _load(saved, guard)


def test_mismatched_base_model_and_bad_config_are_typed(saved: Path, guard) -> None:
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["fingerprint"]["vocab_size"] += 1
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="vocab_size"):
        _load(saved, guard)
    config["fingerprint"]["vocab_size"] -= 1
    config["policy"]["types"] = {"nsfw": {}}
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="nsfw"):
        _load(saved, guard)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "psaguard_model.pt", "psaguard_model.pkl"])
def test_pickled_weights_are_never_loaded(saved: Path, guard, name: str, monkeypatch) -> None:
    monkeypatch.chdir(saved)
    (saved / WEIGHTS_NAME).unlink()
    (saved / name).write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError, match="missing weights file"):
        _load(saved, guard)
    assert not (saved / "PWNED").exists()


def test_pickle_renamed_to_safetensors_is_refused(saved: Path, guard, monkeypatch) -> None:
    monkeypatch.chdir(saved)
    torch.save({"head_tokens": _Exploit()}, saved / WEIGHTS_NAME)
    with pytest.raises(CheckpointError):
        _load(saved, guard)
    assert not (saved / "PWNED").exists()


def test_crash_during_save_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    save_tensors(target, {"a": torch.ones(3)})

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert torch.equal(load_tensors(target)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]  # no temp file left behind
