"""Request images: safe decoding with typed errors (``decode``), bounded structural pre-checks from the
magic bytes (``checks``), decoding in killable worker processes (``isolated``) and the vision budget
(``budget``)."""

from psaguard.images.decode import (
    ALLOWED_FORMATS,
    MAX_ASPECT_RATIO,
    MAX_IMAGE_BYTES,
    MAX_IMAGES_PER_REQUEST,
    OPT_IN_FORMATS,
    ImageFormat,
    ImageInput,
    check_image_count,
    image_size,
    load_image,
)

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_ASPECT_RATIO",
    "MAX_IMAGES_PER_REQUEST",
    "MAX_IMAGE_BYTES",
    "OPT_IN_FORMATS",
    "ImageFormat",
    "ImageInput",
    "check_image_count",
    "image_size",
    "load_image",
]
