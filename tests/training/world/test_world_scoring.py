from __future__ import annotations

from PIL import Image

from psaguard import GuardPolicy, TypeRule
from psaguard.training.world.build import read_rows
from psaguard.training.world.scoring import threshold_sweep


def _policy(threshold: float) -> GuardPolicy:
    return GuardPolicy(default_rule=TypeRule(threshold=threshold))


def test_threshold_sweep_is_what_the_policy_does_at_each_threshold(guard, small_world):
    rows = read_rows(small_world, "test")[:48]
    thresholds = (0.2, 0.5, 0.8)
    points = threshold_sweep(guard, rows, small_world, thresholds, batch_size=16)
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
