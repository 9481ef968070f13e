"""The agent's side of secrets, with real processes: an instance gets its secret in its
environment and nowhere else (no command line, no file of the agent), and an
assignment whose secrets were withheld starts nothing until they come."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from federation.agent.drivers import SECRET_WITHHELD, Desired, Driver
from federation.agent.drivers.exec import ExecDriver
from federation.agent.drivers.process import ProcessDriver
from federation.model.service import Assignment, Runtime, ServiceSpec
from tests.integration.secret_support import marker
from tests.integration.test_process_driver import until

# Healthy only when DB_PASSWORD is the value whose SHA-256 it is given.
CHECK = r"""
import hashlib, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ok = hashlib.sha256(os.environ.get("DB_PASSWORD", "").encode()).hexdigest() == sys.argv[2]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def wanting(
    value: str, *, delivered: dict[str, str] | None = None, withheld: str | None = None
) -> Desired:
    spec = ServiceSpec.model_validate(
        {
            "name": "records",
            "command": [
                "{python}",
                "-c",
                CHECK,
                "{port}",
                hashlib.sha256(value.encode()).hexdigest(),
            ],
            "health": {"http": "/health", "interval_s": 0.2, "timeout_s": 1},
            "secrets": {"DB_PASSWORD": "patient-db#password"},
        }
    )
    runtime = Runtime.of(spec, 1, {"patient-db": 1})
    assignment = Assignment(service="records", region="eu-de-1", replicas=1, runtime=runtime)
    return Desired(assignment, 7, secret_env=delivered or {}, secrets_withheld=withheld)


def nowhere_on_disk(root: Path, value: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert value.encode() not in path.read_bytes(), path


def on_no_command_line(value: str) -> None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        assert value.encode() not in text, cmdline


async def _runs_with_its_secret(driver: Driver, state: Path) -> None:
    value = marker("pw")
    want = {"records": wanting(value, delivered={"DB_PASSWORD": value})}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: [i.ready for i in driver.instances()] == [True], timeout=20)
        on_no_command_line(value)
        nowhere_on_disk(state, value)
    finally:
        await driver.close(stop_instances=True)


async def test_the_raw_driver_passes_a_secret_in_the_environment_only(tmp_path: Path) -> None:
    await _runs_with_its_secret(ProcessDriver(region="eu-de-1", state_dir=tmp_path), tmp_path)


@pytest.mark.usefixtures("bubblewrap")
async def test_the_exec_driver_passes_a_secret_through_no_command_line(tmp_path: Path) -> None:
    driver = ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as="nobody")
    await _runs_with_its_secret(driver, tmp_path)


async def test_withheld_secrets_start_nothing_until_they_come(tmp_path: Path) -> None:
    value = marker("pw")
    driver = ProcessDriver(region="eu-de-1", state_dir=tmp_path)
    withheld = {"records": wanting(value, withheld="residency does not allow secret patient-db")}
    await driver.start(withheld)
    try:
        await driver.apply(withheld)
        [report] = driver.instances()
        assert report.state == "failed" and report.reason == SECRET_WITHHELD
        assert "residency does not allow" in report.message
        assert driver._instances["records-0"].pid == 0  # nothing was started
        # No values and no reason (an older server) is withheld too.
        await driver.apply({"records": wanting(value)})
        assert driver.instances()[0].reason == SECRET_WITHHELD
        await driver.apply({"records": wanting(value, delivered={"DB_PASSWORD": value})})
        await until(lambda: [i.ready for i in driver.instances()] == [True], timeout=20)
    finally:
        await driver.close(stop_instances=True)


# Healthy only when /run/secrets/DB_PASSWORD holds the value, and only this sandbox sees it.
FILE_CHECK = CHECK.replace(
    'os.environ.get("DB_PASSWORD", "")',
    'open(os.environ["FEDERATION_SECRETS_DIR"] + "/DB_PASSWORD").read()',
)


def wanting_files(value: str) -> Desired:
    d = wanting(value, delivered={"DB_PASSWORD": value})
    command = ["{python}", "-c", FILE_CHECK, "{port}", hashlib.sha256(value.encode()).hexdigest()]
    runtime = d.assignment.runtime.model_copy(update={"secret_files": True, "command": command})
    assignment = d.assignment.model_copy(update={"runtime": runtime})
    return Desired(assignment, 7, secret_env=d.secret_env)


@pytest.mark.usefixtures("bubblewrap")
async def test_the_exec_driver_gives_a_secret_file_on_a_tmpfs_of_the_sandbox(
    tmp_path: Path,
) -> None:
    value = marker("pw")
    driver = ExecDriver(region="eu-de-1", state_dir=tmp_path, run_as="nobody")
    want = {"records": wanting_files(value)}
    await driver.start(want)
    try:
        await driver.apply(want)
        await until(lambda: [i.ready for i in driver.instances()] == [True], timeout=20)
        on_no_command_line(value)
        nowhere_on_disk(tmp_path, value)
        nowhere_on_disk(Path("/run/secrets"), value)  # the host's: the tmpfs is the sandbox's
    finally:
        await driver.close(stop_instances=True)


async def test_the_raw_driver_refuses_secret_files(tmp_path: Path) -> None:
    driver = ProcessDriver(region="eu-de-1", state_dir=tmp_path)
    want = {"records": wanting_files(marker("pw"))}
    await driver.start(want)
    try:
        await driver.apply(want)
        [report] = driver.instances()
        assert report.state == "failed" and "needs the exec driver" in report.message
    finally:
        await driver.close(stop_instances=True)
