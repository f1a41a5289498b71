"""What determines a world experiment run: :class:`ExperimentSpec`, its stage settings and the named presets.

``psaguard world run --preset NAME`` starts from :data:`PRESETS` (``ci``, ``cpu``, ``cpu-long``, ``gpu``);
:func:`psaguard.training.world.experiment.run_experiment` runs a spec.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from psaguard.training.world.base_model import BaseVlmConfig
from psaguard.training.world.build import WorldSpec

__all__ = ["PRESETS", "ExperimentSpec", "Preset", "StageSettings"]

Preset = Literal["ci", "cpu", "cpu-long", "gpu"]


class StageSettings(BaseModel):
    """Optimizer settings of one training stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Examples per step.")
    lr: float = Field(gt=0, description="Peak learning rate.")
    warmup: int = Field(10, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices and token tables.")
    decay_norms_and_biases: bool = Field(False, description="Weight decay on biases and normalization gains too.")


class ExperimentSpec(BaseModel):
    """Everything that determines a world experiment run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Preset | None = Field(None, description="The preset this spec came from, if any.")
    seed: int = Field(0, description="Seed of the world, the base model and both stages.")
    world: WorldSpec = Field(default_factory=WorldSpec, description="The world to build.")
    base: BaseVlmConfig = Field(default_factory=BaseVlmConfig, description="Tiny base VLM and its safe-VQA run.")
    num_tokens: int = Field(8, ge=1, description="Safety tokens per set (paper: 64).")
    token_init_std: float = Field(
        0.02,
        gt=0,
        description="Init std of the safety tokens (paper: 0.02); larger keys help a tiny head read the prompt.",
    )
    stage1: StageSettings = Field(
        default_factory=lambda: StageSettings(steps=150, lr=2e-3), description="Stage I (safety modules)."
    )
    stage1_lm_weight: float = Field(
        1.0, ge=0, description="LM-loss weight of Stage I; 0 skips the LLM (fast, but llm_tokens stay untrained)."
    )
    fresh_rows: bool = Field(
        False,
        description="Give the world at least stage1.steps x stage1.batch_size train rows, so Stage I sees every "
        "row once instead of repeating world.n_train rows (the generator draws fresh rows at the same cost).",
    )
    stage2: StageSettings = Field(
        default_factory=lambda: StageSettings(steps=40, lr=1e-3), description="Stage II (LoRA on the LLM)."
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank of Stage II.")
    train_with_hints: bool = Field(
        True, description="Train the LLM with the hint each row's labels call for (TrainConfig.train_with_hints)."
    )
    qlora: bool = Field(False, description="Stage II on a 4-bit NF4 language model (QLoRA) instead of fp32 LoRA.")
    max_new_tokens: int = Field(24, ge=1, description="Greedy tokens per answer (refusals are ~20 words).")
    threads: int | None = Field(1, ge=1, description="torch CPU threads; 1 is fastest for tiny models on busy CPUs.")

    @property
    def built_world(self) -> WorldSpec:
        """The world the run builds: ``world``, with as many train rows as Stage I consumes under ``fresh_rows``."""
        if not self.fresh_rows:
            return self.world
        n_train = max(self.world.n_train, self.stage1.steps * self.stage1.batch_size)
        return self.world.model_copy(update={"n_train": n_train})

    @classmethod
    def from_preset(cls, preset: Preset, seed: int = 0, **overrides: Any) -> ExperimentSpec:
        """The spec of a named preset, with ``overrides`` (top-level fields) applied."""
        return cls.model_validate({**PRESETS[preset](seed), "preset": preset, "seed": seed, **overrides})


def _world(seed: int, n: tuple[int, int, int, int], image_size: int = 32) -> dict[str, Any]:
    n_train, n_val, n_test, n_attack = n
    return {
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "n_attack": n_attack,
    }


def _cpu(seed: int) -> dict[str, Any]:
    """The ``cpu`` preset: a few minutes on a 2-core CPU."""
    return {
        "world": _world(seed, (1200, 100, 400, 200)),
        "base": {"steps": 500, "batch_size": 32, "lr": 1e-3, "warmup": 20, "seed": seed},
        "num_tokens": 16,
        "token_init_std": 1.0,
        "stage1": {"steps": 3000, "batch_size": 16, "lr": 1e-2, "warmup": 20},
        "stage1_lm_weight": 0.0,
        "stage2": {"steps": 800, "batch_size": 16, "lr": 5e-3, "warmup": 40},
        "lora_r": 16,
    }


def _cpu_long(seed: int) -> dict[str, Any]:
    """The ``cpu`` recipe with the measured improvements of docs/world.md (a base model that reads paraphrases,
    tied embeddings, a tower pre-trained longer; 8000 Stage I steps with weight decay, each on fresh rows),
    harmful answers (a response head) and a 2,400-row test split: about 70 min on one core. The shipped demo
    comes from it."""
    cpu = _cpu(seed)
    return {
        **cpu,
        "world": {**_world(seed, (1200, 100, 2400, 200)), "harmful_answers": 0.5},
        "base": {
            **cpu["base"],
            "vision_corpus": 40_000,
            "vision_steps": 8000,
            "language": "paraphrases",
            "tie_embeddings": True,
        },
        # weight decay on every parameter, norm gains included: type macro-F1 +1.8 / +2.8 points on two Stage I
        # seeds, mostly on held-out rows, for a few held-out harmful answers the response head passes; on the
        # matrices alone, -0.5 / +2.5 points and fewer such answers (docs/world.md)
        "stage1": {**cpu["stage1"], "steps": 8000, "weight_decay": 0.05, "decay_norms_and_biases": True},
        "fresh_rows": True,
    }


def _gpu(seed: int) -> dict[str, Any]:
    """The ``cpu`` recipe on a larger world, base model and budget for one GPU, Stage II on 4-bit NF4 (untested
    on a GPU: none was available; a CPU smoke run with every count shrunk runs it end to end, QLoRA included)."""
    cpu = _cpu(seed)
    return {
        **cpu,
        "world": _world(seed, (6000, 600, 1500, 600)),
        "base": {
            **cpu["base"],
            "text_hidden": 256,
            "vision_hidden": 256,
            "vision_layers": 6,
            "vision_corpus": 50_000,
            "vision_steps": 10_000,
            "vision_batch": 256,
            "steps": 1500,
            "batch_size": 64,
            "warmup": 50,
        },
        "stage1": {**cpu["stage1"], "steps": 6000, "batch_size": 32, "warmup": 50},
        "stage2": {**cpu["stage2"], "steps": 1500, "batch_size": 32, "lr": 2e-3, "warmup": 50},
        "qlora": True,
        "threads": None,
    }


PRESETS: dict[str, Any] = {
    # ~30 s on one busy core: enough to show learning against chance, far from the goals.
    "ci": lambda seed: {
        "world": _world(seed, (240, 60, 120, 40)),
        "base": {
            "text_hidden": 64,
            "vision_hidden": 64,
            "vision_layers": 2,
            "vision_corpus": 600,
            "vision_steps": 40,
            "steps": 60,
            "batch_size": 16,
            "lr": 3e-3,
            "warmup": 5,
            "seed": seed,
        },
        "num_tokens": 8,
        "token_init_std": 1.0,
        "stage1": {"steps": 250, "batch_size": 16, "lr": 1e-2, "warmup": 5},
        "stage1_lm_weight": 0.0,
        "stage2": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup": 1},
        "max_new_tokens": 20,
    },
    "cpu": _cpu,
    "cpu-long": _cpu_long,
    "gpu": _gpu,
}
"""Preset name -> function of the seed returning the spec's fields."""
