"""The generic adapter's place in the registry, its refusals, and the pooling of non-grid tower states."""

from __future__ import annotations

import pytest
import torch

from psaguard.backbones import (
    BackboneRegistry,
    GenericBackbone,
    LlavaBackbone,
    pool_to_square_grid,
    resolve_backbone,
)
from psaguard.backbones.generic import pool_sequence_to_square, unsupported_reason
from psaguard.backbones.generic_layout import split_patches
from psaguard.errors import InvalidInputError, UnsupportedModelError


class _Config:
    model_type = "some_vlm"


class _NoImageToken(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()


class _CrossAttention(_NoImageToken):
    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"model_type": "mllama", "image_token_id": 5})()


def test_family_adapters_win_over_the_fallback_whatever_the_registration_order(tiny_model):
    for order in ((GenericBackbone, LlavaBackbone), (LlavaBackbone, GenericBackbone)):
        registry = BackboneRegistry()
        for adapter in order:
            registry.register(adapter)
        assert registry.adapters() == (LlavaBackbone, GenericBackbone)
        assert type(registry.resolve(tiny_model)) is LlavaBackbone
    assert type(resolve_backbone(tiny_model)) is LlavaBackbone
    generic = resolve_backbone(tiny_model, [GenericBackbone])
    assert type(generic) is GenericBackbone and generic.family == "llava"


@pytest.mark.parametrize(
    ("model", "why"),
    [(_NoImageToken(), "names no image token id"), (_CrossAttention(), "cross-attention")],
)
def test_models_outside_the_interface_are_refused_with_the_reason(model, why):
    assert why in unsupported_reason(model)
    with pytest.raises(UnsupportedModelError, match=why):
        resolve_backbone(model)


def test_a_square_sequence_is_pooled_as_its_grid_and_a_cls_token_is_dropped():
    grid = torch.randn(6, 6, 8)
    expected = pool_to_square_grid(grid, 3)
    torch.testing.assert_close(pool_sequence_to_square(grid.reshape(36, 8), 3), expected)
    with_cls = torch.cat([torch.randn(1, 8), grid.reshape(36, 8)])
    torch.testing.assert_close(pool_sequence_to_square(with_cls, 3), expected)


def test_a_sequence_that_is_no_grid_is_pooled_along_its_length():
    tokens = torch.arange(30 * 2, dtype=torch.float32).reshape(30, 2)  # 30: neither square nor square + 1
    pooled = pool_sequence_to_square(tokens, 2)
    assert pooled.shape == (4, 2)
    torch.testing.assert_close(pooled[0], tokens[:8].mean(0))  # adaptive bins: 30 / 4 rows, rounded out
    assert torch.all(pooled[1:, 0] > pooled[:-1, 0])  # order along the sequence is kept


def test_a_tiny_family_saves_and_loads_back_offline(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from psaguard.testing import save_tiny_family

    path = save_tiny_family("llava", tmp_path / "llava")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    backbone = resolve_backbone(model, [GenericBackbone])
    backbone.check_processor(processor)
    assert backbone.placeholder_token_id == model.config.image_token_id == processor.image_token_id


def test_tower_states_given_per_image_are_split_per_image_or_laid_out_again():
    # Towers that return a list of states: one tensor per image is taken as it is (flattened to a sequence);
    # a list that does not match the images is joined and laid out like one tensor of all the states.
    per_image = [torch.randn(1, 4, 8), torch.randn(1, 9, 8)]
    pieces = split_patches(per_image, {}, [4, 9], vision=None, family="some_vlm")
    assert [tuple(p.shape) for p in pieces] == [(4, 8), (9, 8)]
    assert all(torch.equal(p, s.reshape(-1, 8)) for p, s in zip(pieces, per_image))
    with pytest.raises(InvalidInputError, match="'some_vlm' adapter must override image_patches"):
        split_patches([torch.randn(5, 8)], {}, [2, 2], vision=None, family="some_vlm")
