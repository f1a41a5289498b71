"""A batch's requests as the classifier's image rows and back: the batch's shape checked (``check_batch``,
``check_request_sizes``), each request's images in order (``flat_images``), the images the backbone preprocesses
together (``grouping_of``), and the image verdicts folded into one
verdict per request, the most severe of its images' (``fold_verdicts``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from psaguard.errors import InvalidPromptError
from psaguard.images.decode import ImageInput, check_image_count
from psaguard.policy import worst_verdict
from psaguard.request import GuardRequest
from psaguard.verdict import SafetyVerdict

__all__ = ["check_batch", "check_request_sizes", "flat_images", "fold_verdicts", "group_sizes", "grouping_of"]


def check_batch(images: Sequence[ImageInput], prompts: Sequence[str], requests: Sequence[int] | None = None) -> None:
    """Sequences (not one image or prompt) of equal length, and a request index per image when given."""
    if isinstance(images, (str, bytes)) or isinstance(prompts, str):
        raise InvalidPromptError("classify_batch takes sequences of images and prompts; use classify for one")
    if len(images) != len(prompts):
        raise InvalidPromptError(f"got {len(images)} images but {len(prompts)} prompts")
    if requests is not None and len(requests) != len(images):
        raise InvalidPromptError(f"got {len(requests)} request indices for {len(images)} images")


def check_request_sizes(requests: Sequence[GuardRequest], max_images: int) -> None:
    """No request holds more than ``max_images`` images (:class:`InvalidInputError` naming the request)."""
    for index, request in enumerate(requests):
        where = f"request {index}" if len(requests) > 1 else "the request"
        check_image_count(len(request.images), max_images, where)


def flat_images(requests: Sequence[GuardRequest]) -> tuple[list[ImageInput], list[str], list[int]]:
    """The requests' images in order, each with its request's judged text and its request's index."""
    flat = [(index, image) for index, request in enumerate(requests) for image in request.images]
    return [image for _, image in flat], [requests[index].prompt for index, _ in flat], [index for index, _ in flat]


def group_sizes(requests: Sequence[int]) -> list[int]:
    """Sizes of the runs of equal request indices: ``[0, 0, 1, 2, 2] -> [2, 1, 2]``."""
    sizes: list[int] = []
    for position, request in enumerate(requests):
        if position and request == requests[position - 1]:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def grouping_of(requests: Sequence[int] | None, indices: Sequence[int]) -> list[int] | None:
    """The image counts per request of the images at ``indices`` (``requests[i]``: image ``i``'s request); None
    when the images are not grouped into requests."""
    return None if requests is None else group_sizes([requests[index] for index in indices])


def fold_verdicts(
    requests: Sequence[GuardRequest],
    image_verdicts: Sequence[SafetyVerdict],
    judged: Sequence[int],
    text_only: Callable[[], SafetyVerdict],
) -> tuple[list[SafetyVerdict], list[list[SafetyVerdict]], list[list[int] | None]]:
    """Per request, in order: its verdict (the worst of its images', ``text_only()`` without images), its images'
    verdicts, and the feature rows of its images (``judged``: the images with a row, in row order; None when one
    of its images has none)."""
    judged_row = {position: row for row, position in enumerate(judged)}
    verdicts, per_image, rows, position = [], [], [], 0
    for request in requests:
        positions = range(position, position + len(request.images))
        position += len(request.images)
        own = [image_verdicts[p] for p in positions]
        per_image.append(own)
        rows.append(_rows_of(positions, judged_row))
        verdicts.append(worst_verdict(own) if own else text_only())
    return verdicts, per_image, rows


def _rows_of(positions: range, judged_row: Mapping[int, int]) -> list[int] | None:
    return [judged_row[p] for p in positions] if all(p in judged_row for p in positions) else None
