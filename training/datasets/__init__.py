"""Converters from the field's public multimodal safety data sets to psaguard's training JSONL.

``psaguard data convert --format NAME --src DIR --out OUT.jsonl`` reads a data set from its own published
layout (downloaded by the user: psaguard fetches nothing) and writes rows that point at its images, with the
source label kept verbatim beside the mapped ``safe_level``/``safe_type``. ``psaguard data formats`` lists
the formats and their label tables. See docs/datasets.md.
"""

from __future__ import annotations

from psaguard.errors import DatasetError
from psaguard.training.datasets.base import DatasetFormat, LabelTable, SourceRecord, Target
from psaguard.training.datasets.conversion import ConvertReport, convert
from psaguard.training.datasets.cross_modal_formats import SIUO, MSSBench, VLSBench
from psaguard.training.datasets.json_formats import RTVLM, HoliSafe, LlavaGuard, MMSafetyBench, VLGuard
from psaguard.training.datasets.parquet_formats import SPAVL, BeaverTailsV, UnsafeBench
from psaguard.training.datasets.table_formats import FigStep, HatefulMemes, JailbreakV28K, MMSafeAware

__all__ = [
    "FORMATS",
    "ConvertReport",
    "DatasetFormat",
    "LabelTable",
    "SourceRecord",
    "Target",
    "convert",
    "get_format",
    "parse_override",
]

FORMATS: dict[str, type[DatasetFormat]] = {
    cls.name: cls
    for cls in (
        VLGuard,
        SPAVL,
        HoliSafe,
        MMSafetyBench,
        FigStep,
        SIUO,
        MSSBench,
        VLSBench,
        BeaverTailsV,
        JailbreakV28K,
        RTVLM,
        MMSafeAware,
        HatefulMemes,
        UnsafeBench,
        LlavaGuard,
    )
}
"""Format name (as ``--format`` takes it) -> its class."""


def get_format(name: str) -> DatasetFormat:
    """The format called ``name``.

    Raises:
        DatasetError: No such format (the message lists the known ones).
    """
    try:
        return FORMATS[name]()
    except KeyError:
        raise DatasetError(f"unknown data set format {name!r}; known: {sorted(FORMATS)}") from None


def parse_override(text: str) -> tuple[str, Target]:
    """``'SOURCE LABEL=LEVEL:TYPE'`` (``--map``) as (label key, target).

    Raises:
        DatasetError: The text is not of that shape.
    """
    key, sep, value = text.rpartition("=")
    level, colon, kind = value.partition(":")
    if not sep or not colon or not key.strip() or not level.strip() or not kind.strip():
        raise DatasetError(f"--map wants 'SOURCE LABEL=LEVEL:TYPE', got {text!r}")
    return key.strip(), Target(level.strip(), kind.strip(), "set with --map")
