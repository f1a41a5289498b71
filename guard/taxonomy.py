"""Risk levels and risk types: the concepts the safety head predicts.

The default label set is the paper's: four levels and seven types, with stable string codes (used in
policies, JSON and LangChain metadata) and a mapping of each type onto the MLCommons AILuminate v1.0
hazard codes. Custom label sets come from :class:`Taxonomy` in the guard config.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CODE_PATTERN", "DEFAULT_TAXONOMY", "RiskLevel", "RiskType", "Taxonomy"]

CODE_PATTERN = r"^[a-z][a-z0-9_]*$"
"""What a level, type or custom category code looks like: lowercase letters, digits and underscores."""


class RiskLevel(BaseModel):
    """One risk level; ids are the head's class indices and order by severity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0, description="Class index in the level head; higher is more severe.")
    code: str = Field(pattern=CODE_PATTERN, description="Stable machine name, e.g. 'reject'.")
    name: str = Field(description="Human-readable name, e.g. 'Reject'.")
    description: str = Field("", description="What the level means for the answer.")


class RiskType(BaseModel):
    """One risk type (concept) the type head predicts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0, description="Class index in the type head.")
    code: str = Field(pattern=CODE_PATTERN, description="Stable machine name, e.g. 'privacy'.")
    name: str = Field(description="Human-readable name, e.g. 'Privacy'.")
    concept: str = Field("", description="Noun phrase used in hints and refusals, e.g. 'personal privacy'.")
    mlcommons: tuple[str, ...] = Field((), description="MLCommons AILuminate v1.0 hazard codes it covers.")


class Taxonomy(BaseModel):
    """The label set of a safety head: ordered levels, types, and which type means 'no risk'."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: tuple[RiskLevel, ...] = Field(description="Risk levels, id 0 meaning safe to answer.")
    types: tuple[RiskType, ...] = Field(description="Risk types, including the safe type.")
    safe_type: str = Field(description="Code of the type that means no risk.")

    @model_validator(mode="after")
    def _check(self) -> Taxonomy:
        for kind, labels in (("levels", self.levels), ("types", self.types)):
            if len(labels) < 2:
                raise ValueError(f"{kind} needs at least two labels")
            if [label.id for label in labels] != list(range(len(labels))):
                raise ValueError(f"{kind} ids must be 0..{len(labels) - 1} in order")
            codes = [label.code for label in labels]
            if len(set(codes)) != len(codes):
                raise ValueError(f"{kind} codes must be unique, got {codes}")
        if self.safe_type not in {t.code for t in self.types}:
            raise ValueError(f"safe_type {self.safe_type!r} is not one of the type codes")
        return self

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def num_types(self) -> int:
        return len(self.types)

    @property
    def safe_type_id(self) -> int:
        return self.type_by_code(self.safe_type).id

    def type_by_code(self, code: str) -> RiskType:
        """Return the type with this code; raise ``KeyError`` naming the known codes otherwise."""
        for risk_type in self.types:
            if risk_type.code == code:
                return risk_type
        raise KeyError(f"unknown risk type {code!r}; known: {[t.code for t in self.types]}")

    def level_by_code(self, code: str) -> RiskLevel:
        """Return the level with this code; raise ``KeyError`` naming the known codes otherwise."""
        for level in self.levels:
            if level.code == code:
                return level
        raise KeyError(f"unknown risk level {code!r}; known: {[lv.code for lv in self.levels]}")


DEFAULT_TAXONOMY = Taxonomy(
    levels=(
        RiskLevel(id=0, code="safe", name="Safe to answer", description="No intervention."),
        RiskLevel(id=1, code="careful", name="Answer carefully", description="Answer with a caution hint."),
        RiskLevel(id=2, code="caution", name="Answer or reject", description="Answer cautiously or refuse."),
        RiskLevel(id=3, code="reject", name="Reject", description="Refuse to answer."),
    ),
    types=(
        RiskType(
            id=0,
            code="politics",
            name="Politics",
            concept="politically sensitive information",
            mlcommons=("spc_ele", "dfm"),
        ),
        RiskType(
            id=1,
            code="illegal",
            name="Illegal risk",
            concept="illegal content such as pornography or violence",
            mlcommons=("vcr", "ncr", "src", "cse", "iwp", "sxc_prn"),
        ),
        RiskType(
            id=2,
            code="insults",
            name="Insults & bullying",
            concept="cyberbullying, insults and hateful content",
            mlcommons=("hte", "dfm"),
        ),
        RiskType(id=3, code="fairness", name="Fairness", concept="prejudice and discrimination", mlcommons=("hte",)),
        RiskType(id=4, code="privacy", name="Privacy", concept="personal privacy", mlcommons=("prv",)),
        RiskType(
            id=5,
            code="misleading",
            name="Misleading",
            concept="false rumours or misleading content",
            mlcommons=("spc_hlt", "spc_fin", "spc_lgl", "dfm"),
        ),
        RiskType(id=6, code="safe", name="Safe", concept="no risk", mlcommons=()),
    ),
    safe_type="safe",
)
