import pytest
from pydantic import ValidationError

from psaguard import DEFAULT_TAXONOMY, RiskLevel, RiskType, Taxonomy


def test_default_taxonomy_is_the_papers():
    assert [lv.name for lv in DEFAULT_TAXONOMY.levels] == [
        "Safe to answer",
        "Answer carefully",
        "Answer or reject",
        "Reject",
    ]
    assert [t.code for t in DEFAULT_TAXONOMY.types] == [
        "politics",
        "illegal",
        "insults",
        "fairness",
        "privacy",
        "misleading",
        "safe",
    ]
    assert DEFAULT_TAXONOMY.safe_type_id == 6
    assert DEFAULT_TAXONOMY.type_by_code("privacy").mlcommons == ("prv",)


def test_custom_label_sets_are_checked():
    levels = (RiskLevel(id=0, code="ok", name="OK"), RiskLevel(id=1, code="bad", name="Bad"))
    types = (RiskType(id=0, code="spam", name="Spam"), RiskType(id=1, code="clean", name="Clean"))
    assert Taxonomy(levels=levels, types=types, safe_type="clean").num_types == 2
    with pytest.raises(ValidationError, match="safe_type"):
        Taxonomy(levels=levels, types=types, safe_type="none")
    with pytest.raises(ValidationError, match="ids"):
        Taxonomy(levels=levels[::-1], types=types, safe_type="clean")
    with pytest.raises(KeyError, match="known"):
        DEFAULT_TAXONOMY.type_by_code("nsfw")
