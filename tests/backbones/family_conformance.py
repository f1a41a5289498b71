"""The bar a family adapter meets on its tiny model, written once for every family.

A family's test module builds its tiny model (a module-scoped ``family`` fixture returning a
:class:`TinyFamily`) and subclasses :class:`FamilyConformance`; nothing here names a family.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from generation_helpers import (
    QUESTION,
    capture_llm_inputs,
    count_calls,
    guard_for,
    plain_generate,
    spy_generate,
    user_turn,
)
from PIL import Image
from transformers import AutoModelForImageTextToText

from psaguard import CheckpointMismatchError, GenerationUnavailableError, ProcessorError, SafetyGuard, SafetyGuardConfig
from psaguard.backbones import Backbone, resolve_backbone
from psaguard.testing import build_tiny_family
from psaguard.testing.llava import save_pretrained_pair

PROMPTS = ["what is in this image ?", "describe the picture", "how many circle are there ?"]
# min_new_tokens keeps EOS away so the comparison covers every step, not just an early stop.
GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
SIZES = ((32, 32), (40, 56), (64, 48), (24, 64))  # (height, width): square, wide, tall, very wide


@dataclass(frozen=True)
class TinyFamily:
    """A family's tiny model saved to ``path`` and loaded back offline, with its adapters."""

    path: Path
    model: Any
    processor: Any
    processor_class: Any
    adapter: type[Backbone]
    encoder_only_adapter: type[Backbone]

    @classmethod
    def load(
        cls, path: Path, processor_class: Any, adapter: type[Backbone], encoder_only: type[Backbone]
    ) -> TinyFamily:
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        return cls(path, model, processor_class.from_pretrained(path), processor_class, adapter, encoder_only)

    @classmethod
    def build(
        cls, path: Path, name: str, adapter: type[Backbone], encoder_only: type[Backbone], **overrides: Any
    ) -> TinyFamily:
        """The generic tiny pair of ``name`` (:func:`~psaguard.testing.build_tiny_family`), saved and loaded back."""
        build = build_tiny_family(name, overrides=overrides)
        save_pretrained_pair(path, build.model, build.processor)
        return cls.load(path, type(build.processor), adapter, encoder_only)

    def backbone(self) -> Backbone:
        """The model's adapter, having read the processor (as a guard's is)."""
        backbone = resolve_backbone(self.model)
        backbone.check_processor(self.processor)
        return backbone


