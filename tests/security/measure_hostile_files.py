"""Worst CPU time and peak memory of ``load_image`` on each hostile file, each in a fresh process.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/security/measure_hostile_files.py [--formats ALL] [--timeout 120]

Prints one line per file: outcome, CPU seconds and the peak resident memory the load added (MiB; Linux).
``--formats ALL`` also allows the opt-in formats (BMP, TIFF, PPM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from hostile_files import AT_THE_CAPS, HOSTILE_FILES

# Peak memory: the kernel's high-water mark is reset (clear_refs 5) just before the load, then VmHWM - VmRSS.
_CHILD = r"""
import json, sys, time
from psaguard.errors import PsaGuardError
from psaguard.images.decode import ALLOWED_FORMATS, OPT_IN_FORMATS, load_image
formats = ALLOWED_FORMATS + OPT_IN_FORMATS if sys.argv[2] == "ALL" else ALLOWED_FORMATS
def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS:")
cpu = time.process_time()
try:
    load_image(sys.argv[1], formats=formats)
    outcome = "accepted"
except PsaGuardError as err:
    outcome = f"refused: {type(err).__name__}: {str(err)[:90]}"
cpu = time.process_time() - cpu
after = status("VmHWM:")
print(json.dumps({"outcome": outcome, "cpu_s": round(cpu, 3), "peak_mib": round((after - before) / 1024, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--formats", default="DEFAULT", choices=["DEFAULT", "ALL"])
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    worst_cpu = worst_mem = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in {**HOSTILE_FILES, **AT_THE_CAPS}.items():
            path = Path(tmp) / name
            path.write_bytes(build())
            try:
                done = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(path), args.formats],
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    check=True,
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                result = {"outcome": f"still running after {args.timeout:g} s", "cpu_s": args.timeout, "peak_mib": 0}
            worst_cpu, worst_mem = max(worst_cpu, result["cpu_s"]), max(worst_mem, result["peak_mib"])
            size = path.stat().st_size / 1024
            cost = f"{result['cpu_s']:7.3f} s  {result['peak_mib']:7.1f} MiB"
            print(f"{name:30s} {size:9.0f} KiB  {cost}  {result['outcome']}")
            path.unlink()
    print(f"worst: {worst_cpu:.3f} s CPU, {worst_mem:.1f} MiB peak")


if __name__ == "__main__":
    main()
