"""Hypothesis profiles of the security suite: 'ci' (default, bounded) and 'long' (PSAGUARD_FUZZ=long).

Profiles are registered under psaguard-specific names and applied per test with ``fuzz_settings``, so
other suites' hypothesis settings are left alone.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": timedelta(seconds=5),  # a single case taking this long is a hang, not slowness
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile("psaguard-ci", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("psaguard-long", max_examples=3000, **_COMMON)
