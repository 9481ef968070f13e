"""`federation up` as a user runs it: a real process tree, stopped by Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from federation.processes.children import free_port

EXPECTED = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US", "ap-in-1": "IN"}


def descendants(pid: int) -> set[int]:
    """Every live process whose ancestry leads to `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    still = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            still.add(pid)
    return still


@pytest.mark.slow
def test_up_starts_four_ready_regions_and_sigint_leaves_nothing(tmp_path: Path) -> None:
    port = free_port()
    token = "fed_e2e-" + os.urandom(16).hex()  # FEDERATION_ADMIN_TOKEN: 32 characters or more
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "federation",
            "up",
            f"--port={port}",
            f"--data-dir={tmp_path / 'data'}",
            "--region-ttl=3",
        ],
        cwd=tmp_path,
        env={**os.environ, "FEDERATION_ADMIN_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    children: set[int] = set()
    try:
        regions: dict[str, tuple[str, str]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children |= descendants(proc.pid)
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/regions",
                    headers={"Authorization": f"Bearer {token}"},
                )
                with urllib.request.urlopen(req, timeout=1) as resp:
                    items = json.loads(resp.read())["items"]
                regions = {i["name"]: (i["country"], i["state"]) for i in items}
                if len(regions) == 4 and all(s == "ready" for _, s in regions.values()):
                    break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        assert {n: c for n, (c, _) in regions.items()} == EXPECTED
        assert all(state == "ready" for _, state in regions.values()), regions
        children |= descendants(proc.pid)
        assert len(children) >= 6  # etcd, server, four agents
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        text = out.decode()
        assert f"http://127.0.0.1:{port}" in text
        assert token in text  # `up` prints the admin token it uses
        # The key that signs audit checkpoints: made by `up`, readable by its owner only.
        assert (tmp_path / "data" / "audit.key").stat().st_mode & 0o777 == 0o600
        time.sleep(0.2)
        assert alive(children) == set(), "processes of `federation up` survived SIGINT"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in alive(children):
            os.kill(pid, signal.SIGKILL)
