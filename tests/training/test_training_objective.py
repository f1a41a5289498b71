"""The training objective: its LM loss on a fixed tiny batch is pinned, and it reaches ``llm_tokens``.

Tolerances are chosen to hold on every CPU kernel (AVX2, AVX-512, AMX) and to be far tighter than what a
wrong input would change; the 4-bit case compares with a reference computed in the same run.

The pinned values were computed with the pre-unification training input code (the ``inputs_embeds``
scatter of ``training/inputs.py``, commit 90a9621), so the shared token placement is proven to train
on exactly the same input: same slots, same right padding, same -100 labels.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from psaguard import SafetyGuard, SafetyGuardConfig
from psaguard.training.collate import IGNORE_INDEX, Batch, Collator
from psaguard.training.config import QuantConfig
from psaguard.training.data import Example
from psaguard.training.objective import GuardObjective
from psaguard.training.runtime import load_model_from

# LM loss of `tiny_batch` and the norm of its gradient on llm_tokens (None: not injected, so no gradient).
PINNED = {
    "float32": (4.895423412322998, 0.19802901148796082),
    "float32_no_llm_tokens": (4.9021100997924805, None),
}


@pytest.fixture
def tiny_batch(tmp_path: Path, tiny_processor) -> Batch:
    """Two examples of different lengths (so one row is right-padded), two turns in the first."""
    Image.new("RGB", (32, 32), (200, 30, 40)).save(tmp_path / "red.png")
    Image.new("RGB", (32, 32), (30, 40, 200)).save(tmp_path / "blue.png")
    examples = [
        Example((tmp_path / "red.png",), (("what is this ?", "a red square"), ("why ?", "it is red")), 3, 1, "d", 1),
        Example((tmp_path / "blue.png",), (("describe it", "blue"),), 0, 0, "d", 2),
    ]
    image_id = tiny_processor.tokenizer.convert_tokens_to_ids("<image>")
    preprocess = partial(tiny_processor.image_processor, return_tensors="pt")
    return Collator(tiny_processor, image_id, preprocess)(examples)


def objective_for(model: nn.Module, processor, inject: bool) -> GuardObjective:
    torch.manual_seed(0)
    config = SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 4, "inject_llm_tokens": inject}})
    guard = SafetyGuard.attach(model, processor, config)
    guard.modules.float().requires_grad_(True)
    return GuardObjective(guard, model, lm_weight=1.0, head_weight=0.5)


def assert_pinned(objective: GuardObjective, batch: Batch, key: str) -> None:
    """The LM loss and the llm_tokens gradient (the LM loss is their only signal) match the pinned values."""
    out = objective(batch)
    out.loss.backward()
    grad = objective.safety.llm_tokens.grad
    lm_loss, grad_norm = PINNED[key]
    # 1e-4 relative: float32 kernels differ between CPUs in the last digits, while a changed input moves this
    # loss by more (turning the four injected tokens off alone moves it by 1.4e-3 relative).
    torch.testing.assert_close(out.lm_loss, torch.tensor(lm_loss), atol=0, rtol=1e-4)
    if grad_norm is None:
        assert grad is None
    else:
        torch.testing.assert_close(grad.norm(), torch.tensor(grad_norm), atol=0, rtol=1e-3)
    assert all(p.grad is not None for p in objective.safety.projector.parameters())  # the head loss trains it


@pytest.mark.parametrize("inject", [True, False], ids=["llm_tokens", "no_llm_tokens"])
def test_lm_loss_of_a_fixed_batch_is_unchanged_and_reaches_the_llm_tokens(
    tiny_model, tiny_processor, tiny_batch: Batch, inject: bool
) -> None:
    model = copy.deepcopy(tiny_model).requires_grad_(False)  # the fixture is shared: leave its grads alone
    objective = objective_for(model, tiny_processor, inject)
    assert_pinned(objective, tiny_batch, "float32" if inject else "float32_no_llm_tokens")


def dequantized_copy(quantized: nn.Module, like: nn.Module) -> nn.Module:
    """A float32 copy of ``like`` whose linear layers hold the 4-bit model's weights, dequantized."""
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit

    model = copy.deepcopy(like).requires_grad_(False)
    layers = dict(model.named_modules())
    for name, module in quantized.named_modules():
        if isinstance(module, Linear4bit):
            weight = dequantize_4bit(module.weight.data, module.weight.quant_state)
            layers[name].weight.data.copy_(weight.float())
    return model


def test_lm_loss_through_a_4bit_language_model_equals_its_dequantized_weights(
    tiny_dir: Path, tiny_model, tiny_processor, tiny_batch: Batch
) -> None:
    # The reference is computed in the same run (the NF4 kernels' last digits differ between AVX2, AVX-512 and
    # AMX CPUs): the same objective through a float32 model holding the dequantized NF4 weights. Computing the
    # 4-bit layers in float32 leaves summation order as the only difference (0 on the AVX-512 machine this was
    # written on), so 1e-4 holds on every kernel, while a changed input moves the loss by more.
    quant = QuantConfig(load_in_4bit=True, compute_dtype="float32")
    model, processor = load_model_from(str(tiny_dir), None, quant, "float32", torch.device("cpu"))
    model.requires_grad_(False)
    reference = dequantized_copy(model, tiny_model)
    runs = []
    for lm in (model, reference):
        objective = objective_for(lm, processor, inject=True)
        out = objective(tiny_batch)
        out.loss.backward()
        runs.append((out.lm_loss.detach(), objective.safety.llm_tokens.grad.norm()))
    (loss, grad), (ref_loss, ref_grad) = runs
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=0)
    assert not torch.allclose(ref_loss, torch.tensor(PINNED["float32"][0]), rtol=1e-4, atol=0)  # NF4 did round


def test_the_model_sees_right_padded_rows_with_only_the_answers_labelled(
    tiny_model, tiny_processor, tiny_batch: Batch
) -> None:
    model = copy.deepcopy(tiny_model).requires_grad_(False)
    objective = objective_for(model, tiny_processor, inject=True)
    seen: dict[str, torch.Tensor] = {}
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    objective(tiny_batch)
    mask, labels, ids = seen["attention_mask"], seen["labels"], seen["input_ids"]
    slots = 4 + objective.classifier.backbone.num_patches  # the placeholder becomes llm_tokens + patches
    assert mask.shape == (2, tiny_batch.input_ids.shape[1] - 1 + slots)
    assert torch.equal(mask.sum(1), tiny_batch.attention_mask.sum(1) - 1 + slots)
    assert torch.equal(mask, mask.sort(dim=1, descending=True).values)  # right padding: real tokens first
    image_id = objective.classifier.backbone.image_token_id
    assert (ids == image_id).sum(1).tolist() == [slots, slots]
    assert labels[(ids == image_id) | (mask == 0)].eq(IGNORE_INDEX).all()
    assert labels[labels != IGNORE_INDEX].tolist() == tiny_batch.labels[tiny_batch.labels != IGNORE_INDEX].tolist()
