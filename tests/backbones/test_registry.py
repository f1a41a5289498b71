"""The family-adapter API: registration, typed errors for unknown models and wrong processors, PEFT wrappers."""

from __future__ import annotations

import copy

import pytest
import torch

from psaguard import ProcessorError, SafetyGuard, UnsupportedModelError
from psaguard.backbones import (
    ADAPTERS_DOC,
    Backbone,
    LlavaBackbone,
    pool_to_square_grid,
    register_backbone,
    registered_backbones,
    resolve_backbone,
    unwrap_model,
)
from psaguard.backbones.registry import BackboneRegistry
from psaguard.errors import ConfigError


class _Other(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"model_type": "not_a_vlm"})()


def test_unknown_models_get_an_error_that_says_how_to_add_an_adapter():
    with pytest.raises(UnsupportedModelError, match="not_a_vlm") as info:
        resolve_backbone(_Other())
    assert "register_backbone" in str(info.value) and ADAPTERS_DOC in str(info.value)
    with pytest.raises(UnsupportedModelError, match=r"torch\.nn\.Module"):
        resolve_backbone(None)


def test_a_registered_adapter_is_found_and_later_registrations_take_precedence(tiny_model):
    registry = BackboneRegistry()
    registry.register(LlavaBackbone)

    class Refined(LlavaBackbone):
        family = "llava_refined"

    assert type(registry.resolve(tiny_model)) is LlavaBackbone
    registry.register(Refined)
    assert type(registry.resolve(tiny_model)) is Refined
    assert registry.adapters() == (Refined, LlavaBackbone)


def test_registration_checks_what_it_is_given():
    with pytest.raises(ConfigError, match="Backbone subclass"):
        register_backbone(object)  # type: ignore[arg-type]

    class Nameless(LlavaBackbone):
        model_types = ()

    with pytest.raises(ConfigError, match="model_types"):
        BackboneRegistry().register(Nameless)


def test_the_built_in_adapters_are_registered_on_import():
    assert LlavaBackbone in registered_backbones()
    assert all(issubclass(adapter, Backbone) for adapter in registered_backbones())


def test_attach_without_a_processor_is_a_typed_error(tiny_model):
    with pytest.raises(ProcessorError, match="processor is required"):
        SafetyGuard.attach(tiny_model, None)


def test_a_processor_of_another_family_is_refused_at_attach(tiny_model, tiny_processor, next_model, next_processor):
    with pytest.raises(ProcessorError, match="another model"):
        SafetyGuard.attach(tiny_model, next_processor)
    with pytest.raises(ProcessorError, match="another model"):
        SafetyGuard.attach(next_model, tiny_processor)


def test_a_tokenizer_alone_is_not_a_processor(tiny_model, tiny_processor):
    with pytest.raises(ProcessorError, match=r"image processor|cannot prepare"):
        SafetyGuard.attach(tiny_model, tiny_processor.tokenizer)


def test_a_peft_wrapped_model_attaches_and_judges_as_the_bare_model(tiny_model, tiny_processor, images):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(
        copy.deepcopy(tiny_model), peft.LoraConfig(r=4, target_modules=r".*language_model.*\.q_proj")
    )
    assert unwrap_model(wrapped) is not wrapped
    torch.manual_seed(0)
    bare = SafetyGuard.attach(tiny_model, tiny_processor)
    torch.manual_seed(0)
    guard = SafetyGuard.attach(wrapped, tiny_processor)
    assert guard.config.fingerprint == bare.config.fingerprint
    ours = guard.classify_batch(images, ["what is this ?"] * len(images))
    theirs = bare.classify_batch(images, ["what is this ?"] * len(images))
    for a, b in zip(ours, theirs):
        assert a.level_probs == pytest.approx(b.level_probs, abs=1e-5)


def test_any_patch_grid_is_pooled_onto_the_projectors_square_grid():
    grid = torch.arange(6 * 4 * 2, dtype=torch.float32).reshape(6, 4, 2)
    pooled = pool_to_square_grid(grid, 2)
    assert pooled.shape == (4, 2)
    torch.testing.assert_close(pooled[0], grid[:3, :2].reshape(-1, 2).mean(0))
    assert pool_to_square_grid(torch.ones(1, 3, 5), 4).shape == (16, 5)  # smaller grids are repeated onto it
