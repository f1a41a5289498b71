"""A family's own processor class over its shrunk image processor and the tiny tokenizer, built offline.

The video, audio or other parts of the processor are left out (their loaders need torchvision); the tiny
word-level tokenizer learns the special tokens the processor reads, names or writes, by building and probing
the processor until they settle; the chat template writes the text that expands into the most image tokens.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from psaguard.testing.llava import TinyLlavaSpec, tiny_chat_template, tiny_tokenizer
from psaguard.testing.shrink import GRID, TinyBuildError, image_side, shrunk_image_processor, tokens_per_image
from psaguard.testing.torch_transforms import import_with_torch_transforms

__all__ = ["build_processor", "probe"]

_KEPT = ("image_processor", "tokenizer")
_MISSING_TOKEN = re.compile(
    r"(?:has no attribute|missing required attribute|does not have an) [`']?(\w+?_token)(?:_id)?[`']?"
)
_TEXT_TOKENS = frozenset({"pad_token", "bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token"})
_WRITTEN_TOKEN = re.compile(r"<\|[\w.-]+\|>|<[A-Za-z][\w.-]*>|\[[A-Z][A-Z0-9_]*\]|\]<\][\w .-]+\[>\[")
"""Special-token spellings (``<|image_pad|>``, ``<IMG_ATOM>``, ``[IMG]``, ``]<]start of image[>[``) in the text a
processor tokenizes."""


def build_processor(
    model_type: str, config: Any, image_settings: Mapping[str, Any], words: tuple[str, ...], tokens: Mapping[str, str]
) -> tuple[Any, str, int]:
    """``model_type``'s tiny processor for ``config``, the text the template writes per image and its image token.

    ``image_settings`` are set on the image processor, ``words`` added to the vocabulary and ``tokens`` (name ->
    text) given to the tokenizer, beyond what the processor itself asks for.
    """
    processor_class, image_processor_class = _classes(model_type)
    image_processor = shrunk_image_processor(image_processor_class, config, image_settings)
    try:
        images_only = _images_only(processor_class)
    except ImportError as err:  # a processor class that is a placeholder for a missing package
        raise TinyBuildError(f"the processor needs a package not installed here: {err}") from err
    kwargs = _processor_kwargs(processor_class, config)
    spec = TinyLlavaSpec(extra_words=words)
    processor, learnt = _learn_tokens(images_only, image_processor, spec, kwargs, {"image_token": "<image>", **tokens})
    text, image_id = _placeholder(processor, learnt, tokens.values())
    processor.chat_template = tiny_chat_template(text)
    return processor, text, image_id


def probe(processor: Any, text: str, size: tuple[int, int] = (40, 56)) -> Any:
    """The processor's output for ``text`` and one image of ``size`` (nested per prompt or flat, whichever it
    takes), or None; :class:`TinyBuildError` where it needs a package not installed here."""
    from PIL import Image

    for batch in ([[Image.new("RGB", size)]], [Image.new("RGB", size)]):
        try:
            return processor(text=[text], images=batch, return_tensors="pt")
        except ImportError as err:
            raise TinyBuildError(f"the processor needs a package not installed here: {err}") from err
        except Exception:
            continue
    return None


# ---------------------------------------------------------------------------------------------------- classes
def _classes(model_type: str) -> tuple[type, type]:
    """The processor class and the PIL image processor class (else the torchvision one on torch-only ops);
    a mixture-of-experts variant shares its dense sibling's (Qwen3-VL-MoE, GLM-4.5V)."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    dense = model_type.removesuffix("_moe")
    processor_name = PROCESSOR_MAPPING_NAMES.get(model_type) or PROCESSOR_MAPPING_NAMES.get(dense)
    if (processor_class := _transformers_class(processor_name)) is None:
        raise TinyBuildError("the family has no processor class")
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or IMAGE_PROCESSOR_MAPPING_NAMES.get(dense)
    names = names if isinstance(names, dict) else {}
    if (image_processor_class := _transformers_class(names.get("pil") or names.get("torchvision"))) is None:
        raise TinyBuildError("the family has no image processor that runs without torchvision")
    return processor_class, image_processor_class


