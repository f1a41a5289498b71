"""benchmarks/serve_batching.py runs at tiny shapes and prints both modes side by side (no timing asserted)."""

from __future__ import annotations

import pytest
from script_runner import run_script

pytestmark = pytest.mark.slow  # a server and its clients in fresh processes (~16 s): `make test-slow` runs it


def test_serve_batching_prints_batching_off_and_on_per_client_count() -> None:
    out = run_script(
        "benchmarks",
        "serve_batching.py",
        "--clients",
        "1",
        "4",
        "--requests",
        "8",
        "--per-client",
        "2",
        "--rounds",
        "1",
    )
    rows = [line.split("|") for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(row[0]) for row in rows] == [1, 4]
    for row in rows:
        throughput = [float(x) for x in row[1].split()]
        assert len(throughput) == 3 and all(x > 0 for x in throughput)
        assert float(row[4]) >= 1.0  # mean batch with batching on
