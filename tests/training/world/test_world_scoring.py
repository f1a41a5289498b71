from __future__ import annotations

from PIL import Image

from psaguard import GuardPolicy, TypeRule
from psaguard.training.data import read_jsonl
from psaguard.training.evaluate import evaluate_guard
from psaguard.training.world.build import read_rows


def _policy(threshold: float) -> GuardPolicy:
    return GuardPolicy(default_rule=TypeRule(threshold=threshold))


def test_the_eval_sweep_is_what_the_policy_does_on_unsafe_world_rows(guard, small_world):
    """The world reports ``psaguard eval``'s sweep: on world rows, its risky rows are the unsafe ones."""
    rows = read_rows(small_world, "test")[:48]
    examples = read_jsonl(small_world / "test.jsonl")[0][:48]
    assert [e.id for e in examples] == [r.id for r in rows]
    thresholds = (0.2, 0.5, 0.8)
    points = evaluate_guard(guard, examples, thresholds=thresholds).threshold_sweep
    images = [Image.open(small_world / r.image).convert("RGB") for r in rows]
    for point, t in zip(points, thresholds):
        verdicts = guard.with_policy(_policy(t)).classify_batch(images, [r.prompt for r in rows])
        flagged = [v.action != "allow" for v in verdicts]
        unsafe = [f for f, r in zip(flagged, rows) if r.safe_level > 0]
        safe = [f for f, r in zip(flagged, rows) if r.safe_level == 0]
        assert point.threshold == t
        assert point.flagged_unsafe == sum(unsafe) / len(unsafe)
        assert point.flagged_safe == sum(safe) / len(safe)
    # A higher threshold never flags more.
    assert [p.flagged_safe for p in points] == sorted((p.flagged_safe for p in points), reverse=True)
    assert [p.flagged_unsafe for p in points] == sorted((p.flagged_unsafe for p in points), reverse=True)
