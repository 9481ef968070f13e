"""Run every benchmark, small (`--quick`, about four minutes) or at full scale,
and print their figures. Exits non-zero if any benchmark failed to run (a missed
target is a figure, not a failure: `endurance.py`'s exit 3, etcd or the server grown
beyond its bounds, is listed as missed).

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
ENDURANCE_GREW = 3  # bench/endurance.py's GREW: a verdict, not a failure to run
BENCHES = [
    "scheduler.py",
    "deploy.py",
    "api_latency.py",
    "memory.py",
    "failover.py",
    "hostile_input.py",
    "evidence.py",
    "scale.py",
    "endurance.py",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    failed, missed = [], []
    for bench in BENCHES:
        cmd = [sys.executable, str(HERE / bench), *(["--quick"] if args.quick else [])]
        print(f"== {bench}{' --quick' if args.quick else ''}", flush=True)
        started = time.monotonic()
        result = subprocess.run(cmd, check=False)
        print(f"== {bench}: exit {result.returncode}, {time.monotonic() - started:.1f} s\n")
        if bench == "endurance.py" and result.returncode == ENDURANCE_GREW:
            missed.append(bench)
        elif result.returncode != 0:
            failed.append(bench)
    if missed:
        print(f"bounds exceeded: {', '.join(missed)}")
    if failed:
        print(f"failed: {', '.join(failed)}")
        raise SystemExit(1)
    print(f"all {len(BENCHES)} benchmarks ran")


if __name__ == "__main__":
    main()
