"""Data sets published as parquet files with the images inside (Hugging Face ``image`` columns).

These are the one case where a converter copies images: each row's image bytes are written to
``<out stem>_images/`` beside the JSONL, which then is the image root. Needs the ``datasets`` extra
(pyarrow). Parquet files of a split are found under ``src`` by name: a folder named like the split, or a
file whose name starts with it (``train-00000-of-00004.parquet``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from psaguard.errors import DatasetError
from psaguard.training.datasets.base import (
    MODERATION_PROMPT,
    SAFE,
    DatasetFormat,
    LabelTable,
    RecordError,
    SourceRecord,
    Target,
    field_of,
    normalize,
)
from psaguard.training.datasets.sources import iter_parquet, save_image_bytes

__all__ = ["SPAVL", "BeaverTailsV", "ParquetFormat", "UnsafeBench"]


class ParquetFormat(DatasetFormat):
    """A format whose rows are parquet records with an embedded ``image``; subclasses implement :meth:`parse`."""

    extracts_images = True
    image_column: ClassVar[str] = "image"

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        files = parquet_files(src, split)
        if not files:
            raise DatasetError(f"no parquet files of split {split!r} under {src}")
        for path in files:
            for where, row in iter_parquet(path):
                image = None
                try:
                    stem = f"{split}_{path.stem}_{where.rsplit('#', 1)[-1]}"
                    image = save_image_bytes(row.get(self.image_column), images_out, stem, where)
                    yield from list(self.parse(where, row, image, split))
                except RecordError as err:
                    if image is not None:  # no row will point at it
                        Path(image).unlink(missing_ok=True)
                    yield err

    def parse(self, where: str, row: dict[str, Any], image: str, split: str) -> Iterator[SourceRecord]:
        """The records of one parquet row whose image was written to ``image`` (absolute path)."""
        raise NotImplementedError


def parquet_files(src: Path, split: str) -> list[Path]:
    """The parquet files of ``split`` under ``src``: in a folder named ``split`` or named ``split*``."""
    found = []
    for path in sorted(src.rglob("*.parquet")):
        parts = path.relative_to(src).parts[:-1]
        if split in parts or path.name.startswith(f"{split}-") or path.stem == split:
            found.append(path)
    return found


class SPAVL(ParquetFormat):
    """SPA-VL (Zhang et al., CVPR 2025): preference data, parquet with ``image``, ``question``, ``chosen``,
    ``rejected``, ``image_name``, ``class1``, ``class2``, ``class3`` (harm domain, category, subcategory).

    Files: ``data/train-0000N-of-00008.parquet``, ``validation/``, ``test/harm/`` and ``test/help/`` (as the
    card's file listing shows; the columns are from the paper and not checked). A row with answers gives two
    rows, a safe/unsafe answer pair on the same request: ``chosen`` labelled harmless and ``rejected``
    labelled harmful (at the request's mapped level and type). The labels come from the preference (the
    data set ranks its two answers for harmlessness first; it does not label each answer's harm), so a
    rejected answer that is merely less helpful is labelled harmful too; ``meta.preference`` says which one
    a row holds. A row without answers (the test questions) is request-only. Every question comes from a
    harm category; the level is 'caution' (the data set mixes harmful and harmless questions within a
    category and labels none as safe). Labels are written 'class1/class2/class3'; the table keys on
    ``class1``.
    """

    name = "spa-vl"
    title = "SPA-VL"
    source = "https://huggingface.co/datasets/sqrti/SPA-VL"
    splits = ("train", "validation", "test")
    labels = LabelTable(
        {
            "representation & toxicity harms": Target("caution", "insults"),
            "misinformation harms": Target("caution", "misleading"),
            "information & safety harms": Target("caution", "privacy"),
            "malicious use": Target("caution", "illegal"),
            "human autonomy & integrity harms": Target("caution", "privacy"),
            "socioeconomic harms": Target("caution", "fairness"),
        }
    )

    def parse(self, where: str, row: dict[str, Any], image: str, split: str) -> Iterator[SourceRecord]:
        request = self._request(where, row, image, split)
        answers = [(kind, field_of(row, kind, str, where, optional=True)) for kind in ("chosen", "rejected")]
        pairs = [(kind, text) for kind, text in answers if text]
        if not pairs:  # the test questions come without answers: request-only
            yield request
        for kind, text in pairs:
            yield _preference_row(request, kind, text)

    @staticmethod
    def _request(where: str, row: dict[str, Any], image: str, split: str) -> SourceRecord:
        classes = [field_of(row, f"class{i}", str, where, optional=i > 1) or "" for i in (1, 2, 3)]
        return SourceRecord(
            where=where,
            id=f"{split}:{where.rsplit('#', 1)[-1]}:{Path(where.split('#')[0]).stem}",
            images=(image,),
            prompt=field_of(row, "question", str, where),
            label="/".join(c for c in classes if c),
            key=classes[0],
            meta={"classes": classes},
        )


def _preference_row(request: SourceRecord, kind: str, text: str) -> SourceRecord:
    """``request`` with one of its ranked answers: 'chosen' labelled harmless, 'rejected' harmful."""
    return replace(
        request,
        id=f"{request.id}:{kind}",
        response=text,
        response_harmful=kind == "rejected",
        meta={**request.meta, "preference": kind},
    )


class BeaverTailsV(ParquetFormat):
    """BeaverTails-V (PKU-Alignment, 2025): one folder per harm category with parquet splits.

    Both schemas of the repository are read. The current one has one ``response`` per row, labelled by
    ``is_response_safe``; the earlier pairwise one has ``response_1``/``response_2`` labelled by
    ``is_response_1_safe``/``is_response_2_safe``, with ``safer_response_id`` ('1'/'2', a string): each
    answer becomes a row (a safe/unsafe pair on the same request; ``meta.safer`` marks the safer one). An
    answer labelled unsafe is harmful at the request's mapped level and type; one without a boolean flag is
    kept unlabelled. Splits: ``train`` and ``evaluation``, one config folder per category. Common columns:
    ``question``, ``image``, ``category``, ``image_severity`` (kept in ``meta``). The label is ``category``
    verbatim.
    """

    name = "beavertails-v"
    title = "BeaverTails-V"
    source = "https://huggingface.co/datasets/PKU-Alignment/BeaverTails-V"
    splits = ("train", "evaluation")
    verified = "card"
    labels = LabelTable(
        {
            "animal_abuse": Target("reject", "illegal"),
            "dangerous_behavior": Target("caution", "illegal"),
            "deception_in_personal_relationships": Target("caution", "misleading"),
            "discriminatory_depictions": Target("reject", "fairness"),
            "environmental_damage": Target("caution", "illegal"),
            "false_information": Target("caution", "misleading"),
            "financial_and_academic_fraud": Target("reject", "illegal"),
            "hacking_or_digital_crime": Target("reject", "illegal"),
            "harmful_health_content": Target("caution", "misleading"),
            "horror_and_gore": Target("caution", "illegal"),
            "identity_misuse_and_impersonation": Target("reject", "privacy"),
            "insulting_and_harassing_behavior": Target("reject", "insults"),
            "pornographic_content": Target("reject", "illegal"),
            "privacy_invasion_and_surveillance": Target("reject", "privacy"),
            "psychological_harm_and_manipulation": Target("caution", "insults"),
            "psychological_horror_and_dark_themes": Target("careful", "illegal"),
            "sensitive_information_in_key_areas": Target("caution", "politics"),
            "sexual_crimes": Target("reject", "illegal"),
            "terrorism_or_extremism": Target("reject", "illegal"),
            "violence_and_physical_harm": Target("reject", "illegal"),
        }
    )

    def parse(self, where: str, row: dict[str, Any], image: str, split: str) -> Iterator[SourceRecord]:
        category = field_of(row, "category", str, where)
        question = field_of(row, "question", str, where)
        rid = f"{category}:{split}:{where.rsplit('#', 1)[-1]}"
        if "response" in row:
            answers = [("", field_of(row, "response", str, where), row.get("is_response_safe"), {})]
        elif "response_1" in row:
            safer = row.get("safer_response_id")
            if safer not in (1, 2, "1", "2"):
                raise RecordError(f"wrong type: safer_response_id {safer!r} is not 1 or 2", where)
            answers = [
                (
                    f":{i}",
                    field_of(row, f"response_{i}", str, where),
                    row.get(f"is_response_{i}_safe"),
                    {"safer": str(safer) == str(i)},
                )
                for i in (1, 2)
            ]
        else:
            raise RecordError("missing key: 'response' (or 'response_1'/'response_2')", where)
        for suffix, text, safe, extra in answers:
            yield SourceRecord(
                where=where,
                id=rid + suffix,
                images=(image,),
                prompt=question,
                response=text,
                response_harmful=(not safe) if isinstance(safe, bool) else None,
                label=category,
                key=category,
                meta={"image_severity": row.get("image_severity"), "is_response_safe": safe, **extra},
            )


class UnsafeBench(ParquetFormat):
    """UnsafeBench (Qu et al., CCS 2025): parquet with ``image``, ``safety_label`` ('Safe'/'Unsafe'),
    ``category`` (11 kinds; every image has one, safe or not) and ``source`` ('Laion5B'/'Lexica').

    Image-only moderation: the request is a fixed one; a safe image is safe whatever its category. Labels
    are written 'safety_label/category'.
    """

    name = "unsafebench"
    title = "UnsafeBench"
    source = "https://huggingface.co/datasets/yiting/UnsafeBench"
    splits = ("train", "test")
    verified = "card"
    labels = LabelTable(
        {
            "safe": SAFE,
            "hate": Target("reject", "insults"),
            "harassment": Target("reject", "insults"),
            "violence": Target("reject", "illegal"),
            "self-harm": Target("reject", "illegal"),
            "sexual": Target("reject", "illegal"),
            "shocking": Target("caution", "illegal"),
            "illegal activity": Target("reject", "illegal"),
            "deception": Target("caution", "misleading"),
            "political": Target("caution", "politics"),
            "public and personal health": Target("careful", "misleading"),
            "spam": Target("careful", "misleading"),
        }
    )

    def parse(self, where: str, row: dict[str, Any], image: str, split: str) -> Iterator[SourceRecord]:
        safety = field_of(row, "safety_label", str, where)
        category = field_of(row, "category", str, where)
        yield SourceRecord(
            where=where,
            id=f"{split}:{where.rsplit('#', 1)[-1]}",
            images=(image,),
            prompt=MODERATION_PROMPT,
            label=f"{safety}/{category}",
            key="safe" if normalize(safety) == "safe" else category,
            meta={"source": row.get("source")},
        )
