"""Run every benchmark, small (`--quick`, about four minutes) or at full scale,
and print their figures. Exits non-zero if any benchmark failed to run (a missed
target is a figure, not a failure), or if `endurance.py` saw etcd or the server grow
beyond its bounds (that is its verdict).

    .venv/bin/python bench/run_all.py --quick
    .venv/bin/python bench/run_all.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "scheduler.py",
    "deploy.py",
    "api_latency.py",
    "memory.py",
    "failover.py",
    "hostile_input.py",
    "scale.py",
    "endurance.py",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    failed = []
    for bench in BENCHES:
        cmd = [sys.executable, str(HERE / bench), *(["--quick"] if args.quick else [])]
        print(f"== {bench}{' --quick' if args.quick else ''}", flush=True)
        started = time.monotonic()
        result = subprocess.run(cmd, check=False)
        print(f"== {bench}: exit {result.returncode}, {time.monotonic() - started:.1f} s\n")
        if result.returncode != 0:
            failed.append(bench)
    if failed:
        print(f"failed: {', '.join(failed)}")
        raise SystemExit(1)
    print(f"all {len(BENCHES)} benchmarks ran")


if __name__ == "__main__":
    main()
