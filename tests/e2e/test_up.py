"""`federation up` as a user runs it: a real process tree, stopped by Ctrl-C (SIGINT); a
server that stalls or dies does not take it down; its etcd and secrets are its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.processes.children import free_port, stop_processes, with_parent_death
from federation.processes.commands import REGION_TOKEN_ENV, agent_command
from federation.store import Store, StoreUnavailable

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
        # The dashboard, served by the server `up` started, at the address it prints.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/html")
        children |= descendants(proc.pid)
        assert len(children) >= 6  # etcd, server, four agents
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        text = out.decode()
        assert f"http://127.0.0.1:{port}" in text
        assert token in text  # `up` prints the admin token it uses
        assert f"dashboard:    http://127.0.0.1:{port}/ui/" in text
        # The key that signs audit checkpoints: made by `up`, readable by its owner only.
        assert (tmp_path / "data" / "audit.key").stat().st_mode & 0o777 == 0o600
        # And the KEK file that seals secrets, given to the servers.
        assert (tmp_path / "data" / "kek").stat().st_mode & 0o777 == 0o600
        time.sleep(0.2)
        assert alive(children) == set(), "processes of `federation up` survived SIGINT"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in alive(children):
            os.kill(pid, signal.SIGKILL)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


class Up:
    """`federation up` as a user runs it, its output in a file, every process it started
    remembered so that all are stopped at the end, whatever happened."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.data = tmp_path / "data"
        self.out = tmp_path / "up.out"
        env = {k: v for k, v in os.environ.items() if k != "FEDERATION_ADMIN_TOKEN"}
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "federation",
                    "up",
                    f"--port={self.port}",
                    f"--data-dir={self.data}",
                    "--region-ttl=3",
                ],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        self.children: set[int] = set()

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def running(self, role: str) -> list[int]:
        """The pids of `up`'s children that run `federation ROLE` (serve, agent)."""
        self.children |= descendants(self.proc.pid)
        return sorted(
            pid
            for pid in alive(self.children)
            if "federation" in cmdline(pid) and role in cmdline(pid)
        )

    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def get(self, path: str, timeout: float = 2) -> Any:
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token()}"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def wait_ready_regions(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.output()
            self.running("agent")
            try:
                states = {i["name"]: i["state"] for i in self.get("/v1/regions")["items"]}
                if set(states) == set(EXPECTED) and set(states.values()) == {"ready"}:
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"regions not ready within {timeout} s: {states}\n{self.output()}")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "federation", *args],
            env={**os.environ, "FEDERATION_URL": self.url, "FEDERATION_TOKEN": self.token()},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        """Ctrl-C, then whatever is left is killed (a stopped process is woken first)."""
        self.children |= descendants(self.proc.pid)
        for pid in alive(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.2)
        for pid in alive(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


DOCS_SITE = Path(__file__).resolve().parents[2] / "examples" / "services" / "docs-site.yaml"


@pytest.mark.slow
def test_up_survives_a_server_that_does_not_answer_for_20_s(tmp_path: Path) -> None:
    up = Up(tmp_path)
    try:
        # Stopped once `up` has registered a region: it is registering the others and
        # waiting for them, as when a hostile request blocked the server's loop at start.
        end = time.monotonic() + 60
        while True:
            assert up.proc.poll() is None, up.output()
            assert time.monotonic() < end, "no region was registered\n" + up.output()
            servers = up.running("serve")
            try:
                if servers and up.get("/v1/regions", timeout=1)["items"]:
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.02)
        (server,) = servers
        os.kill(server, signal.SIGSTOP)
        try:
            stalled = time.monotonic()
            while time.monotonic() - stalled < 20:
                up.running("agent")
                assert up.proc.poll() is None, "up died while the server stalled\n" + up.output()
                time.sleep(0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGCONT)
        up.wait_ready_regions(60)
        assert up.running("serve") == [server]  # slow is not dead: not restarted
        assert len(up.running("agent")) == 4
        status = up.cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        deploy = up.cli("deploy", str(DOCS_SITE), "--timeout=90")
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert up.get("/v1/services/docs-site")["status"]["phase"] == "Running"
        out = up.output()
        assert "is not answering" in out and "answers again" in out, out
        assert "Traceback" not in out, out
    finally:
        up.stop()


