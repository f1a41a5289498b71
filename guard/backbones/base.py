"""What the guard needs from a vision-language model, behind one small interface per model family.

A family adapter (a :class:`Backbone` subclass, registered with
:func:`psaguard.backbones.register_backbone`) answers four questions for the family-neutral code:

* **vision**: how to preprocess images and run the tower once (:meth:`Backbone.preprocess`,
  :meth:`Backbone.encode_images`), giving patches on the safety projector's square grid;
* **the model's own image embeddings**: :meth:`Backbone.project`, one ``(L_i, D)`` tensor per image;
* **the image run in the language model's input**: which template placeholder stands for an image
  (:attr:`Backbone.placeholder_token_id`) and which tokens replace it (:meth:`Backbone.image_runs`:
  image tokens, plus wrapper or row-break tokens where the family has them);
* **the model inputs that carry the images**: :meth:`Backbone.model_image_inputs` (the features in the
  form the family's forward expects, and any extra inputs such as ``token_type_ids``).

See docs/adapters.md for how to write one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from psaguard.config import ModelFingerprint
from psaguard.errors import ProcessorError
from psaguard.images.budget import fit_patch_budget
from psaguard.injection import ImageLayout, features_as_list
from psaguard.tokenization import tokenizer_of

__all__ = ["Backbone", "VisionFeatures", "pool_to_square_grid", "unwrap_model"]

_PROBE_SIZE = (24, 16)  # a small non-square probe image: checks the processor without a real request


@dataclass(frozen=True)
class VisionFeatures:
    """One vision pass over a batch of images.

    ``patches`` (B, N, C) lie on the safety projector's square grid; ``selected`` are the features the
    adapter's :meth:`Backbone.project` reads (row ``i``: image ``i``). Adapters whose images need more (the
    generic adapter's embeddings, runs and per-image inputs) subclass it.
    """

    patches: torch.Tensor
    selected: torch.Tensor

    def __len__(self) -> int:
        return len(self.patches)

    def subset(self, rows: Sequence[int]) -> VisionFeatures:
        """The features of images ``rows`` only, in that order."""
        rows = list(rows)
        return VisionFeatures(patches=self.patches[rows], selected=self.selected[rows])


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a wrapper such as PEFT's ``PeftModel`` (the model itself otherwise).

    Adapters look the vision tower and projector up on this model, while generation goes through the
    wrapper, so a LoRA the user has injected stays active.
    """
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        base = get_base_model()
        if isinstance(base, nn.Module) and base is not model:
            return unwrap_model(base)
    return model


def pool_to_square_grid(grid: torch.Tensor, side: int) -> torch.Tensor:
    """Resample one image's (H, W, C) patch grid to (side * side, C) by adaptive average pooling.

    The safety projector (C-Abstractor) convolves over a fixed square grid; towers with native aspect
    ratios (Pixtral) give any H x W, so each image is pooled (or, if smaller, repeated) onto it.
    """
    if grid.dim() != 3:
        raise ValueError(f"expected an (H, W, C) patch grid, got shape {tuple(grid.shape)}")
    pooled = F.adaptive_avg_pool2d(grid.permute(2, 0, 1).unsqueeze(0).float(), (side, side))
    return pooled.squeeze(0).flatten(1).transpose(0, 1).to(grid.dtype)


