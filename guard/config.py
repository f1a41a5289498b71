"""Configs of the guard and its modules, saved as JSON beside the weights (PEFT-style)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from psaguard.categories.config import CustomCategory, check_categories
from psaguard.checkpoints.files import parse_json, read_regular_file
from psaguard.checkpoints.serialization import atomic_write_text
from psaguard.errors import CheckpointError, CheckpointMismatchError, ConfigError
from psaguard.images.budget import DEFAULT_MAX_VISION_PATCHES, MIN_VISION_PATCHES
from psaguard.images.decode import ALLOWED_FORMATS, MAX_IMAGES_PER_REQUEST, ImageFormat
from psaguard.policy import GuardPolicy
from psaguard.taxonomy import DEFAULT_TAXONOMY, Taxonomy

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "HeadConfig",
    "ModelFingerprint",
    "ProjectorConfig",
    "SafetyGuardConfig",
    "TokensConfig",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "psaguard_config.json"
FORMAT_VERSION = 1
_MAX_CONFIG_BYTES = 1024 * 1024  # a real config is a few KB; bounds memory on a hostile file
# Upper bounds on sizes: far above any real guard (the paper: depth 3, 64 tokens, 8 heads), low enough that a
# hostile config is refused here instead of allocating gigabytes or looping for minutes while building modules.
_MAX_DEPTH = 64
_MAX_WIDTH = 65_536
_MAX_TOKENS = 4096
_MAX_HEADS = 1024
_MAX_PROMPT_TOKENS = 8192
_MAX_PIXELS = 1 << 31
_MAX_IMAGES = 1024
_MAX_VISION_PATCHES = 1 << 20


class ProjectorConfig(BaseModel):
    """Safety projector (C-Abstractor). Widths default to the paper's: vision width + number of tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = Field(3, ge=1, le=_MAX_DEPTH, description="Bottleneck blocks per RegNet stage (at most 64).")
    hidden_size: int | None = Field(
        None,
        ge=1,
        le=_MAX_WIDTH,
        description="Width of the RegNet stages; None = vision width + tokens.num_tokens (paper).",
    )
    num_queries: int | None = Field(
        None, ge=1, le=_MAX_WIDTH, description="Output tokens (a square number); None keeps the patch count (paper)."
    )


class TokensConfig(BaseModel):
    """The two learned safety-token sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_tokens: int = Field(64, ge=1, le=_MAX_TOKENS, description="Tokens per set (paper: 64; at most 4096).")
    init_std: float = Field(0.02, gt=0, description="Std of the normal init (paper: 0.02).")
    inject_llm_tokens: bool = Field(
        True, description="Place llm_tokens before each image's embeddings in guarded generation."
    )


class HeadConfig(BaseModel):
    """Safety head: cross-attention from the prompt to [head_tokens; projector output]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_heads: int = Field(
        8, ge=1, le=_MAX_HEADS, description="Attention heads (paper: 8); must divide the text model's width."
    )
    pooling: Literal["mean", "first"] = Field(
        "mean",
        description="'mean' pools over the valid prompt positions (text-aware); 'first' reads the first "
        "position, a fixed anchor token, as the paper's code does (the prompt cannot change the verdict).",
    )
    max_prompt_tokens: int = Field(
        256, ge=8, le=_MAX_PROMPT_TOKENS, description="Prompt tokens the head reads (head and tail kept)."
    )
    level_temperature: float = Field(1.0, gt=0, description="Softmax temperature of the level head.")
    type_temperature: float = Field(1.0, gt=0, description="Softmax temperature of the type head.")
    response_head: bool = Field(
        False,
        description="Add a response head: a second cross-attention head over the same safety features whose "
        "query is the prompt followed by an answer (response checking and the streaming monitor). Guards saved "
        "before it existed load without one.",
    )
    response_level_temperature: float = Field(1.0, gt=0, description="Softmax temperature of the response level head.")
    response_type_temperature: float = Field(1.0, gt=0, description="Softmax temperature of the response type head.")