@pytest.fixture(scope="module")
def running_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """One `federation up`, ready, for the tests below (each leaves it working)."""
    up = Up(tmp_path_factory.mktemp("up"))
    try:
        up.wait_ready_regions(60)
        yield up
    finally:
        up.stop()


@pytest.mark.slow
async def test_up_keeps_its_etcd_and_secrets_to_this_user(running_up: Up) -> None:
    data = running_up.data
    ports = json.loads((data / "etcd-ports.json").read_text())
    endpoint = f"127.0.0.1:{ports['members'][0]['client']}"
    # Another local user can reach the port, but not without a certificate of up's CA.
    async with Store([endpoint], prefix="/federation/", timeout=2.0) as plain:
        with pytest.raises(StoreUnavailable):
            await plain.put("tokens/planted-by-another-user", {"role": "admin"})
        with pytest.raises(StoreUnavailable):
            await plain.get("bootstrap")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    secrets = [
        data / "admin.token",
        data / "etcd-ports.json",
        *data.glob("regions/*.token"),
        *data.glob("tls/*"),
    ]
    assert len(secrets) > 6
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # The federation itself still reads and writes etcd.
    status = running_up.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert running_up.get("/v1/ready")["ready"] is True


@pytest.mark.slow
def test_up_restarts_a_server_that_died(running_up: Up) -> None:
    (server,) = running_up.running("serve")
    os.kill(server, signal.SIGKILL)
    end = time.monotonic() + 60
    while True:
        assert running_up.proc.poll() is None, running_up.output()
        assert time.monotonic() < end, "no server came back\n" + running_up.output()
        now = running_up.running("serve")
        if now and now != [server]:
            try:
                if running_up.get("/v1/ready")["ready"]:
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
        time.sleep(0.3)
    running_up.wait_ready_regions(60)
    status = running_up.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    out = running_up.output()
    assert "exited" in out and "restarted" in out, out


@pytest.mark.slow
def test_a_killed_agent_stays_down_and_its_region_is_lost_until_started_by_hand(
    running_up: Up,
) -> None:
    """The README's walk-through: kill a region's agent as a power cut would, see the
    region lost (`up` must not start it again behind the user's back), then bring it
    back by hand with the command the README gives."""
    (agent,) = [pid for pid in running_up.running("agent") if "--region=eu-de-1" in cmdline(pid)]
    os.kill(agent, signal.SIGKILL)
    end = time.monotonic() + 60  # TTL 3 s; the rest is room for a loaded machine
    while True:
        assert running_up.proc.poll() is None, running_up.output()
        assert time.monotonic() < end, "eu-de-1 was not lost\n" + running_up.output()
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            if running_up.get("/v1/regions/eu-de-1")["state"] == "unreachable":
                break
        time.sleep(0.3)
    assert not [p for p in running_up.running("agent") if "--region=eu-de-1" in cmdline(p)]
    assert "agent eu-de-1 exited" in running_up.output()
    assert "left down" in running_up.output()

    data = running_up.data
    log = open(data / "logs" / "agent-eu-de-1-by-hand.log", "wb")  # noqa: SIM115
    by_hand = subprocess.Popen(
        with_parent_death(
            agent_command(
                servers=[running_up.url],
                region="eu-de-1",
                state_dir=data / "agents" / "eu-de-1",
                cpu=16,
                memory_mb=65536,
            )
        ),
        env={
            **os.environ,
            REGION_TOKEN_ENV: (data / "regions" / "eu-de-1.token").read_text().strip(),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        running_up.wait_ready_regions(60)
    finally:
        stop_processes([by_hand])
        log.close()
