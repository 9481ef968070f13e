"""The namespace library removes what it makes, and what a crashed run left."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.faults.netns import PREFIX, ip, network, unavailable


@pytest.fixture(autouse=True)
def _root() -> None:
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def namespaces() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.split()}


def test_a_crashed_runs_namespaces_and_processes_are_removed_at_start() -> None:
    ip("netns", "add", f"{PREFIX}crashed")
    orphan = subprocess.Popen(["ip", "netns", "exec", f"{PREFIX}crashed", "sleep", "600"])
    try:
        with network() as net:
            assert f"{PREFIX}crashed" not in namespaces()
            assert orphan.wait(10) == -9
            net.add("a")
        assert not {ns for ns in namespaces() if ns.startswith(PREFIX)}
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_isolate_and_cut_stop_traffic_and_heal_restores_it() -> None:
    with network() as net:
        a, b = net.add("a"), net.add("b")
        server = subprocess.Popen(
            [*b.wrap(), "python3", "-m", "http.server", "8000", "--bind", b.address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def reaches(frm: list[str]) -> bool:
                url = f"http://{b.address}:8000/"
                probe = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=1)"
                done = subprocess.run([*frm, "python3", "-c", probe], capture_output=True)
                return done.returncode == 0

            host: list[str] = []
            for _ in range(50):  # the server starts
                if reaches(host):
                    break
            assert reaches(host) and reaches(a.wrap())
            net.cut(a, b)
            assert not reaches(a.wrap()) and reaches(host)  # others still reach b
            net.heal(a, b)
            assert reaches(a.wrap())
            net.isolate(b)
            assert not reaches(host) and not reaches(a.wrap())
            net.rejoin(b)
            assert reaches(a.wrap())
        finally:
            server.kill()
            server.wait()
