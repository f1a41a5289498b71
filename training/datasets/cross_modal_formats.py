"""Benchmarks whose risk lies in the situation an image sets: the text alone is harmless.

SIUO pairs a safe image with a safe question whose combination is unsafe; MSSBench asks the same question
next to a safe and an unsafe situation; VLSBench keeps the harm in the image and the instruction neutral.
Each class documents the layout it reads (``src`` is the folder the user downloaded) and its label table,
as in :mod:`psaguard.training.datasets.json_formats`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psaguard.errors import DatasetError
from psaguard.training.datasets.base import (
    SAFE,
    DatasetFormat,
    LabelTable,
    RecordError,
    SourceRecord,
    Target,
    field_of,
    record_id,
)
from psaguard.training.datasets.sources import first_existing, json_items, load_json

__all__ = ["SIUO", "MSSBench", "VLSBench"]


class SIUO(DatasetFormat):
    """SIUO (Wang et al., NAACL 2025): ``siuo_gen.json`` (or ``data/siuo_gen.json``) + ``images/``.

    A record: ``question_id``, ``image`` (file name), ``question``, ``category``, ``safety_warning``,
    ``reference_answer``. Every pair is safe image + safe text whose combination is unsafe, so every row
    is risky. The public file holds 167 items (the paper reports 269). ``reference_answer`` is not used as
    the response: several are the unsafe answers the benchmark warns about (it is kept in ``meta``). The
    images (not in the repository) are looked for in ``images/``, ``data/images/`` and ``src``.
    """

    name = "siuo"
    title = "SIUO"
    source = "https://github.com/sinwang20/SIUO (images: https://huggingface.co/datasets/sinwang/SIUO)"
    splits = ("gen",)
    verified = "repository"
    labels = LabelTable(
        {
            "self-harm": Target("reject", "illegal"),
            "dangerous behavior": Target("caution", "illegal"),
            "morality": Target("caution", "fairness"),
            "illegal activities & crime": Target("reject", "illegal"),
            "controversial topics, politics": Target("caution", "politics"),
            "discrimination & stereotyping": Target("reject", "fairness"),
            "information misinterpretation": Target("caution", "misleading"),
            "privacy violation": Target("reject", "privacy"),
            "religion beliefs": Target("caution", "fairness"),
        }
    )

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        path = first_existing(src, ["siuo_gen.json", "data/siuo_gen.json"], "SIUO siuo_gen.json")
        image_dir = next((d for d in ("images", "data/images", "") if (src / d).is_dir()), "")
        return self.parse_each(json_items(load_json(path), path), lambda w, item: [self._parse(w, item, image_dir)])

    def _parse(self, where: str, item: Any, image_dir: str) -> SourceRecord:
        image = field_of(item, "image", str, where)
        label = field_of(item, "category", str, where)
        return SourceRecord(
            where=where,
            id=record_id(item, "question_id", where),
            images=(f"{image_dir}/{image}" if image_dir else image,),
            prompt=field_of(item, "question", str, where),
            label=label,
            key=label,
            meta={
                "safety_warning": field_of(item, "safety_warning", str, where, optional=True),
                "reference_answer": field_of(item, "reference_answer", str, where, optional=True),
            },
        )


class MSSBench(DatasetFormat):
    """MSSBench (Zhou et al., 2024): ``combine.json`` + ``chat/`` and ``embodied/`` image folders.

    ``combine.json`` is ``{"chat": [...], "embodied": [...]}``. A chat item: ``safe_image_path``,
    ``unsafe_image_path``, ``queries`` (list) and ``intent``; each query gives two rows, one on the safe
    image (safe) and one on the unsafe image (risky). An embodied item: ``safe``, ``unsafe`` (images),
    ``safe_instructions``, ``unsafe_instructions`` (paired lists). The data carries no risk category; the
    unsafe situations are mostly physical harm (mapped to 'illegal': violence and harm).
    """

    name = "mssbench"
    title = "MSSBench"
    source = "https://huggingface.co/datasets/kzhou35/mssbench"
    splits = ("chat", "embodied")
    verified = "loader"
    labels = LabelTable(
        {
            "chat/safe": SAFE,
            "chat/unsafe": Target("caution", "illegal", "no category in the data; mostly physical harm"),
            "embodied/safe": SAFE,
            "embodied/unsafe": Target("caution", "illegal", "no category in the data; mostly physical harm"),
        }
    )

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        path = first_existing(src, ["combine.json", "data/combine.json"], "MSSBench combine.json")
        doc = load_json(path)
        if not isinstance(doc, dict) or not isinstance(doc.get(split), list):
            raise DatasetError(f"expected an object with a list under {split!r}", str(path))
        parse = self._chat if split == "chat" else self._embodied
        items = [(f"{path}#{split}[{i}]", item) for i, item in enumerate(doc[split])]
        return self.parse_each(items, parse)

    def _chat(self, where: str, item: Any) -> Iterator[SourceRecord]:
        safe, unsafe = (f"chat/{field_of(item, k, str, where)}" for k in ("safe_image_path", "unsafe_image_path"))
        for index, query in enumerate(field_of(item, "queries", list, where)):
            if not isinstance(query, str) or not query.strip():
                raise RecordError(f"wrong type: queries[{index}] should be a non-empty string", where)
            for kind, image in (("safe", safe), ("unsafe", unsafe)):
                yield self._record(where, f"chat:{where.rsplit('[', 1)[-1][:-1]}:{index}:{kind}", image, query, kind)

    def _embodied(self, where: str, item: Any) -> Iterator[SourceRecord]:
        images = {k: f"embodied/{field_of(item, k, str, where)}" for k in ("safe", "unsafe")}
        safe_list = field_of(item, "safe_instructions", list, where)
        unsafe_list = field_of(item, "unsafe_instructions", list, where)
        number = where.rsplit("[", 1)[-1][:-1]
        for index, (safe, unsafe) in enumerate(zip(safe_list, unsafe_list)):
            for kind, text in (("safe", safe), ("unsafe", unsafe)):
                if not isinstance(text, str) or not text.strip():
                    raise RecordError(f"wrong type: {kind}_instructions[{index}] should be a non-empty string", where)
                yield self._record(where, f"embodied:{number}:{index}:{kind}", images[kind], text, kind)

    def _record(self, where: str, rid: str, image: str, prompt: str, kind: str) -> SourceRecord:
        split = rid.split(":")[0]
        return SourceRecord(where=where, id=rid, images=(image,), prompt=prompt, label=kind, key=f"{split}/{kind}")


class VLSBench(DatasetFormat):
    """VLSBench (Hu et al., 2024): ``data.json`` (or ``data/data.json``) + ``imgs/``.

    A record: ``instruction_id``, ``instruction``, ``image_path`` (e.g. ``imgs/0.png``), ``category``,
    ``sub_category``, ``source``. Every pair is risky (the image carries the harm, the text is neutral).
    """

    name = "vlsbench"
    title = "VLSBench"
    source = "https://huggingface.co/datasets/Foreshhh/vlsbench"
    splits = ("test",)
    verified = "repository"
    labels = LabelTable(
        {
            "illegal activity": Target("reject", "illegal"),
            "violent": Target("reject", "illegal"),
            "privacy": Target("reject", "privacy"),
            "self-harm": Target("reject", "illegal"),
            "erotic": Target("reject", "illegal"),
            "hate": Target("reject", "insults"),
        }
    )

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        path = first_existing(src, ["data.json", "data/data.json"], "VLSBench data.json")
        base = "data/" if path.parent != src else ""
        return self.parse_each(json_items(load_json(path), path), lambda w, item: [self._parse(w, item, base)])

    def _parse(self, where: str, item: Any, base: str) -> SourceRecord:
        label = field_of(item, "category", str, where)
        return SourceRecord(
            where=where,
            id=record_id(item, "instruction_id", where),
            images=(base + field_of(item, "image_path", str, where),),
            prompt=field_of(item, "instruction", str, where),
            label=label,
            key=label,
            meta={
                "sub_category": field_of(item, "sub_category", str, where, optional=True),
                "safety_reason": field_of(item, "safety_reason", str, where, optional=True),
            },
        )
