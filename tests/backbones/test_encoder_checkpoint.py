"""Loading a LLaVA checkpoint's vision tower, projector and token embeddings, and nothing else, from safetensors."""

import fnmatch
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file

from psaguard import CheckpointError, UnsupportedModelError
from psaguard.backbones import is_classifier_only
from psaguard.backbones.encoder_checkpoint import load_encoder_only
from psaguard.checkpoints.reader import SAFE_INDEX_NAME, SAFE_WEIGHTS_NAME, CheckpointReader

EMBEDDING = "language_model.model.embed_tokens.weight"  # as transformers 5 saves it


def needed(name: str) -> bool:
    return name.startswith(("vision_tower.", "multi_modal_projector.")) or name == EMBEDDING


def assert_matches_full_model(model, full) -> None:
    assert is_classifier_only(model) and type(model) is type(full)
    ours, theirs = model.state_dict(), full.state_dict()
    assert {k for k in ours if not k.startswith("model.language_model.")} == {
        k for k in theirs if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))
    }
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(model.get_input_embeddings().weight, full.get_input_embeddings().weight)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        a = model.model.get_image_features(pixel_values=pixels).pooler_output
        b = full.model.get_image_features(pixel_values=pixels).pooler_output
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))


def rewrite(source: Path, target: Path, rename=lambda name: name, drop=(), replace=None) -> Path:
    """A copy of a single-file checkpoint with tensors renamed, dropped or replaced."""
    target.mkdir()
    for file in source.iterdir():
        if file.name != SAFE_WEIGHTS_NAME:
            shutil.copy(file, target / file.name)
    tensors = {rename(k): v for k, v in load_file(source / SAFE_WEIGHTS_NAME).items() if k not in drop}
    tensors.update(replace or {})
    save_file(tensors, str(target / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def sharded_dir(tiny_model, tiny_processor, tmp_path_factory):
    path = tmp_path_factory.mktemp("sharded")
    tiny_model.save_pretrained(path, max_shard_size="40KB")
    tiny_processor.save_pretrained(path)
    return path


def test_the_loaded_parts_equal_the_full_models(tiny_dir, tiny_model):
    model = load_encoder_only(tiny_dir)
    assert_matches_full_model(model, tiny_model)
    assert not model.training


def test_only_vision_projector_and_embedding_tensors_are_read(tiny_dir, monkeypatch):
    import psaguard.checkpoints.reader as reader_module

    read: list[str] = []
    real_open = reader_module.safe_open

    class RecordingHandle:
        def __init__(self, handle):
            self.handle = handle

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, name):
            read.append(name)
            return self.handle.get_tensor(name)

    @contextmanager
    def recording_open(*args, **kwargs):
        with real_open(*args, **kwargs) as handle:
            yield RecordingHandle(handle)

    monkeypatch.setattr(reader_module, "safe_open", recording_open)
    load_encoder_only(tiny_dir)
    all_names = CheckpointReader(tiny_dir).weight_map
    assert sorted(read) == sorted(n for n in all_names if needed(n))
    assert len(read) < len(all_names)


def test_a_sharded_checkpoint_loads_without_the_shards_of_the_language_model(sharded_dir, tiny_model):
    weight_map = json.loads((sharded_dir / SAFE_INDEX_NAME).read_text())["weight_map"]
    wanted = {file for name, file in weight_map.items() if needed(name)}
    unused = set(weight_map.values()) - wanted
    assert len(unused) >= 2  # the language model's layers fill shards of their own
    for file in unused:
        (sharded_dir / file).unlink()
    assert_matches_full_model(load_encoder_only(sharded_dir), tiny_model)


def test_a_hub_checkpoint_fetches_only_config_index_and_the_needed_shards(
    sharded_dir, tiny_model, tmp_path, monkeypatch
):
    requested: list[list[str]] = []
    cache = tmp_path / "snapshot"
    cache.mkdir()

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        assert repo_id == "org/llava" and revision == "main"
        requested.append(list(allow_patterns))
        for file in sharded_dir.iterdir():
            if any(fnmatch.fnmatch(file.name, pattern) for pattern in allow_patterns):
                shutil.copy(file, cache / file.name)
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_encoder_only("org/llava", revision="main")
    assert_matches_full_model(model, tiny_model)
    weight_map = json.loads((sharded_dir / SAFE_INDEX_NAME).read_text())["weight_map"]
    assert requested[0] == ["config.json", SAFE_INDEX_NAME]
    assert set(requested[1]) == {file for name, file in weight_map.items() if needed(name)}
    assert len(requested) == 2


@pytest.mark.parametrize(
    ("layout", "rename"),
    [
        ("transformers 4.5x", lambda k: "model." + k.replace("language_model.model.", "language_model.")),
        ("legacy CLIP nesting", lambda k: k.replace("vision_tower.", "vision_tower.vision_model.")),
    ],
)
def test_other_key_layouts_load_the_same_weights(tiny_dir, tiny_model, tmp_path, layout, rename):
    path = rewrite(tiny_dir, tmp_path / "renamed", rename=rename)
    assert_matches_full_model(load_encoder_only(path), tiny_model)


def test_dtype_and_device_are_applied(tiny_dir):
    model = load_encoder_only(tiny_dir, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": ["vision_tower.post_layernorm.weight"]}, r"lacks 1 of the tensors .*post_layernorm\.weight"),
        ({"drop": ["multi_modal_projector.linear_1.bias"]}, r"lacks 1 of the tensors .*linear_1\.bias"),
        ({"drop": [EMBEDDING]}, r"lacks 1 of the tensors .*embed_tokens\.weight"),
        ({"replace": {EMBEDDING: torch.zeros(7, 64)}}, r"do not match .*embed_tokens\.weight: \(7, 64\)"),
        ({"replace": {"vision_tower.pre_layrnorm.weight": torch.zeros(3)}}, "do not match"),
        ({"replace": {"vision_tower.vision_model.pre_layrnorm.weight": torch.zeros(64)}}, "twice"),
        ({"replace": {"model.language_model.embed_tokens.weight": torch.zeros(128, 64)}}, "twice .*embed_tokens"),
    ],
)
def test_broken_checkpoints_raise_checkpoint_error(tiny_dir, tmp_path, change, message):
    path = rewrite(tiny_dir, tmp_path / "broken", **change)
    with pytest.raises(CheckpointError, match=message):
        load_encoder_only(path)


def test_configs_of_other_families_raise_unsupported_model(tiny_dir, tmp_path):
    path = rewrite(tiny_dir, tmp_path / "other")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "not-a-model"}))
    with pytest.raises(UnsupportedModelError):
        load_encoder_only(path)
    (path / "config.json").write_text(json.dumps(config["text_config"]))  # a llama config
    with pytest.raises(UnsupportedModelError, match="classifier-only mode supports"):
        load_encoder_only(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_encoder_only(path)


def test_a_checkpoint_without_safetensors_is_refused(tiny_dir, tmp_path):
    path = rewrite(tiny_dir, tmp_path / "pickle")
    (path / SAFE_WEIGHTS_NAME).rename(path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_encoder_only(path)


def test_tied_embeddings_are_read_from_the_output_head_when_only_it_was_saved(tiny_dir, tiny_model, tmp_path):
    path = rewrite(tiny_dir, tmp_path / "tied", drop=[EMBEDDING])
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    model = load_encoder_only(path)
    assert torch.equal(model.get_input_embeddings().weight, tiny_model.lm_head.weight)
