"""A real browser against a real federation: Debian's chromium driven by Playwright,
a `federation serve` process on the session's etcd, and the four demo regions' agents
as processes (the raw driver), as `federation up` runs them.

chromium is a system package: installed here when missing and we are root (as the
bubblewrap fixture does); in CI a missing browser fails these tests, elsewhere it skips
them. Playwright never downloads a browser of its own (`executable_path`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from federation.model.token import new_secret
from federation.processes.local_etcd import LocalEtcd
from tests.conftest import (
    TTL,
    AgentProcess,
    ServerProcess,
    start_agent,
    start_server,
    stop_agents,
)

CHROMIUM = "/usr/bin/chromium"
# The machine has no internet: without these, chromium keeps trying to reach Google.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEMO_REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "us-east-1": "US", "ap-in-1": "IN"}
EU_PATIENT_DATA = {
    "name": "eu-patient-data",
    "data_classes": ["phi-eu"],
    "allow": ["group:eea", "CH"],
    "mode": "enforce",
}
PATIENT_RECORDS = {
    "command": ["{python}", "-m", "federation.demo", "{port}"],
    "replicas": 4,
    "data_classes": ["phi-eu"],
    "placement": {"min_regions": 2},
    "health": {"http": "/health", "interval_s": 0.5},
    "resources": {"cpu": 0.5, "memory_mb": 128},
}


def ensure_chromium() -> None:
    """chromium on this machine, installed when missing and we are root; fails in CI
    when it cannot be, skips elsewhere."""
    if not Path(CHROMIUM).exists() and os.geteuid() == 0:
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        # A fresh machine may have no package lists yet: update once, then try again.
        for argv in (install, ["apt-get", "update"], install):
            subprocess.run(argv, check=False, capture_output=True, timeout=600)
            if argv is install and Path(CHROMIUM).exists():
                break
    if not Path(CHROMIUM).exists():
        message = f"the dashboard's browser tests need {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium for one test module; closed after it, even when a test fails."""
    ensure_chromium()
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


class Http:
    """The API as a test calls it, with a token (admin unless told)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def __call__(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - start


@dataclass
class Cluster:
    """A server process, the demo regions' agents, and tokens of each role."""

    server: ServerProcess
    http: Http
    tmp: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def service(self, name: str) -> dict[str, Any]:
        status, body = self.http("GET", f"/v1/services/{name}")
        assert status == 200, body
        return dict(body)


@pytest.fixture(scope="module")
def cluster(etcd: LocalEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A federation as `federation up` runs it: one server, four demo regions with their
    agents, the EU patient-data policy and `patient-records` Running in DE and FR; a
    viewer and an operator token. Every process is stopped at the end of the module."""
    tmp = tmp_path_factory.mktemp("dashboard")
    admin = new_secret()
    prefix = f"/ui-{uuid.uuid4().hex[:10]}/"
    server = start_server([etcd.endpoint], "dashboard", admin, tmp, prefix=prefix)
    cluster = Cluster(server, Http(server.url, admin), tmp)
    try:
        http = cluster.http
        for name, country in DEMO_REGIONS.items():
            status, body = http("POST", "/v1/regions", {"name": name, "country": country})
            assert status == 201, body
            cluster.agents[name] = start_agent([server.url], name, body["token"], tmp)
        cluster.tokens["admin"] = admin
        for role in ("viewer", "operator"):
            status, body = http("POST", "/v1/tokens", {"role": role})
            assert status == 201, body
            cluster.tokens[role] = body["token"]

        def ready() -> bool:
            _, body = http("GET", "/v1/regions")
            return [r["state"] for r in body["items"]] == ["ready"] * len(DEMO_REGIONS)

        wait_until(ready, 30, "the demo regions ready")
        status, body = http("PUT", "/v1/policies/eu-patient-data", EU_PATIENT_DATA)
        assert status == 201, body
        status, body = http("PUT", "/v1/services/patient-records", PATIENT_RECORDS)
        assert status == 201, body
        wait_until(
            lambda: cluster.service("patient-records")["status"]["phase"] == "Running",
            30,
            "patient-records Running",
        )
        yield cluster
    finally:
        stop_agents(cluster.agents.values())
        server.stop()


def log_in(browser: Browser, cluster: Cluster, role: str) -> Page:
    """A fresh browser context (its own sessionStorage) logged in with `role`'s token."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    said: list[str] = []  # what the page logged, for a failure's message
    page.on("console", lambda message: said.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: said.append(f"error: {error}"))
    page.goto(cluster.url + "/")
    page.get_by_role("link", name="Open the dashboard").click()
    page.fill("#token", cluster.tokens[role])
    page.get_by_role("button", name="Log in").click()
    try:
        page.wait_for_selector("#nav button")
    except PlaywrightError:
        text = page.locator("body").inner_text()
        raise AssertionError(f"not logged in; page says {text!r}; console: {said}") from None
    return page


@pytest.fixture
def as_role(browser: Browser, cluster: Cluster) -> Iterator[Callable[[str], Page]]:
    """Log in with a role's token; every context opened is closed after the test."""
    pages: list[Page] = []

    def open_page(role: str) -> Page:
        page = log_in(browser, cluster, role)
        pages.append(page)
        return page

    try:
        yield open_page
    finally:
        for page in pages:
            page.context.close()


__all__ = ["TTL", "Cluster", "wait_until"]