class ModelFingerprint(BaseModel):
    """What a guard's weights depend on in the base model; loading onto a different one fails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = Field(description="Backbone adapter family, e.g. 'llava'.")
    model_type: str = Field(description="The base model's config.model_type.")
    vision_hidden_size: int = Field(description="Width of the selected vision features.")
    text_hidden_size: int = Field(description="Width of the language model's embeddings.")
    vision_feature_layer: int | tuple[int, ...] = Field(description="Vision layer(s) the features come from.")
    num_image_tokens: int = Field(description="Patch tokens per image fed to the safety projector.")
    vocab_size: int = Field(description="Rows of the input embedding table.")
    patch_grid: tuple[int, int] | None = Field(
        None,
        description="(rows, columns) of the patch grid the safety projector sees, after the adapter resampled "
        "the tower's grid; None in files written before it was recorded (then not compared).",
    )

    def check(self, other: ModelFingerprint) -> None:
        """Raise :class:`CheckpointMismatchError` listing every field that differs."""
        diffs = [
            f"{name}: saved {getattr(self, name)!r}, model has {getattr(other, name)!r}"
            for name in type(self).model_fields
            if getattr(self, name) != getattr(other, name) and getattr(self, name) is not None
        ]
        if diffs:
            raise CheckpointMismatchError("guard was trained for a different base model: " + "; ".join(diffs))


class SafetyGuardConfig(BaseModel):
    """Everything needed to rebuild a guard's modules and decisions, saved as ``psaguard_config.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(FORMAT_VERSION, description="Version of this file's layout.")
    projector: ProjectorConfig = Field(default_factory=ProjectorConfig, description="Safety projector.")
    tokens: TokensConfig = Field(default_factory=TokensConfig, description="Safety tokens.")
    head: HeadConfig = Field(default_factory=HeadConfig, description="Safety head.")
    taxonomy: Taxonomy = Field(default=DEFAULT_TAXONOMY, description="Label set of the head.")
    policy: GuardPolicy = Field(default_factory=GuardPolicy, description="Decision policy.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype of the safety modules; 'auto' follows the model's input embeddings, or float32 on a "
        "CPU without a native path for their 16-bit dtype (psaguard.dtypes.choose_dtype).",
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        le=_MAX_PIXELS,
        description="Largest image (width x height) the guard decodes; larger is refused.",
    )
    max_images_per_request: int = Field(
        MAX_IMAGES_PER_REQUEST,
        ge=1,
        le=_MAX_IMAGES,
        description="Most images in one request (classify_requests, guarded generation, LangChain, the server; "
        "default 4, the server's max_images); more is refused with InvalidInputError.",
    )
    max_vision_patches: int = Field(
        DEFAULT_MAX_VISION_PATCHES,
        ge=MIN_VISION_PATCHES,
        le=_MAX_VISION_PATCHES,
        description="Most vision-tower patches per image for native-resolution families (Qwen2-VL, Qwen2.5-VL, "
        "Qwen3-VL, GLM-4V, Mistral3, Pixtral): larger images are downscaled, aspect ratio kept, before the "
        "model's processor, and the model sees them as the guard judged them (default 4096: 896 x 896 px at "
        "14-px patches). Families that resize to a fixed size or tile count are bounded by their processor.",
    )
    image_formats: tuple[ImageFormat, ...] = Field(
        ALLOWED_FORMATS,
        min_length=1,
        description="Image formats decoded from bytes and paths: PNG, JPEG, GIF, WEBP by default; BMP, TIFF "
        "and PPM are opt-in (see docs/security.md).",
    )
    fingerprint: ModelFingerprint | None = Field(
        None, description="Base model the weights were made for; filled in by attach/save."
    )
    categories: tuple[CustomCategory, ...] = Field(
        (),
        description="Custom risk categories added from examples (SafetyGuard.add_category), in bank order; "
        "their scorers are tensors in the weights file.",
    )

    @model_validator(mode="after")
    def _policy_matches_taxonomy(self) -> SafetyGuardConfig:
        self.policy.validate_against(self.taxonomy)
        check_categories(self.categories, self.taxonomy)
        return self

    def to_json(self) -> str:
        """The text :meth:`save` writes: indented JSON."""
        return self.model_dump_json(indent=2) + "\n"

    def digest(self) -> str:
        """SHA-256 of :meth:`to_json`, i.e. of the file :meth:`save` writes; recorded beside the weights."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write the config as indented JSON into ``directory`` (atomically)."""
        path = Path(directory) / CONFIG_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(
        cls, directory: str | Path, *, digest: str | None = None, accept_edited: bool = False
    ) -> SafetyGuardConfig:
        """Read ``psaguard_config.json`` from ``directory``; typed errors for missing or invalid files.

        With ``digest`` (the one recorded beside the weights), a file whose SHA-256 differs raises
        :class:`CheckpointError`: it was edited after saving. ``accept_edited=True`` loads it anyway (logged);
        save the guard again to record the new digest.
        """
        path = Path(directory) / CONFIG_NAME
        if not path.exists():
            raise CheckpointError(f"no {CONFIG_NAME} in {directory}")
        data = read_regular_file(path, _MAX_CONFIG_BYTES, CheckpointError, "guard config")
        if digest is not None:
            _check_digest(path, data, digest, accept_edited)
        raw: Any = parse_json(data, CheckpointError, f"guard config {path}")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        version = raw.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(f"{path} has format_version {version!r}; this psaguard reads up to {FORMAT_VERSION}")
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(f"invalid guard config {path}:\n{err}") from err


def _check_digest(path: Path, data: bytes, recorded: str, accept_edited: bool) -> None:
    if hashlib.sha256(data).hexdigest() == recorded:
        return
    if not accept_edited:
        raise CheckpointError(
            f"{path} was changed after the guard was saved (its SHA-256 differs from the one recorded in the "
            "weights): a policy or threshold may have been weakened. To use an edited config on purpose, load "
            "with accept_edited_config=True and save_pretrained() again, or pass policy= to from_pretrained"
        )
    logger.warning("loading %s although it was edited after saving (accept_edited_config=True)", path)
