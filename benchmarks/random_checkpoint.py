"""Write a model with random weights as a sharded safetensors checkpoint without holding it in memory.

The model is built on the meta device; its weights are materialised one block (a subtree of at most
``block_bytes``) at a time, initialised by the model's own ``_init_weights``, written in shards of about
``shard_bytes`` and dropped again, so a 7B checkpoint (~14 GB in bf16) is written with a few GB of memory.
Tensor names are the ones ``save_pretrained`` writes (transformers' reverse key conversion), and
``config.json`` and ``generation_config.json`` go beside them, so ``from_pretrained`` loads the directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.core_model_loading import revert_weight_conversion

__all__ = ["checkpoint_bytes", "write_random_checkpoint"]

INDEX_NAME = "model.safetensors.index.json"


def checkpoint_bytes(model: nn.Module) -> int:
    """Bytes the model's saved tensors take (works on the meta device)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def write_random_checkpoint(
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    directory: Path,
    dtype: torch.dtype,
    *,
    shard_bytes: int = 2 * 2**30,
    block_bytes: int = 2**30,
) -> Path:
    """Write ``model_class(config)`` with random ``dtype`` weights to ``directory``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    config.dtype = dtype  # so that dtype="auto" loads it as written
    with torch.device("meta"):
        model = model_class(config).to(dtype).eval()
    saved = _saved_names(model)
    written: list[list[str]] = []  # tensor names of each written shard
    shard: dict[str, torch.Tensor] = {}
    for block in _blocks(model, block_bytes):
        for name, tensor in _materialise(model, block).items():
            if shard and sum(t.nbytes for t in shard.values()) + tensor.nbytes > shard_bytes:
                written.append(_write_shard(directory, len(written) + 1, shard))
                shard = {}
            shard[saved[name]] = tensor
        block.to_empty(device="meta")  # the written weights leave memory (the shard keeps its own references)
    written.append(_write_shard(directory, len(written) + 1, shard))
    _finish(directory, model, written, checkpoint_bytes(model))
    return directory


def _saved_names(model: PreTrainedModel) -> dict[str, str]:
    """State-dict name -> the name ``save_pretrained`` gives it (renaming only, as for LLaVA)."""
    state = model.state_dict()
    reverted = revert_weight_conversion(model, dict(state))
    by_tensor = {id(tensor): name for name, tensor in reverted.items()}
    names = {name: by_tensor[id(tensor)] for name, tensor in state.items()}
    if len(set(names.values())) != len(names):
        raise ValueError("the saved names of this model are not a one-to-one renaming")
    return names


def _blocks(module: nn.Module, limit: int) -> Iterator[nn.Module]:
    """Subtrees of at most ``limit`` bytes covering every tensor once (a module's own tensors alone if needed)."""
    if checkpoint_bytes(module) <= limit or not list(module.children()):
        yield module
        return
    own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    if own:
        yield _Own(module)
    for child in module.children():
        yield from _blocks(child, limit)


class _Own(nn.Module):
    """A view of a module's own tensors without its children, for blocks too big to take whole."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "target", module)

    def to_empty(self, *, device: torch.device | str, recurse: bool = True) -> _Own:
        self.target.to_empty(device=device, recurse=False)
        return self


def _materialise(model: PreTrainedModel, block: nn.Module) -> dict[str, torch.Tensor]:
    """Random weights of ``block`` on the CPU (zeros first, so a tensor the init skips is still finite)."""
    block.to_empty(device="cpu")
    target = block.target if isinstance(block, _Own) else block
    modules = [target] if isinstance(block, _Own) else list(target.modules())
    with torch.no_grad():
        for tensor in _tensors(target, recurse=not isinstance(block, _Own)).values():
            tensor.zero_()
        for module in modules:
            model._init_weights(module)
    prefix = {module: name for name, module in model.named_modules()}[target]
    names = set(model.state_dict(keep_vars=True))
    tensors = _tensors(target, recurse=not isinstance(block, _Own))
    full = {f"{prefix}.{name}" if prefix else name: t.detach() for name, t in tensors.items()}
    return {name: t for name, t in full.items() if name in names}


def _tensors(module: nn.Module, *, recurse: bool) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters(recurse=recurse)) | dict(module.named_buffers(recurse=recurse))


def _shard_name(number: int, total: int | str) -> str:
    return f"model-{number:05d}-of-{total}.safetensors"


def _write_shard(directory: Path, number: int, shard: dict[str, torch.Tensor]) -> list[str]:
    # The number of shards is unknown while writing; _finish renames the files once it is.
    save_file(shard, directory / _shard_name(number, "TOTAL"), {"format": "pt"})
    return list(shard)


def _finish(directory: Path, model: PreTrainedModel, written: list[list[str]], size: int) -> None:
    total, weight_map = len(written), {}
    for number, names in enumerate(written, start=1):
        final = _shard_name(number, f"{total:05d}")
        (directory / _shard_name(number, "TOTAL")).rename(directory / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2))
    model.config.save_pretrained(directory)
    GenerationConfig.from_model_config(model.config).save_pretrained(directory)
