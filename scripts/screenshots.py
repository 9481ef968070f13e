"""Screenshots of every dashboard view, into docs/img/: a real `federation up` with the
examples deployed and a live drill run, photographed in headless chromium.

    .venv/bin/python scripts/screenshots.py            # needs /usr/bin/chromium

Takes about a minute; stops everything it started, also when it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from playwright.sync_api import Page, sync_playwright

from federation.model.token import new_secret
from federation.processes.children import free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"
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


class Http:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except (urllib.error.URLError, OSError):
            return 0, None


def wait(check: Callable[[], bool], seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"screenshots: {what} not within {seconds} s")
        time.sleep(0.25)


def deploy_examples(http: Http) -> None:
    """The example policies, the secret patient-records needs, and the example services."""
    for path in sorted((ROOT / "examples" / "policies").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        status, body = http("PUT", f"/v1/policies/{doc['name']}", doc)
        assert status in (200, 201), body
    secret = {
        "data_classes": ["phi-eu"],
        "data": {"password": new_secret(), "username": "records"},
    }
    status, body = http("PUT", "/v1/secrets/patient-db", secret)
    assert status in (200, 201), body
    names = []
    for path in sorted((ROOT / "examples" / "services").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        status, body = http("PUT", f"/v1/services/{doc['name']}", doc)
        assert status in (200, 201), body
        names.append(doc["name"])

    def running() -> bool:
        _, body = http("GET", "/v1/services")
        return bool(body) and all(s["status"]["phase"] == "Running" for s in body["items"])

    wait(running, 90, f"services {names} Running")


def shoot(page: Page, name: str) -> None:
    page.wait_for_timeout(1500)  # one poll more: the view has drawn what it fetched
    page.screenshot(path=str(OUT / f"dashboard-{name}.png"), full_page=True)
    print(f"docs/img/dashboard-{name}.png")


def photograph(url: str, token: str, drill: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "/ui/")
            page.fill("#token", token)
            page.get_by_role("button", name="Log in").click()
            page.locator('g.marker[data-region="eu-de-1"]').click()
            shoot(page, "map")
            page.get_by_role("button", name="Residency").click()
            page.get_by_label("phi-eu").check()
            page.wait_for_selector("table.verdicts")
            page.locator('path.country[data-country="US"]').focus()
            shoot(page, "residency")
            page.get_by_role("button", name="Services").click()
            page.wait_for_selector("table.services")
            shoot(page, "services")
            page.goto(url + "/ui/#/services/patient-records")
            page.wait_for_selector("table.explain")
            shoot(page, "service")
            page.goto(url + f"/ui/#/drills/{drill}")
            page.wait_for_selector("#drill-timeline li")
            shoot(page, "drill")
            page.get_by_role("button", name="Audit").click()
            page.wait_for_selector("table.audit")
            shoot(page, "audit")
        finally:
            browser.close()


def main() -> int:
    if not Path(CHROMIUM).exists():
        print(f"screenshots need {CHROMIUM}: apt-get install chromium", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = new_secret()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        log = Path(tmp) / "up.log"
        with log.open("wb") as out:
            up = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "federation",
                    "up",
                    f"--port={port}",
                    f"--data-dir={tmp}/data",
                ],
                env={**os.environ, "FEDERATION_ADMIN_TOKEN": token},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            http = Http(url, token)

            def ready() -> bool:
                status, body = http("GET", "/v1/regions")
                states = [r["state"] for r in body["items"]] if status == 200 else []
                return len(states) == 4 and set(states) == {"ready"}

            wait(ready, 60, "four demo regions ready")
            deploy_examples(http)
            status, started = http(
                "POST", "/v1/drills", {"regions": ["eu-fr-1"], "mode": "live", "max_duration_s": 60}
            )
            assert status == 201, started
            drill = started["id"]
            wait(
                lambda: http("GET", f"/v1/drills/{drill}")[1]["report"]["final"],
                90,
                f"drill {drill} finished",
            )
            photograph(url, token, drill)
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
