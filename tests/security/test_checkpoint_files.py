"""Guard files: atomic saves; truncated, tampered or mismatched files are refused; never unpickled."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from fifo_helpers import error_without_blocking
from safetensors.torch import save_file

from psaguard import GuardPolicy, SafetyGuard
from psaguard.checkpoints.serialization import atomic_write, load_tensors, read_metadata, save_tensors
from psaguard.config import CONFIG_NAME
from psaguard.errors import CheckpointError, CheckpointMismatchError, ConfigError
from psaguard.guard import WEIGHTS_NAME
from psaguard.testing.llava import build_tiny_llava


@pytest.fixture
def saved(guard, tmp_path: Path) -> Path:
    return guard.save_pretrained(tmp_path / "guard")


def _load(path: Path, guard: SafetyGuard, **kwargs) -> SafetyGuard:
    return SafetyGuard.from_pretrained(path, guard.model, guard.processor, **kwargs)


def _resave(saved: Path, tensors: dict) -> None:
    """Save changed tensors with a fresh checksum and the recorded config digest: only the tensors are bad."""
    save_tensors(saved / WEIGHTS_NAME, tensors, metadata=read_metadata(saved / WEIGHTS_NAME))


def _edit_config(saved: Path, edit) -> None:
    config = json.loads((saved / CONFIG_NAME).read_text())
    edit(config)
    (saved / CONFIG_NAME).write_text(json.dumps(config))


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
    _resave(saved, tensors)
    with pytest.raises(CheckpointError, match=r"missing \['llm_tokens'\].*unexpected \['backdoor'\].*head_tokens"):
        _load(saved, guard)


def test_non_finite_weights_are_refused(saved: Path, guard) -> None:
    tensors = load_tensors(saved / WEIGHTS_NAME)
    tensors["head_tokens"][0, 0, 0] = float("nan")
    _resave(saved, tensors)  # a valid file with a fresh checksum: only the values are bad
    with pytest.raises(CheckpointError, match="NaN"):
        _load(saved, guard)


def test_labels_that_do_not_match_the_head_are_refused(saved: Path, guard) -> None:
    config = json.loads((saved / CONFIG_NAME).read_text())
    levels = config["taxonomy"]["levels"]
    config["taxonomy"]["levels"] = [*levels, {**levels[-1], "id": len(levels), "code": "extra"}]
    config["policy"]["level_actions"]["4"] = "block"
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        _load(saved, guard, accept_edited_config=True)


def test_mismatched_base_model_and_bad_config_are_typed(saved: Path, guard) -> None:
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["fingerprint"]["vocab_size"] += 1
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="vocab_size"):
        _load(saved, guard, accept_edited_config=True)
    config["fingerprint"]["vocab_size"] -= 1
    config["policy"]["types"] = {"nsfw": {}}
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="nsfw"):
        _load(saved, guard, accept_edited_config=True)


def test_weights_resaved_without_their_checksum_are_refused_unless_allowed(saved: Path, guard, images) -> None:
    # The red-team's attack: neuter the type head and re-save with plain safetensors, which drops the metadata.
    tensors = load_tensors(saved / WEIGHTS_NAME)
    tensors["head.type_head.weight"].zero_()
    tensors["head.type_head.bias"].zero_()
    tensors["head.type_head.bias"][guard.config.taxonomy.safe_type_id] = 50.0
    save_file(tensors, str(saved / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="allow_unverified"):
        _load(saved, guard)
    neutered = _load(saved, guard, allow_unverified=True)  # the explicit opt-in still works
    assert neutered.classify(images[0], "hi").action == "allow"


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["policy"]["default_rule"].update(enabled=False),
        lambda c: c["policy"]["level_actions"].update({"1": "allow", "2": "allow", "3": "allow"}),
        lambda c: c["policy"]["default_rule"].update(threshold=1.0),
        lambda c: c["head"].update(level_temperature=1000.0),
    ],
)
def test_a_config_edited_after_saving_is_reported(saved: Path, guard, edit) -> None:
    _edit_config(saved, edit)
    with pytest.raises(CheckpointError, match="changed after the guard was saved"):
        _load(saved, guard)


def test_an_edited_policy_is_accepted_only_explicitly_and_resaving_records_it(saved: Path, guard, tmp_path) -> None:
    _edit_config(saved, lambda c: c["policy"]["default_rule"].update(threshold=0.9))
    edited = _load(saved, guard, accept_edited_config=True)
    assert edited.policy.default_rule.threshold == 0.9
    resaved = edited.save_pretrained(tmp_path / "resaved")
    assert _load(resaved, guard).policy.default_rule.threshold == 0.9  # no flag needed any more
    # Without editing any file: pass the policy, then save.
    policy = GuardPolicy(default_rule={"threshold": 0.7})
    assert _load(resaved, guard, policy=policy).save_pretrained(tmp_path / "third") is not None
    assert _load(tmp_path / "third", guard).policy.default_rule.threshold == 0.7


def test_a_config_without_a_recorded_digest_is_refused_unless_allowed(saved: Path, guard) -> None:
    tensors = load_tensors(saved / WEIGHTS_NAME)
    save_tensors(saved / WEIGHTS_NAME, tensors, metadata={"format": "pt"})  # checksum, but no config digest
    with pytest.raises(CheckpointError, match="records no digest"):
        _load(saved, guard)
    assert _load(saved, guard, allow_unverified=True) is not None


def test_duplicate_json_keys_are_refused(saved: Path, guard) -> None:
    text = (saved / CONFIG_NAME).read_text()
    # The red-team's '"enabled": true, "enabled": false': the last value would silently win.
    (saved / CONFIG_NAME).write_text(text.replace('"enabled": true', '"enabled": true, "enabled": false', 1))
    with pytest.raises(CheckpointError, match="duplicate key 'enabled'"):
        _load(saved, guard, accept_edited_config=True)


def test_a_fifo_as_config_is_refused_without_blocking(saved: Path, guard) -> None:
    (saved / CONFIG_NAME).unlink()
    os.mkfifo(saved / CONFIG_NAME)
    error = error_without_blocking(lambda: _load(saved, guard), saved / CONFIG_NAME, CheckpointError)
    assert "not a regular file" in str(error)


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


@pytest.fixture
def saved_with_adapter(guard, tmp_path: Path) -> Path:
    peft = pytest.importorskip("peft")
    fresh = build_tiny_llava(processor=guard.processor)  # PEFT injects into the model it wraps
    lora = peft.get_peft_model(fresh, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    saved = guard.save_pretrained(tmp_path / "guard")
    lora.save_pretrained(saved / "adapter")
    return saved


def test_a_safetensors_adapter_loads(saved_with_adapter: Path, guard) -> None:
    from psaguard.testing.llava import build_tiny_llava

    loaded = SafetyGuard.from_pretrained(
        saved_with_adapter, build_tiny_llava(processor=guard.processor), guard.processor
    )
    assert type(loaded.model).__name__ == "PeftModel"


def test_a_planted_pickled_adapter_is_never_unpickled(saved_with_adapter: Path, guard, monkeypatch) -> None:
    monkeypatch.chdir(saved_with_adapter)
    (saved_with_adapter / "adapter" / "adapter_model.safetensors").unlink()
    torch.save({"w": _Exploit()}, saved_with_adapter / "adapter" / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles"):
        _load(saved_with_adapter, guard)
    assert not (saved_with_adapter / "PWNED").exists()


@pytest.mark.parametrize("edit", [{"r": "x"}, {"lora_dropout": "high"}, {"target_modules": 3}, {"peft_type": None}])
def test_badly_typed_adapter_configs_are_checkpoint_errors(saved_with_adapter: Path, guard, edit: dict) -> None:
    path = saved_with_adapter / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(CheckpointError, match="adapter config"):
        _load(saved_with_adapter, guard)
