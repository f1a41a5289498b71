"""psaguard errors become OpenAI-shaped HTTP errors: blocked requests and blocked answers are 400s with the verdict."""

from __future__ import annotations

from psaguard.errors import ResponseBlocked
from psaguard.responses.policy import ResponsePolicy, response_error_verdict
from psaguard.serving.protocol import api_error_from


def test_an_answer_blocked_by_the_response_policy_is_a_content_policy_violation_with_its_verdict():
    verdict = response_error_verdict("the guard could not judge", "refuse", ResponsePolicy())
    error = api_error_from(ResponseBlocked(verdict))
    assert (error.status, error.code) == (400, "content_policy_violation")
    assert error.extra["psaguard_response"] == verdict.model_dump(mode="json")