def projections(family: TinyFamily) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The adapter's ``project`` and the model's own ``get_image_features`` on the same preprocessed images,
    one ``(L_i, D)`` tensor per image each (for families whose ``get_image_features`` takes those inputs)."""
    from psaguard.backbones import resolve_backbone

    backbone = resolve_backbone(family.model)
    backbone.check_processor(family.processor)
    inputs = backbone.preprocess(family.processor, shaped_images())
    with torch.inference_mode():
        ours = backbone.project(backbone.encode_images(**inputs))
        theirs = family.model.model.get_image_features(**inputs).pooler_output
    return ours, [t.reshape(-1, t.shape[-1]) for t in theirs]


def shaped_images() -> list[Image.Image]:
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


class FamilyConformance:
    """Attach, classify, generate, wrap, save/load, refusals, classifier-only and both training stages."""

    @pytest.fixture
    def single_thread(self):
        """Train single-threaded: on a busy 2-core machine, intra-op threads make tiny-model steps much slower."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    @pytest.fixture
    def auto_loadable(self, family: TinyFamily) -> None:
        """Let ``AutoProcessor`` (which the trainer loads the processor with) load the tiny processor.

        Where the family's own processor needs torchvision, the tiny one is a PIL rebuild that transformers'
        auto classes do not know; registering it for the model's config class is what torchvision would
        make unnecessary. It stays registered for the session, for this model type only.
        """
        from transformers import AutoProcessor

        if family.processor_class is not AutoProcessor:
            AutoProcessor.register(type(family.model.config), family.processor_class, exist_ok=True)

    @pytest.fixture
    def guard(self, family: TinyFamily) -> SafetyGuard:
        torch.manual_seed(0)
        return SafetyGuard.attach(family.model, family.processor)

    # ------------------------------------------------------------------ classify
    def test_attach_resolves_the_family_adapter_and_classifies(self, guard: SafetyGuard, family: TinyFamily) -> None:
        assert type(guard.backbone) is family.adapter
        assert guard.config.fingerprint.family == family.adapter.family
        side = int(guard.backbone.num_patches**0.5)
        assert guard.config.fingerprint.patch_grid == (side, side)
        verdict = guard.classify(shaped_images()[1], QUESTION)
        assert verdict.error is None and abs(sum(verdict.level_probs.values()) - 1) < 1e-4

    def test_classify_batch_over_different_sizes_equals_single_requests(self, guard: SafetyGuard) -> None:
        images = shaped_images()
        prompts = [*PROMPTS, QUESTION]
        batch = guard.classify_batch(images, prompts)
        for image, prompt, together in zip(images, prompts, batch):
            alone = guard.classify(image, prompt)
            assert alone.action == together.action
            assert alone.level_probs == pytest.approx(together.level_probs, abs=1e-5)
            assert alone.type_probs == pytest.approx(together.type_probs, abs=1e-5)

    def test_aclassify_equals_classify(self, guard: SafetyGuard) -> None:
        image = shaped_images()[2]
        together = asyncio.run(guard.aclassify(image, QUESTION))
        alone = guard.classify(image, QUESTION)
        assert together.model_dump(exclude={"latency_ms"}) == alone.model_dump(exclude={"latency_ms"})

    def test_the_vision_tower_runs_once_per_batch(self, guard: SafetyGuard) -> None:
        with count_calls(guard.backbone.vision_tower) as calls:
            guard.classify_batch(shaped_images(), [*PROMPTS, QUESTION])
        assert calls == [1]

    def test_a_large_image_is_judged_within_the_vision_budget(self, family: TinyFamily) -> None:
        """Native-resolution families: at most ``max_vision_patches`` tower patches; others: the processor's size."""
        budget = 128
        guard = guard_for(family.model, family.processor, max_vision_patches=budget)
        image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (300, 400, 3), dtype=np.uint8))
        if guard.backbone.resolution_unit is None:  # a fixed size or tile count: left to the processor
            assert guard.backbone.fit_vision_budget([image], budget)[0] is image
            return
        analysis = guard.analyze([image], [QUESTION])
        assert analysis.verdicts[0].error is None
        assert _tower_patches(analysis.features, guard.backbone.resolution_unit[0]) <= budget

    def test_a_processor_of_another_family_is_refused(self, family: TinyFamily, tiny_processor) -> None:
        with pytest.raises(ProcessorError):
            SafetyGuard.attach(family.model, tiny_processor)

    # ------------------------------------------------------------------ generate
    def test_allowed_without_llm_tokens_it_is_token_for_token_the_models_generate(self, family: TinyFamily) -> None:
        guard = guard_for(family.model, family.processor, inject=False, level=0)
        for image in shaped_images():
            with spy_generate(family.model) as outputs, capture_llm_inputs(family.model) as guarded:
                result = guard.generate(image, QUESTION, **GREEDY)
            with capture_llm_inputs(family.model) as plain:
                expected = plain_generate(family.model, family.processor, [image], [user_turn(QUESTION)], **GREEDY)
            assert (result.action, result.generated) == ("allow", True)
            assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected
            assert torch.equal(guarded[0]["input_ids"], plain[0]["input_ids"])  # the processor's own image runs
            torch.testing.assert_close(guarded[0]["inputs_embeds"], plain[0]["inputs_embeds"])

    def test_several_images_of_different_sizes_in_one_turn_match_the_models_generate(self, family: TinyFamily) -> None:
        guard = guard_for(family.model, family.processor, inject=False, level=0)
        images = shaped_images()[1:3]
        conversation = [user_turn("compare these images .", num_images=2)]
        with spy_generate(family.model) as outputs:
            result = guard.generate(images, conversation, **GREEDY)
        assert len(result.verdicts) == 2
        expected = plain_generate(family.model, family.processor, images, conversation, **GREEDY)
        assert outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected

    def test_llm_tokens_widen_each_image_run_by_num_tokens(self, family: TinyFamily) -> None:
        lengths = {}
        for inject in (False, True):
            guard = guard_for(family.model, family.processor, inject=inject, level=0)
            result = guard.generate(shaped_images()[:2], [user_turn(QUESTION, num_images=2)], max_new_tokens=2)
            lengths[inject] = result.prompt_tokens
        assert lengths[True] - lengths[False] == 2 * guard.config.tokens.num_tokens

    def test_stream_yields_the_generated_answer(self, family: TinyFamily) -> None:
        guard = guard_for(family.model, family.processor, inject=False, level=0)
        image = shaped_images()[3]
        streamed = "".join(guard.stream(image, QUESTION, **GREEDY))
        assert streamed.strip() == guard.generate(image, QUESTION, **GREEDY).text.strip()

    def test_wrap_generates_exactly_what_the_model_does_on_its_processor_output(self, family: TinyFamily) -> None:
        guard = guard_for(family.model, family.processor, inject=False, level=0)
        text = family.processor.apply_chat_template([user_turn(QUESTION)], add_generation_prompt=True)
        # One list of images per prompt: processors that nest images read a flat list as one sample.
        images = [[image] for image in shaped_images()[:2]]
        inputs = family.processor(images=images, text=[text, text], return_tensors="pt", padding=True)
        with torch.inference_mode():
            expected = family.model.generate(**inputs, **GREEDY)
        guarded, results = guard.wrap().generate_with_results(**inputs, **GREEDY)
        assert [r.action for r in results] == ["allow", "allow"]
        assert torch.equal(guarded, expected)

    def test_a_refused_request_never_reaches_the_model(self, family: TinyFamily) -> None:
        guard = guard_for(family.model, family.processor, level=3, type_code="illegal")
        with count_calls(family.model.get_output_embeddings()) as calls:
            result = guard.generate(shaped_images()[0], QUESTION, max_new_tokens=4)
        assert result.action in {"refuse", "block"} and not result.generated and calls == []

    # ------------------------------------------------------------------ save, load, other families
    def test_save_then_load_gives_identical_verdicts(self, guard: SafetyGuard, family: TinyFamily, tmp_path) -> None:
        path = guard.save_pretrained(tmp_path / "guard")
        loaded = SafetyGuard.from_pretrained(path, model=family.model, processor=family.processor)
        assert loaded.config == guard.config
        images = shaped_images()
        for a, b in zip(guard.classify_batch(images, [QUESTION] * 4), loaded.classify_batch(images, [QUESTION] * 4)):
            assert a.model_dump(exclude={"latency_ms"}) == b.model_dump(exclude={"latency_ms"})

    def test_guards_do_not_cross_to_another_family(
        self, guard: SafetyGuard, family: TinyFamily, tiny_model, tiny_processor, tmp_path
    ) -> None:
        ours = guard.save_pretrained(tmp_path / "ours")
        torch.manual_seed(0)
        theirs = SafetyGuard.attach(tiny_model, tiny_processor).save_pretrained(tmp_path / "theirs")
        with pytest.raises(CheckpointMismatchError, match="family"):
            SafetyGuard.from_pretrained(ours, model=tiny_model, processor=tiny_processor)
        with pytest.raises(CheckpointMismatchError, match="family"):
            SafetyGuard.from_pretrained(theirs, model=family.model, processor=family.processor)
        with pytest.raises(CheckpointMismatchError):
            guard.wrap(tiny_model)

    def test_classifier_only_judges_as_the_full_model_and_cannot_generate(
        self, guard: SafetyGuard, family: TinyFamily, tmp_path
    ) -> None:
        path = guard.save_pretrained(tmp_path / "guard")
        light = SafetyGuard.from_pretrained_classifier(path, family.path, family.processor)
        assert type(light.backbone) is family.encoder_only_adapter
        parameters = sum(p.numel() for p in light.model.parameters())
        assert parameters < sum(p.numel() for p in family.model.parameters())
        images = shaped_images()
        for a, b in zip(guard.classify_batch(images, [QUESTION] * 4), light.classify_batch(images, [QUESTION] * 4)):
            assert a.model_dump(exclude={"latency_ms"}) == b.model_dump(exclude={"latency_ms"})
        with pytest.raises(GenerationUnavailableError):
            light.generate(images[0], QUESTION, max_new_tokens=2)

    # ------------------------------------------------------------------ training
    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory) -> Path:
        """16 rows: reddish images labelled risky, bluish ones safe, in the four sizes."""
        root = tmp_path_factory.mktemp("family_data")
        rng = np.random.default_rng(0)
        rows = []
        for index in range(16):
            risky = index % 2 == 0
            height, width = SIZES[(index // 2) % len(SIZES)]
            color = np.array([220, 40, 40] if risky else [40, 40, 220])
            pixels = np.clip(color + rng.integers(-40, 40, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"{index}.png")
            label = {"safe_level": 3, "safe_type": "illegal"} if risky else {"safe_level": 0, "safe_type": "safe"}
            response = "sorry i can't help with that request" if risky else "this is a blue square"
            rows.append({"id": str(index), "image": f"{index}.png", "prompt": PROMPTS[index % 3], "response": response})
            rows[-1].update(label)
        path = root / "train.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    def _settings(self, family: TinyFamily, dataset: Path, out: Path) -> dict[str, Any]:
        return {
            "model": str(family.path),
            "train_data": str(dataset),
            "output_dir": str(out),
            "batch_size": 4,
            "grad_accum": 1,
            "lr": 3e-3,
            "warmup_steps": 1,
            "epochs": 2,
            "log_every": 1,
            "checkpoint_every": 1000,
            "progress_bar": False,
            "plots": False,
            "seed": 0,
        }

    def test_stage1_head_loss_falls_and_only_the_safety_modules_train(
        self, family: TinyFamily, dataset: Path, tmp_path, single_thread, auto_loadable
    ) -> None:
        from psaguard.training.config import Stage1Config
        from psaguard.training.loop import run_training
        from psaguard.training.runtime import make_accelerator
        from psaguard.training.stage1 import build_stage1

        settings = self._settings(family, dataset, tmp_path / "stage1")
        cfg = Stage1Config(**settings, guard=SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 8}}))
        accelerator = make_accelerator(cfg)
        setup = build_stage1(cfg, accelerator)
        assert type(setup.guard.backbone) is family.adapter
        model_before = {n: t.clone() for n, t in setup.guard.model.state_dict().items()}

        state = run_training(setup.task, cfg, accelerator)

        head = [r["head_loss"] for r in state.history if "loss" in r]
        assert len(head) == 8
        assert sum(head[-2:]) < 0.2 * sum(head[:2])
        assert all(torch.equal(t, setup.guard.model.state_dict()[n]) for n, t in model_before.items())
        saved = SafetyGuard.from_pretrained(cfg.output_dir, family.model, family.processor)
        assert saved.config.fingerprint.family == family.adapter.family

    def test_stage2_qlora_adapts_only_the_language_model(
        self, family: TinyFamily, dataset: Path, tmp_path, single_thread, auto_loadable
    ) -> None:
        from peft import PeftModel

        from psaguard.training.config import Stage2Config
        from psaguard.training.loop import run_training
        from psaguard.training.runtime import make_accelerator
        from psaguard.training.stage2 import build_stage2

        torch.manual_seed(0)
        config = SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 8}})
        guard_dir = SafetyGuard.attach(family.model, family.processor, config).save_pretrained(tmp_path / "guard")
        settings = self._settings(family, dataset, tmp_path / "stage2")
        cfg = Stage2Config(**{**settings, "guard": str(guard_dir), "max_steps": 2, "lora": {"r": 8}})
        accelerator = make_accelerator(cfg)
        setup = build_stage2(cfg, accelerator)
        adapted = setup.task.objective.model
        quantized = [name for name, module in adapted.named_modules() if type(module).__name__ == "Linear4bit"]
        assert quantized and all(f".{family.adapter.language_model_name}." in name for name in quantized)
        before = {n: t.detach().clone() for n, t in adapted.state_dict().items()}

        state = run_training(setup.task, cfg, accelerator)

        changed = {n for n, t in adapted.state_dict().items() if not torch.equal(before[n], t)}
        assert changed and changed == {n for n in before if ".lora_" in n}
        assert all(f".{family.adapter.language_model_name}." in n for n in changed)
        assert all(torch.isfinite(torch.tensor(r["lm_loss"])) for r in state.history if "lm_loss" in r)
        loaded = SafetyGuard.from_pretrained(
            cfg.output_dir, AutoModelForImageTextToText.from_pretrained(family.path), family.processor
        )
        assert isinstance(loaded.model, PeftModel)  # the LoRA loads with the guard, on the full model
        assert loaded.generate(shaped_images()[1], QUESTION, max_new_tokens=2, min_new_tokens=2).generated


def _tower_patches(features: Any, patch: int) -> int:
    """The first image's tower patches, from the per-image inputs its features carry."""
    inputs = getattr(features, "image_inputs", {})
    if (grids := inputs.get("image_grid_thw")) is not None:
        return int(grids[0].prod())
    sizes = inputs["image_sizes"]
    return int(sizes[0][0]) // patch * (int(sizes[0][1]) // patch)
