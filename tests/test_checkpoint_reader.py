"""Reading chosen tensors of a safetensors checkpoint: exact reads, hostile indexes and broken files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from psaguard import CheckpointError
from psaguard.checkpoints.reader import SAFE_INDEX_NAME, CheckpointReader, local_dir


@pytest.fixture
def sharded(tmp_path):
    """Two shards: ``a`` and ``b`` in the first, ``c`` in the second."""
    save_file({"a": torch.arange(3.0), "b": torch.ones(2, 2)}, str(tmp_path / "one.safetensors"))
    save_file({"c": torch.zeros(4)}, str(tmp_path / "two.safetensors"))
    index = {"metadata": {}, "weight_map": {"a": "one.safetensors", "b": "one.safetensors", "c": "two.safetensors"}}
    (tmp_path / SAFE_INDEX_NAME).write_text(json.dumps(index))
    return tmp_path


def test_read_returns_exactly_the_named_tensors_and_opens_only_their_shards(sharded):
    (sharded / "two.safetensors").unlink()  # never needed for a and b
    reader = CheckpointReader.open(sharded)
    tensors = reader.read(["a"])
    assert list(tensors) == ["a"] and torch.equal(tensors["a"], torch.arange(3.0))
    assert reader.files_for(["a", "b"]) == ["one.safetensors"]


def test_missing_tensors_and_missing_shards_raise_checkpoint_error(sharded):
    reader = CheckpointReader.open(sharded)
    with pytest.raises(CheckpointError, match="lacks tensors"):
        reader.read(["a", "nope"])
    (sharded / "two.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights file"):
        reader.read(["c"])


def test_a_truncated_shard_raises_checkpoint_error(sharded):
    data = (sharded / "two.safetensors").read_bytes()
    (sharded / "two.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        CheckpointReader.open(sharded).read(["c"])


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ('{"weight_map": {"a": "../outside.safetensors"}}', "outside the checkpoint"),
        ('{"weight_map": {"a": "/etc/passwd"}}', "outside the checkpoint"),
        ('{"weight_map": {"a": 3}}', "no weight_map"),
        ('["not", "an", "index"]', "no weight_map"),
        ("{not json", "cannot read"),
    ],
)
def test_a_hostile_or_broken_index_raises_checkpoint_error(sharded, index, message):
    (sharded / SAFE_INDEX_NAME).write_text(index)
    with pytest.raises(CheckpointError, match=message):
        CheckpointReader.open(sharded).read(["a"])


def test_a_path_that_is_neither_a_directory_nor_a_repo_id_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        CheckpointReader.open(tmp_path / "missing" / "model")


def test_local_dir_tells_a_directory_from_a_repo_id_and_refuses_the_rest(tmp_path):
    """The one hub-or-local rule of model and guard checkpoints."""
    assert local_dir(tmp_path, "a saved guard") == tmp_path
    assert local_dir("owner/name", "a saved guard") is None and local_dir("name", "a saved guard") is None
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", "./owner/name", "a/b/c", "~/guard"):
        with pytest.raises(CheckpointError, match="not a directory holding a saved guard"):
            local_dir(path, "a saved guard")