def _transformers_class(name: str | None) -> type | None:
    """transformers' class ``name``; one whose module imports torchvision's transforms is imported on the
    torch-only ops of :mod:`psaguard.testing.torch_transforms` (None where it cannot be imported here)."""
    import transformers

    found = getattr(transformers, name, None) if name else None
    if isinstance(found, type) and not found.__qualname__.endswith("Placeholder"):
        return found
    module = getattr(transformers, "_class_to_module", {}).get(name)
    try:
        return getattr(import_with_torch_transforms(f"transformers.{module}"), name, None) if module else None
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------------------- processor
def _images_only(processor_class: type) -> type:
    """``processor_class`` without its video, audio or other parts: images and text only (no torchvision).

    Where the kept parts come first, the dropped ones are no attributes: neither saved nor loaded (their loaders
    need torchvision). Saved settings load by the names of the class's own ``__init__``. With parts left out or on
    torch-only ops, its name is not transformers' (whose class ``AutoProcessor`` would load with those parts, or as
    a placeholder needing torchvision): registered for the config class, ``AutoProcessor`` finds it.
    """
    from transformers.processing_utils import ProcessorMixin

    dropped = [a for a in processor_class.get_attributes() if a not in _KEPT]
    signature = inspect.signature(processor_class.__init__)
    required = _required(signature)
    settings = [n for n in signature.parameters if n not in ("self", *_KEPT)]
    attributes = processor_class.get_attributes()
    if attributes[: len(_KEPT)] == [a for a in attributes if a in _KEPT]:
        attributes = attributes[: len(_KEPT)]

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        nones = dict.fromkeys(required)
        processor_class.__init__(self, image_processor=image_processor, tokenizer=tokenizer, **nones, **kwargs)

    __init__.__signature__ = signature  # what save_pretrained serializes

    def from_args_and_dict(cls, args: Any, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        unused = kwargs.pop("return_unused_kwargs", False)
        processor = cls(*args, **{k: v for k, v in {**processor_dict, **kwargs}.items() if k in settings})
        return (processor, {}) if unused else processor

    def from_dict(cls, processor_dict: dict[str, Any], **kwargs: Any) -> Any:  # what transformers 5.25 calls
        unused = kwargs.pop("return_unused_kwargs", False)
        processor = cls(**{k: v for k, v in {**processor_dict, **kwargs}.items() if k in (*settings, *_KEPT)})
        return (processor, {}) if unused else processor

    def check_argument_for_proper_class(self, attribute_name: str, arg: Any) -> Any:
        return None if arg is None else processor_class.check_argument_for_proper_class(self, attribute_name, arg)

    methods = {"__init__": __init__, "get_attributes": classmethod(lambda cls: attributes)}
    methods.update(from_args_and_dict=classmethod(from_args_and_dict), from_dict=classmethod(from_dict))
    methods.update(check_argument_for_proper_class=check_argument_for_proper_class, __module__=__name__)
    if _reads(processor_class, dropped):
        methods["apply_chat_template"] = ProcessorMixin.apply_chat_template
    return type(_class_name(processor_class, dropped), (processor_class,), {**dict.fromkeys(dropped), **methods})


def _required(signature: inspect.Signature) -> list[str]:
    """Parameters of a processor's ``__init__`` other than the kept parts that have no default."""
    params = [(n, p) for n, p in signature.parameters.items() if n not in ("self", *_KEPT)]
    return [n for n, p in params if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]


def _class_name(processor_class: type, dropped: list[str]) -> str:
    import transformers

    own = not dropped and getattr(transformers, processor_class.__name__, None) is processor_class
    return processor_class.__name__ if own else f"Tiny{processor_class.__name__}"


def _reads(processor_class: type, dropped: list[str]) -> bool:
    """Whether the class's own chat-template rendering reads a left-out part (SmolVLM's video frame settings)."""
    own = processor_class.__dict__.get("apply_chat_template")
    return own is not None and any(f"self.{name}" in inspect.getsource(own) for name in dropped)


def _processor_kwargs(processor_class: type, config: Any) -> dict[str, Any]:
    """Settings the processor's ``__init__`` takes that a checkpoint's processor config records from its model."""
    params = inspect.signature(processor_class.__init__).parameters
    vision = getattr(config, "vision_config", None)
    known = {
        "patch_size": getattr(vision, "patch_size", None),
        "img_size": image_side(config),
        "downsample_factor": getattr(config, "downsample_factor", None),
        "vision_feature_select_strategy": getattr(config, "vision_feature_select_strategy", "default"),
        "num_additional_image_tokens": 1 if "clip" in str(getattr(vision, "model_type", "")) else 0,
        "image_seq_length": tokens_per_image(config),
        "num_image_tokens": GRID * GRID,
        "spatial_merge_size": getattr(config, "spatial_merge_size", None),
    }
    return {k: v for k, v in known.items() if k in params and v is not None}


# ---------------------------------------------------------------------------------------------------- tokens
def _learn_tokens(
    images_only: type, image_processor: Any, spec: TinyLlavaSpec, kwargs: dict[str, Any], tokens: dict[str, str]
) -> tuple[Any, dict[str, str]]:
    """Build the processor until the special tokens it reads, names and writes settle in the tokenizer."""
    for _ in range(12):
        try:
            processor = images_only(image_processor=image_processor, tokenizer=tiny_tokenizer(spec, tokens), **kwargs)
        except (AttributeError, ValueError) as err:
            missing = _missing(err, tokens)
            tokens = {**tokens, missing: f"<{missing}>"}
            continue
        except Exception as err:
            raise TinyBuildError(f"the processor cannot be built: {type(err).__name__}: {err}") from err
        found = _found_tokens(processor, tokens)
        if found == tokens:
            return processor, tokens
        tokens = found
    raise TinyBuildError("the processor's special tokens do not settle")


def _missing(err: Exception, tokens: Mapping[str, str]) -> str:
    """The token the processor's error says its tokenizer lacks; :class:`TinyBuildError` where none is new."""
    missing = _MISSING_TOKEN.search(str(err))
    if missing is None or missing.group(1) in tokens:
        raise TinyBuildError(f"the processor cannot be built: {type(err).__name__}: {err}") from err
    return missing.group(1)


def _found_tokens(processor: Any, tokens: Mapping[str, str]) -> dict[str, str]:
    """``tokens`` and what the built processor shows it needs besides (the tokenizer's names stand)."""
    found = {**_special_tokens(processor), **tokens}
    known = set(processor.tokenizer.get_vocab())
    for name, text in _special_tokens(processor).items():  # its own text where it does not read the tokenizer's
        if text not in known:
            found.setdefault(f"processor_{name}", text)
    for name in _unset_tokens(processor):  # tokens it reads from the tokenizer and found none of
        found.setdefault(name, f"<{name}>")
    if (missing := _missing_at_call(processor)) and missing not in found:
        found[missing] = f"<{missing}>"  # a token the processor reads only when called (Gemma 4's audio token)
    for index, text in enumerate(_written_tokens(processor)):  # literals its code writes (Ovis2's <IMG_ATOM>)
        if text not in found.values():
            found[f"written_{index}_token"] = text
    return found


def _special_tokens(processor: Any) -> dict[str, str]:
    """The processor's named special tokens (``image_token``, ``boi_token``, ...): attribute -> text. A plain word
    (Aya Vision's ``TILE_GLOBAL``) is none: the tokenizer splits it as any text."""
    found = {}
    for name, value in inspect.getmembers(processor):
        if _token_name(name) and isinstance(value, str) and value and not re.fullmatch(r"\w+|.*\s.*", value.strip()):
            found[name] = value
    return found


def _token_name(name: str) -> bool:
    return name.endswith("_token") and not name.startswith("_") and name not in _TEXT_TOKENS


def _unset_tokens(processor: Any) -> list[str]:
    """Names of the processor's ``*_token`` attributes left None (the tokenizer had no such token)."""
    return [n for n in vars(processor) if _token_name(n) and getattr(processor, n) is None]


class _StopProcessing(Exception):
    """Raised by :class:`_Recorder` once the processor hands its text to the tokenizer."""


class _Recorder:
    """Stands in for a processor's tokenizer: records the text the processor tokenizes, then stops the call."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.texts.extend([text] if isinstance(text, str) else [t for t in text or [] if isinstance(t, str)])
        raise _StopProcessing


def _written_tokens(processor: Any) -> list[str]:
    """Special-token spellings the processor writes for an image that its tokenizer does not know."""
    tokenizer, text = processor.tokenizer, getattr(processor, "image_token", None)
    if not isinstance(text, str):
        return []
    processor.tokenizer = recorder = _Recorder(tokenizer)
    try:
        _call(processor, text)
    except Exception:  # _StopProcessing, or a processor this probe cannot call: nothing learnt
        pass
    finally:
        processor.tokenizer = tokenizer
    known = set(tokenizer.get_vocab())
    written = [t for text in recorder.texts for t in _WRITTEN_TOKEN.findall(text)]
    return [t for t in dict.fromkeys(written) if t not in known]


def _missing_at_call(processor: Any) -> str | None:
    """The name of a special token the processor asks its tokenizer for when called with an image, if missing."""
    text = getattr(processor, "image_token", None)
    if not isinstance(text, str):
        return None
    try:
        _call(processor, text)
    except Exception as err:
        missing = _MISSING_TOKEN.search(str(err))
        return missing.group(1) if missing else None
    return None


def _call(processor: Any, text: str) -> Any:
    from PIL import Image

    return processor(text=[text], images=[[Image.new("RGB", (40, 56))]], return_tensors="pt")


def _placeholder(processor: Any, tokens: Mapping[str, str], marks: Iterable[str]) -> tuple[str, int]:
    """What the chat template writes per image, and the image token it expands into.

    Of the named image tokens (alone, or between image start and end tokens), the text whose expansion repeats
    a token most, then holds the most ``marks`` (tokens the template writes that the processor does not add: the
    Qwen-VLs' ``<|vision_start|>``); that token is the image token the model's features replace.
    """
    mark_ids = set(processor.tokenizer.convert_tokens_to_ids(list(marks)))
    best, score = None, (1, 0)
    for text in _candidates(tokens):
        found = _expansion(processor, text, mark_ids)
        if found is not None and found[0][0] > 1 and found[0] > score:
            best, score = (text, found[1]), found[0]
    if best is None:
        raise TinyBuildError("no special token of the processor expands into a run of image tokens")
    return best


def _candidates(tokens: Mapping[str, str]) -> list[str]:
    """The named image tokens, alone and between each image start and end token."""
    visual = {n: t for n, t in tokens.items() if n not in _TEXT_TOKENS and re.search("image|img|vision|boi_token", n)}
    images = list(visual.values())
    starts = [t for n, t in visual.items() if "start" in n]
    ends = [t for n, t in visual.items() if "end" in n]
    wrapped = [s + t + e for s, t, e in itertools.product(starts, images, ends) if t not in (s, e)]
    return list(dict.fromkeys([*images, *wrapped]))


def _expansion(processor: Any, text: str, marks: set[int]) -> tuple[tuple[int, int], int] | None:
    """((most repeats of a token, named tokens held), that token) of ``text``'s expansion for one image."""
    out = probe(processor, text, (40, 56))
    ids = None if out is None else out.get("input_ids")
    ids = None if ids is None else ids[ids != processor.tokenizer.unk_token_id]  # unknown words: no image token
    if ids is None or not len(ids):
        return None
    values, counts = ids.unique(return_counts=True)
    return (int(counts.max()), len(marks & set(ids.tolist()))), int(values[counts.argmax()])