class Backbone(ABC):
    """Adapter between psaguard and one family of vision-language models.

    A family adapter knows where the vision tower, projector and token embeddings of its models live, how
    to preprocess images, how big everything is, and how its language model's input holds an image.
    Adding a family means subclassing this and registering the subclass with
    :func:`psaguard.backbones.register_backbone` (docs/adapters.md).
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    image_input_names: ClassVar[tuple[str, ...]] = ()
    """Tensors besides ``pixel_values`` that :meth:`preprocess` returns and :meth:`encode_images` needs.

    They come out of the family's processor beside ``pixel_values`` (LLaVA-NeXT: ``image_sizes``), so code
    that receives processor outputs (the wrapped model, the trainer) knows what to route to the vision pass.
    """
    unjudged_input_names: ClassVar[tuple[str, ...]] = ()
    """Model inputs the guard cannot judge (e.g. videos); a guarded call carrying one is refused, since the
    model would otherwise see them unchecked."""
    derived_input_names: ClassVar[tuple[str, ...]] = ()
    """Processor outputs the guard rebuilds itself for the guarded input (e.g. ``token_type_ids``), so the
    wrapped model drops them from the caller's arguments instead of passing stale copies to ``generate``."""
    unquantized_modules: ClassVar[tuple[str, ...]] = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    """Full module names that 4-bit loading (Stage II QLoRA) keeps in full precision: everything but the
    language model (the vision tower and projector the guard reads, and the output layer)."""
    fallback: ClassVar[bool] = False
    """Whether the registry asks this adapter only after every non-fallback one (the generic adapter)."""
    language_model_name: ClassVar[str] = "language_model"
    """Name of the module holding the language model in the model's module tree (``model.<name>``): Stage II
    puts its LoRA adapters into the projections under it and nowhere else."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        """The model as given: generation runs through it (a PEFT wrapper stays in effect)."""
        self.base_model = unwrap_model(model)
        """The transformers model inside any wrapper: where the parts are looked up."""

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        """Whether this adapter handles ``model`` (dispatch on ``config.model_type``, through wrappers)."""
        return getattr(getattr(unwrap_model(model), "config", None), "model_type", None) in cls.model_types

    @classmethod
    def why_unsupported(cls, model: nn.Module) -> str | None:
        """Why this adapter refuses ``model``, for the registry's :class:`UnsupportedModelError` (None: no reason
        to add; family adapters refuse by ``model_type`` alone)."""
        return None

    # ------------------------------------------------------------------ sizes
    @property
    def config(self) -> Any:
        """The transformers config of the (unwrapped) model."""
        return self.base_model.config

    @property
    @abstractmethod
    def vision_tower(self) -> nn.Module:
        """The vision encoder (run once per request)."""

    @property
    def text_hidden_size(self) -> int:
        """Width of the language model's token embeddings (``config.text_config.hidden_size`` by default)."""
        return self.config.text_config.hidden_size

    @property
    @abstractmethod
    def vision_hidden_size(self) -> int:
        """Width of the selected vision features."""

    @property
    @abstractmethod
    def num_patches(self) -> int:
        """Patch tokens per image fed to the safety projector (a square number: the projector's grid)."""

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid the safety projector sees; recorded in the fingerprint."""
        side = math.isqrt(self.num_patches)
        return (side, side)

    @property
    def image_token_id(self) -> int:
        """Token id whose positions receive image embeddings in the LM input (``config.image_token_id``)."""
        return self.config.image_token_id

    @property
    def placeholder_token_id(self) -> int:
        """Token id the chat template writes once per image; the image token unless the family differs."""
        return self.image_token_id

    # ------------------------------------------------------------------ vision
    @abstractmethod
    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Turn RGB images into the tensors :meth:`encode_images` takes.

        Raise :class:`~psaguard.errors.ProcessorError` when ``processor`` is not of this family.
        """

    @property
    def resolution_unit(self) -> tuple[int, int] | None:
        """(patch side, grid unit) in pixels when the processor keeps images near their own size, else None.

        Native-resolution families (the tower's cost grows with the image) give the tower's patch side and
        the unit their processor rounds image sides to (patch x merge size), and :meth:`fit_vision_budget`
        bounds their patch count. Default None: the processor resizes every image to a fixed size or a
        bounded number of fixed-size tiles, which bounds the cost already.
        """
        return None

    def fit_vision_budget(self, images: Sequence[Image.Image], max_patches: int) -> list[Image.Image]:
        """``images`` as the guard judges them: at most ``max_patches`` tower patches each.

        Larger images of a native-resolution family (:attr:`resolution_unit`) are downscaled before the
        processor, aspect ratio kept and sides on the processor's grid (which its resize then leaves as they
        are); others are returned unchanged. Guarded generation reuses the features of this one vision pass,
        so the model sees the images exactly as the guard judged them.
        """
        unit = self.resolution_unit
        if unit is None:
            return list(images)
        return [fit_patch_budget(image, *unit, max_patches) for image in images]

    def preprocess_requests(
        self, processor: Any, images: Sequence[Image.Image], images_per_request: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """:meth:`preprocess` for images grouped into requests (``images_per_request`` counts them, in order).

        Guarded generation preprocesses this way, so families whose processors treat the images of a
        multi-image sample differently (LLaVA-OneVision does not tile them) see them as the model does.
        Default: the grouping changes nothing.
        """
        return self.preprocess(processor, images)

    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        """Run the vision tower once and select features."""

    def check_processor(self, processor: Any) -> None:
        """Raise :class:`~psaguard.errors.ProcessorError` unless ``processor`` can serve this model.

        Checks the tokenizer (present, knows the placeholder token, fits the embedding table) and runs
        :meth:`preprocess` on a small probe image, so a processor of another family fails at attach time
        with a clear message instead of deep inside a vision tower.
        """
        self.check_tokenizer(processor)
        self.preprocess(processor, [Image.new("RGB", _PROBE_SIZE)])

    def check_tokenizer(self, processor: Any) -> None:
        """The text half of :meth:`check_processor`: a tokenizer that fits the model and knows its placeholder."""
        if processor is None:
            raise ProcessorError(
                f"a processor is required: pass the {self.family!r} model's own processor "
                "(transformers.AutoProcessor.from_pretrained(<model path>))"
            )
        tokenizer = tokenizer_of(processor)
        if not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
            raise ProcessorError(f"{type(processor).__name__} has no text tokenizer; pass the model's processor")
        if len(tokenizer) > self.vocab_size:
            raise ProcessorError(
                f"the processor's tokenizer has {len(tokenizer)} tokens but the model embeds {self.vocab_size}: "
                "it belongs to another model"
            )
        self.read_processor(processor)
        token = tokenizer.convert_ids_to_tokens(self.placeholder_token_id)
        if token is None or token == getattr(tokenizer, "unk_token", None):
            raise ProcessorError(
                f"the processor's tokenizer has no image placeholder token (id {self.placeholder_token_id})"
            )

    def read_processor(self, processor: Any) -> None:
        """Take from the model's processor what the model's config does not record.

        Some families' configs name only the image token, while the processor also writes wrapper or
        row-break tokens (or the chat template another placeholder) whose ids only its tokenizer knows.
        :meth:`check_processor` calls this before anything reads those ids, and the guard checks every
        processor it pairs with a model. Default: nothing to read.
        """
        return None

    def image_inputs_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image inputs that a processor records only in the prompt, read back from its ``input_ids``.

        Where the processor writes other tokens between one image's tokens (Mistral3's row breaks, Idefics3's
        tile tags), the drop-in wrapper (which receives the processor's output) recovers each image's run here
        for :meth:`encode_images`. Inputs the caller passes take precedence. Default: none.
        """
        return {}

    # ------------------------------------------------------------------ the language model's input
    def check_can_generate(self) -> None:
        """Raise :class:`~psaguard.errors.GenerationUnavailableError` if the model cannot generate.

        Full models can; classifier-only adapters (:mod:`psaguard.backbones.encoder_only`) hold no language
        model, and guarded generation checks this before judging anything.
        """
        return None  # a full model generates; classifier-only adapters override this to raise

    @abstractmethod
    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """The model's own image embeddings for its language model: one ``(L_i, D)`` tensor per image."""

    def image_runs(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> list[list[int]]:
        """The token ids that stand for each image in the language model's input, as the processor writes them.

        One list per image, holding exactly ``len(image_embeds[i])`` image tokens (which receive the
        embeddings, in order) plus any wrapper or row-break tokens of the family. The guard widens each run
        by its safety tokens (inserted before the run's first image token). Default: the image token
        repeated once per embedding.
        """
        return [[self.image_token_id] * len(embeds) for embeds in image_embeds]

    def model_image_inputs(self, image_features: Sequence[torch.Tensor], input_ids: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments that hand ``image_features`` (one ``(L_i, D)`` per image) to the model's forward.

        Default: ``mm_encoder_outputs`` with the list of per-image tensors as ``pooler_output`` (the form
        LLaVA-style models take precomputed features in). Families whose forward expects one stacked
        tensor, or extra inputs derived from ``input_ids`` (``token_type_ids``), override this.
        """
        return features_as_list(image_features, input_ids)

    def image_layout(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> ImageLayout:
        """Everything :func:`psaguard.injection.build_llm_inputs` needs to know about this family's images."""
        return ImageLayout(
            image_token_id=self.image_token_id,
            runs=self.image_runs(features, image_embeds),
            placeholder_id=self.placeholder_token_id,
            model_inputs=self.model_image_inputs,
        )

    # ------------------------------------------------------------------ embeddings and identity
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input token embeddings of the language model."""
        embeddings = self.base_model.get_input_embeddings()
        return embeddings(input_ids.to(embeddings.weight.device))

    @property
    def embedding_dtype(self) -> torch.dtype:
        return self.base_model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.base_model.get_input_embeddings().weight.device

    @property
    def vocab_size(self) -> int:
        return self.base_model.get_input_embeddings().weight.shape[0]

    def fingerprint(self) -> ModelFingerprint:
        """What the guard's weights depend on in this model."""
        config = self.config
        return ModelFingerprint(
            family=self.family,
            model_type=config.model_type,
            vision_hidden_size=self.vision_hidden_size,
            text_hidden_size=self.text_hidden_size,
            vision_feature_layer=_as_layer(getattr(config, "vision_feature_layer", -1)),
            num_image_tokens=self.num_patches,
            vocab_size=self.vocab_size,
            patch_grid=self.patch_grid,
        )


def _as_layer(layer: int | Sequence[int]) -> int | tuple[int, ...]:
    return layer if isinstance(layer, int) else tuple(layer)
