import pytest
from pydantic import ValidationError

from psaguard import DEFAULT_TAXONOMY, GuardPolicy, TypeRule, decide
from psaguard.policy import error_verdict

SAFE_LEVEL = [0.9, 0.05, 0.03, 0.02]
REJECT_LEVEL = [0.02, 0.03, 0.05, 0.9]
CAREFUL_LEVEL = [0.2, 0.6, 0.1, 0.1]


def _types(code: str, p: float = 0.9) -> list[float]:
    probs = [(1 - p) / 6] * 7
    probs[DEFAULT_TAXONOMY.type_by_code(code).id] = p
    return probs


def test_safe_type_or_level_zero_allows_as_in_the_paper():
    assert decide(REJECT_LEVEL, _types("safe"), GuardPolicy()).action == "allow"
    verdict = decide(SAFE_LEVEL, _types("privacy"), GuardPolicy())
    assert (verdict.action, verdict.rule, verdict.flagged) == ("allow", "safe_level", False)


def test_levels_map_to_default_actions_with_type_specific_text():
    hinted = decide(CAREFUL_LEVEL, _types("privacy"), GuardPolicy())
    assert hinted.action == "hint" and "personal privacy" in hinted.hint and hinted.flagged
    assert hinted.rule == "type:privacy/level:careful"
    refused = decide(REJECT_LEVEL, _types("politics"), GuardPolicy())
    assert refused.action == "refuse" and "politically sensitive" in refused.refusal and refused.hint is None


def test_level_is_the_highest_with_enough_tail_probability():
    # P(level>=3)=0.3, P(level>=2)=0.6: at threshold 0.5 the level is 2; at 0.25 it is 3.
    probs = [0.3, 0.1, 0.3, 0.3]
    assert decide(probs, _types("illegal"), GuardPolicy()).level.id == 2
    strict = GuardPolicy(types={"illegal": TypeRule(threshold=0.25)})
    assert decide(probs, _types("illegal"), strict).level.id == 3


def test_type_rules_disable_raise_min_level_and_override_actions():
    policy = GuardPolicy(
        types={
            "illegal": TypeRule(enabled=False),
            "misleading": TypeRule(min_level=3),
            "privacy": TypeRule(actions={1: "block"}, refusal="No {concept} here."),
        }
    )
    assert decide(REJECT_LEVEL, _types("illegal"), policy).rule == "type:illegal/disabled"
    assert decide(CAREFUL_LEVEL, _types("misleading"), policy).action == "allow"
    blocked = decide(CAREFUL_LEVEL, _types("privacy"), policy)
    assert blocked.action == "block" and blocked.refusal == "No personal privacy here."


def test_verdict_round_trips_through_json():
    verdict = decide(CAREFUL_LEVEL, _types("fairness"), GuardPolicy(), latency_ms=3.5)
    data = verdict.model_dump_json()
    assert type(verdict).model_validate_json(data.replace(',"flagged":true', "")) == verdict
    assert '"flagged":true' in data


def test_policy_validation_names_the_problem():
    with pytest.raises(ValidationError, match="bogus"):
        GuardPolicy(bogus=1)
    with pytest.raises(ValidationError, match="concept"):
        GuardPolicy(refusal="I refuse {reason}")
    with pytest.raises(ValidationError):
        TypeRule(threshold=1.5)
    with pytest.raises(ValueError, match="unknown risk types"):
        GuardPolicy(types={"nsfw": TypeRule()}).validate_against(DEFAULT_TAXONOMY)
    with pytest.raises(ValueError, match="level ids"):
        GuardPolicy(level_actions={1: "hint", 2: "hint", 3: "refuse", 7: "block"}).validate_against(DEFAULT_TAXONOMY)


def test_error_verdict_follows_on_error():
    refuse = error_verdict("bad image", GuardPolicy(on_error="refuse"))
    assert refuse.action == "refuse" and refuse.error == "bad image" and refuse.refusal
    assert error_verdict("bad image", GuardPolicy(on_error="allow")).action == "allow"


def test_wrong_probability_lengths_are_rejected():
    with pytest.raises(ValueError, match="taxonomy"):
        decide([0.5, 0.5], _types("safe"), GuardPolicy())
