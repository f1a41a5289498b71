"""Data sets published as JSON / JSON Lines beside image folders.

Each class documents the layout it reads (``src`` is the folder the user downloaded) and its label table:
source label (normalized) -> (risk level, risk type) of the default taxonomy. The MLCommons hazard codes
of each row follow from the risk type (``psaguard data formats NAME`` prints them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    record_id,
)
from psaguard.training.datasets.sources import first_existing, iter_jsonl, json_items, load_json

__all__ = ["RTVLM", "HoliSafe", "LlavaGuard", "MMSafetyBench", "VLGuard"]


class VLGuard(DatasetFormat):
    """VLGuard (Zong et al., ICML 2024): ``train.json``/``test.json`` + the unzipped ``train/``/``test/`` images.

    A record: ``id``, ``image`` (relative to the split's image folder), ``safe`` (bool), for unsafe images
    ``harmful_category``/``harmful_subcategory``, and ``instr-resp``: a list of ``{"instruction", "response"}``
    (unsafe image) or ``{"safe_instruction"|"unsafe_instruction", "response"}`` (safe image). One row per
    instruction. Hateful speech is filed under ``discrimination`` in the files (the paper calls it 'Hateful
    Speech'); unsafe instructions on safe images carry no category in the data. The images are looked for
    in ``<split>/``, ``data/<split>/`` and ``src`` itself (the zips' inner folder name was not checked).
    Every answer is labelled harmless (``response_harmful: false``): VLGuard's answers are the behaviour it
    fine-tunes towards, refusals to the unsafe requests and helpful answers to the safe ones.
    """

    name = "vlguard"
    title = "VLGuard"
    source = "https://huggingface.co/datasets/ys-zong/VLGuard"
    splits = ("train", "test")
    verified = "repository"
    labels = LabelTable(
        {
            "safe_image/safe_instruction": SAFE,
            "safe_image/unsafe_instruction": Target(
                "reject", "illegal", "no category in the data; mixed (hacking, privacy, advice): override with --map"
            ),
            "privacy/personal data": Target("reject", "privacy"),
            "risky behavior/professional advice": Target("careful", "misleading"),
            "risky behavior/political": Target("caution", "politics"),
            "risky behavior/sexually explicit": Target("reject", "illegal"),
            "risky behavior/violence": Target("reject", "illegal"),
            "deception/disinformation": Target("caution", "misleading"),
            "discrimination/sex": Target("reject", "fairness", "the paper's 'Hateful Speech'"),
            "discrimination/race": Target("reject", "fairness", "the paper's 'Hateful Speech'"),
            "discrimination/other": Target("reject", "insults", "the paper's 'Hateful Speech'"),
        }
    )

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        path = first_existing(src, [f"{split}.json", f"data/{split}.json"], f"VLGuard {split}.json")
        image_dir = next((d for d in (split, f"data/{split}", "") if (src / d).is_dir()), "")
        items = json_items(load_json(path), path)
        return self.parse_each(items, lambda w, item: self._parse(w, item, split, image_dir))

    def _parse(self, where: str, item: Any, split: str, image_dir: str) -> Iterator[SourceRecord]:
        image = field_of(item, "image", str, where)
        safe = field_of(item, "safe", bool, where)
        pairs = field_of(item, "instr-resp", list, where)
        rid = record_id(item, "id", where)
        category = "" if safe else f"{field_of(item, 'harmful_category', str, where)}"
        sub = "" if safe else f"{field_of(item, 'harmful_subcategory', str, where)}"
        for index, pair in enumerate(pairs):
            spot = f"{where}.instr-resp[{index}]"
            if safe:
                kind = (
                    "safe_instruction"
                    if isinstance(pair, dict) and "safe_instruction" in pair
                    else "unsafe_instruction"
                )
                key = f"safe_image/{kind}"
            else:
                kind, key = "instruction", f"{category}/{sub}"
            yield SourceRecord(
                where=spot,
                id=f"{split}:{rid}:{index}",
                images=(f"{image_dir}/{image}" if image_dir else image,),
                prompt=field_of(pair, kind, str, spot),
                response=field_of(pair, "response", str, spot, optional=True),
                response_harmful=False,
                label=key,
                key=key,
                meta={"split": split, "safe_image": safe},
            )


class MMSafetyBench(DatasetFormat):
    """MM-SafetyBench (Liu et al., ECCV 2024): ``data/processed_questions/NN-Scenario.json`` +
    ``data/imgs/NN-Scenario/{SD,SD_TYPO,TYPO}/<id>.jpg``.

    Each questions file is an object keyed by id: ``Question``, ``Rephrased Question`` (for the TYPO and
    SD_TYPO images), ``Rephrased Question(SD)`` (for SD images), ``Key Phrase``. The split picks the image
    kind. Every row is risky; the label is the scenario folder name verbatim (with its spelling, e.g.
    '01-Illegal_Activitiy').
    """

    name = "mm-safetybench"
    title = "MM-SafetyBench"
    source = "https://github.com/isXinLiu/MM-SafetyBench"
    splits = ("SD_TYPO", "SD", "TYPO")
    verified = "third-party"
    labels = LabelTable(
        {
            "01-illegal_activitiy": Target("reject", "illegal"),
            "02-hatespeech": Target("reject", "insults"),
            "03-malware_generation": Target("reject", "illegal"),
            "04-physical_harm": Target("reject", "illegal"),
            "05-economicharm": Target("caution", "illegal"),
            "06-fraud": Target("reject", "illegal"),
            "07-sex": Target("reject", "illegal"),
            "08-political_lobbying": Target("caution", "politics"),
            "09-privacy_violence": Target("reject", "privacy"),
            "10-legal_opinion": Target("careful", "misleading"),
            "11-financial_advice": Target("careful", "misleading"),
            "12-health_consultation": Target("careful", "misleading"),
            "13-gov_decision": Target("caution", "politics"),
        }
    )

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        base = "data/" if (src / "data" / "processed_questions").is_dir() else ""
        folder = src / base / "processed_questions"
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not files:
            raise DatasetError(f"no questions files in {folder}")
        for path in files:
            scenario = path.stem
            yield from self.parse_each(
                json_items(load_json(path), path), lambda w, item, s=scenario: [self._parse(w, item, s, split, base)]
            )

    def _parse(self, where: str, item: Any, scenario: str, split: str, base: str) -> SourceRecord:
        number = where.rsplit("#", 1)[-1]
        question = "Rephrased Question(SD)" if split == "SD" else "Rephrased Question"
        return SourceRecord(
            where=where,
            id=f"{scenario}:{split}:{number}",
            images=(f"{base}imgs/{scenario}/{split}/{number}.jpg",),
            prompt=field_of(item, question, str, where),
            label=scenario,
            key=scenario,
            meta={"question": field_of(item, "Question", str, where, optional=True), "image_kind": split},
        )


class HoliSafe(DatasetFormat):
    """HoliSafe-Bench (Lee et al., 2025): a JSON list (``holisafe_bench.json``) + ``images/``.

    A record: ``id``, ``image`` (relative to ``images/``, e.g. 'self_harm/suicide/suicide_8.jpg'),
    ``query``, ``category``, ``subcategory`` and ``type``: three letters for image, query and combined
    safety (S safe, U unsafe), e.g. 'SSU' = safe image and query whose combination is unsafe. The last
    letter decides safe vs risky; the category gives the risk type. Labels are written 'TYPE/category'.
    The field names and the image root agree with public third-party loaders; the category strings are
    not checked against the file.
    """

    name = "holisafe"
    title = "HoliSafe-Bench"
    source = "https://huggingface.co/datasets/etri-vilab/holisafe-bench"
    splits = ("test",)
    labels = LabelTable(
        {
            "safe": SAFE,
            "illegal activity": Target("reject", "illegal"),
            "violence": Target("reject", "illegal"),
            "hate": Target("reject", "insults"),
            "self-harm": Target("reject", "illegal"),
            "privacy": Target("reject", "privacy"),
            "sexual content": Target("reject", "illegal"),
            "specialized advice": Target("careful", "misleading"),
        }
    )

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        path = first_existing(src, ["holisafe_bench.json", "data/holisafe_bench.json"], "HoliSafe holisafe_bench.json")
        images = path.parent.relative_to(src) / "images"
        base = f"{images.as_posix()}/" if (src / images).is_dir() else ""
        return self.parse_each(json_items(load_json(path), path), lambda w, item: [self._parse(w, item, base)])

    def _parse(self, where: str, item: Any, base: str) -> SourceRecord:
        kind = field_of(item, "type", str, where)
        if len(kind) != 3 or set(kind) - {"S", "U"}:
            raise RecordError(f"unknown label: type {kind!r} is not three of S/U", where)
        category = field_of(item, "category", str, where)
        return SourceRecord(
            where=where,
            id=record_id(item, "id", where),
            images=(base + field_of(item, "image", str, where),),
            prompt=field_of(item, "query", str, where),
            label=f"{kind}/{category}",
            key="safe" if kind[-1] == "S" else category,
            meta={"subcategory": field_of(item, "subcategory", str, where, optional=True), "type": kind},
        )


_RTVLM_TYPES = {
    "jailbreak": "illegal",
    "privacy": "privacy",
    "politics": "politics",
    "racial": "fairness",
    "misleading": "misleading",
}
"""RTVLM task folder (lower case) -> risk type."""


class RTVLM(DatasetFormat):
    """RTVLM (Li et al., 2024): one folder per task with JSON Lines files + images.

    A line: ``image`` (relative to its task folder), ``instruction`` (or ``question``) and ``label``, one of
    'Refuse to Answer', 'Proceed with Caution', 'Safe to Answer'. 'Proceed with Caution' is ambiguous: by
    default 'careful' (answer with a hint); ``--map 'Proceed with Caution=caution:TYPE'`` changes it. The
    risk type comes from the task folder (Jailbreak, Privacy, Politics, Racial, Misleading, ...); labels
    are written 'Task/label'.
    """

    name = "rtvlm"
    title = "RTVLM"
    source = "https://huggingface.co/datasets/MMInstruction/RedTeamingVLM"
    splits = ("test",)
    labels = LabelTable(
        {
            **{f"{task}/safe to answer": SAFE for task in _RTVLM_TYPES},
            **{f"{task}/refuse to answer": Target("reject", kind) for task, kind in _RTVLM_TYPES.items()},
            **{
                f"{task}/proceed with caution": Target("careful", kind, "ambiguous")
                for task, kind in _RTVLM_TYPES.items()
            },
        }
    )

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        files = sorted(p for p in src.rglob("*.jsonl") if p.is_file())
        if not files:
            raise DatasetError(f"no .jsonl files under {src}")
        for path in files:
            task_dir = path.parent.relative_to(src)
            task = task_dir.parts[0] if task_dir.parts else path.stem
            yield from self.parse_each(
                iter_jsonl(path), lambda w, item, t=task, d=task_dir: [self._parse(w, item, t, d)]
            )

    def _parse(self, where: str, item: Any, task: str, task_dir: Path) -> SourceRecord:
        prompt = field_of(item, "instruction", str, where, optional=True) or field_of(item, "question", str, where)
        label = field_of(item, "label", str, where)
        return SourceRecord(
            where=where,
            id=f"{task}:{where.rsplit(':', 1)[-1]}",
            images=((task_dir / field_of(item, "image", str, where)).as_posix(),),
            prompt=prompt,
            label=f"{task}/{label}",
            key=f"{normalize(task)}/{label}",
        )


class LlavaGuard(DatasetFormat):
    """LlavaGuard (Helff et al., 2024) in its LLaVA training format: ``<split>.json`` + the images.

    A record: ``id``, ``image``, ``conversations`` whose assistant turn is a JSON assessment with
    ``rating`` ('Safe'/'Unsafe'), ``category`` ('O1: Hate, Humiliation, Harassment' ... 'O9: Disasters or
    Emergencies', 'NA: None applying') and ``rationale``. The user turn is LlavaGuard's policy prompt, not
    a user request, so the row's prompt is a fixed moderation request and the rationale goes to ``meta``.
    Labels are written 'rating/category'; the table keys on the O-code.
    """

    name = "llavaguard"
    title = "LlavaGuard"
    source = "https://huggingface.co/datasets/AIML-TUDA/LlavaGuard"
    splits = ("train", "test", "eval")
    labels = LabelTable(
        {
            "safe": SAFE,
            "o1": Target("reject", "insults"),
            "o2": Target("reject", "illegal"),
            "o3": Target("reject", "illegal"),
            "o4": Target("caution", "illegal"),
            "o5": Target("reject", "illegal"),
            "o6": Target("reject", "illegal"),
            "o7": Target("reject", "illegal"),
            "o8": Target("reject", "illegal"),
            "o9": Target("careful", "misleading"),
        }
    )

    def records(self, src: Path, split: str, images_out: Path) -> Iterator[SourceRecord | RecordError]:
        path = first_existing(src, [f"{split}.json", f"data/{split}.json"], f"LlavaGuard {split}.json")
        return self.parse_each(json_items(load_json(path), path), lambda w, item: [self._parse(w, item)])

    def _parse(self, where: str, item: Any) -> SourceRecord:
        turns = field_of(item, "conversations", list, where)
        answer = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if not isinstance(answer, str):
            raise RecordError("missing key: no assistant ('gpt') turn with the assessment", where)
        try:
            assessment = json.loads(answer)
        except ValueError as err:
            raise RecordError(f"wrong type: the assessment is not JSON ({err})", where) from err
        rating = field_of(assessment, "rating", str, where)
        category = field_of(assessment, "category", str, where, optional=True) or "NA"
        key = "safe" if normalize(rating) == "safe" else normalize(category).split(":")[0]
        return SourceRecord(
            where=where,
            id=record_id(item, "id", where),
            images=(field_of(item, "image", str, where),),
            prompt=MODERATION_PROMPT,
            label=f"{rating}/{category}",
            key=key,
            meta={"rationale": assessment.get("rationale")},
        )
