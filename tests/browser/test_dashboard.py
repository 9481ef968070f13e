"""The dashboard in real headless chromium, against a real server, etcd and the demo
regions' agents (tests/browser/conftest.py), as a person uses it.

The tests share one federation and run in file order: the drill cordons and restores a
region, and the last test kills a region's agent for good.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.browser.conftest import DEMO_REGIONS, TTL, Cluster, wait_until


def marker(page: Page, region: str):  # type: ignore[no-untyped-def]
    return page.locator(f'g.marker[data-region="{region}"]')


def test_a_viewer_sees_the_four_demo_regions_on_the_map_in_their_countries(
    as_role: Callable[[str], Page],
) -> None:
    page = as_role("viewer")
    expect(page.locator("g.marker")).to_have_count(len(DEMO_REGIONS))
    for region, country in DEMO_REGIONS.items():
        expect(marker(page, region)).to_have_attribute("data-state", "ready")
        expect(marker(page, region)).to_contain_text(f"{region} · ready")
        # Each marker sits inside its country's outline on the map.
        inside = page.evaluate(
            """([region, country]) => {
                const m = document.querySelector(`g.marker[data-region="${region}"]`);
                const c = document.querySelector(`path.country[data-country="${country}"]`);
                const at = m.transform.baseVal.consolidate().matrix;
                const box = c.getBBox();
                return at.e >= box.x && at.e <= box.x + box.width
                    && at.f >= box.y && at.f <= box.y + box.height;
            }""",
            [region, country],
        )
        assert inside, f"{region}'s marker is not in {country}"
        row = page.locator(f'table.regions tr[data-region="{region}"]')
        expect(row).to_contain_text(country)
        expect(row).to_contain_text("ready")
    # The services placed in a region are on the map's list; patient-records is in the EU.
    expect(page.locator('tr[data-region="eu-de-1"] .placed')).to_contain_text("patient-records")
    expect(page.locator('tr[data-region="us-east-1"] .placed')).to_have_text("none")
    # Clicking a marker opens the region: heartbeat, capacity, what runs there.
    marker(page, "eu-fr-1").click()
    panel = page.locator("#region-panel")
    expect(panel).to_contain_text("Region eu-fr-1")
    expect(panel).to_contain_text("last heartbeat")
    expect(panel.locator("table.placed")).to_contain_text("patient-records")
    # And by keyboard: a marker takes focus and Enter opens it.
    marker(page, "eu-de-1").focus()
    page.keyboard.press("Enter")
    expect(panel).to_contain_text("Region eu-de-1")


def test_the_residency_view_shows_us_and_in_rejected_for_phi_eu_with_the_reason(
    as_role: Callable[[str], Page],
) -> None:
    page = as_role("viewer")
    page.get_by_role("button", name="Residency").click()
    page.get_by_label("phi-eu").check()
    verdicts = page.locator("table.verdicts")
    for region in ("us-east-1", "ap-in-1"):
        row = verdicts.locator(f'tr[data-region="{region}"]')
        expect(row.locator(".verdict")).to_have_text("rejected")
        expect(row).to_contain_text("eu-patient-data")
    for region in ("eu-de-1", "eu-fr-1"):
        expect(verdicts.locator(f'tr[data-region="{region}"] .verdict')).to_have_text("allowed")
    expect(page.locator('path.country[data-country="US"]')).to_have_class(
        "country verdict-rejected"
    )
    expect(page.locator('path.country[data-country="DE"]')).to_have_class("country verdict-allowed")
    # The reasons come with focus (keyboard) as well as hover.
    page.locator('path.country[data-country="IN"]').focus()
    detail = page.locator("#country-detail")
    expect(detail).to_contain_text("India: rejected")
    expect(detail).to_contain_text("eu-patient-data")
    expect(page.locator("#deciding-policies")).to_contain_text("group:eea")


def test_a_viewer_sees_no_cordon_or_drill_buttons_and_a_forced_request_gets_403(
    as_role: Callable[[str], Page],
) -> None:
    operator = as_role("operator")
    expect(operator.get_by_role("button", name="Drills")).to_be_visible()
    # An operator cordons a region from its panel, and lifts the cordon.
    marker(operator, "us-east-1").click()
    operator.get_by_role("button", name="Cordon").click()
    expect(marker(operator, "us-east-1")).to_have_attribute("data-state", "cordoned")
    expect(operator.locator("#region-panel")).to_contain_text("cordoned from the dashboard")
    operator.get_by_role("button", name="Uncordon").click()
    expect(marker(operator, "us-east-1")).to_have_attribute("data-state", "ready")

    page = as_role("viewer")
    marker(page, "eu-de-1").click()
    expect(page.locator("#region-panel")).to_contain_text("Region eu-de-1")
    expect(page.get_by_role("button", name="Cordon")).to_have_count(0)
    expect(page.get_by_role("button", name="Drills")).to_have_count(0)
    expect(page.get_by_role("button", name="Audit")).to_have_count(0)
    # The page's own token, sent by hand: the server refuses it.
    statuses = page.evaluate(
        """async () => {
            const headers = {
                Authorization: `Bearer ${sessionStorage.getItem("federation.token")}`,
                "Content-Type": "application/json",
            };
            const post = (path, body) => fetch(path, {method: "POST", headers,
                body: JSON.stringify(body)}).then((r) => r.status);
            return [
                await post("/v1/regions/eu-de-1/cordon", {}),
                await post("/v1/drills", {regions: ["eu-de-1"], mode: "live"}),
            ];
        }"""
    )
    assert statuses == [403, 403]


def test_the_token_is_never_put_in_a_url(browser: Browser, cluster: Cluster) -> None:
    """The login form cannot be submitted by the browser itself, not even before the
    dashboard's script has loaded (a slow network): the token would land in the URL."""
    context = browser.new_context()
    try:
        page = context.new_page()
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))

        def slowly(route: Route) -> None:
            time.sleep(1.5)
            route.continue_()

        page.route("**/app.js", slowly)
        page.goto(cluster.url + "/ui/", wait_until="commit")
        page.wait_for_selector("#login", state="attached")
        assert not page.locator("#login").is_visible(), "the form is usable before its script"
        page.fill("#token", cluster.tokens["viewer"], timeout=10_000)
        page.keyboard.press("Enter")
        page.wait_for_selector("#nav button")
        secret = cluster.tokens["viewer"]
        assert not [u for u in urls if secret in u], "the token went into a URL"
        assert secret not in page.url
        assert page.evaluate("sessionStorage.getItem('federation.token')") == secret
        # Everything the page asked for is its own: its files and the public /v1 API.
        expect(marker(page, "eu-de-1")).to_be_visible()
        strays = [u for u in urls if not u.startswith((cluster.url + "/ui/", cluster.url + "/v1/"))]
        assert strays == [], strays
    finally:
        context.close()


@pytest.mark.parametrize("view", ["services", "drills", "map"])
def test_a_dot_segment_typed_in_the_address_never_moves_a_request_up_the_path(
    as_role: Callable[[str], Page], cluster: Cluster, view: str
) -> None:
    page = as_role("viewer")
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(f"{cluster.url}/ui/#/{view}/..")
    page.goto(f"{cluster.url}/ui/#/{view}/.")
    page.wait_for_timeout(1500)  # a poll or two
    api = [u.removeprefix(cluster.url) for u in urls if u.startswith(cluster.url + "/v1")]
    # Before the fix, `/v1/` itself and `/v1/explain` (a service page's `..`).
    assert all(u.split("?")[0].rstrip("/") not in ("/v1", "/v1/explain") for u in api), api


def test_a_region_token_is_refused_at_login_and_not_kept(
    browser: Browser, cluster: Cluster
) -> None:
    status, made = cluster.http("POST", "/v1/tokens", {"role": "region", "region": "ap-in-1"})
    assert status == 201, made
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(cluster.url + "/ui/")
        page.fill("#token", made["token"])
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#login-error")).to_contain_text("cannot read the federation")
        assert page.locator("#nav button").count() == 0
        assert page.evaluate("sessionStorage.getItem('federation.token')") is None
    finally:
        context.close()
        cluster.http("DELETE", f"/v1/tokens/{made['id']}")


def test_a_revoked_token_logs_the_open_dashboard_out(
    as_role: Callable[[str], Page], cluster: Cluster
) -> None:
    status, made = cluster.http("POST", "/v1/tokens", {"role": "viewer"})
    assert status == 201, made
    cluster.tokens["short-lived"] = made["token"]
    page = as_role("short-lived")
    expect(marker(page, "eu-de-1")).to_be_visible()
    status, body = cluster.http("DELETE", f"/v1/tokens/{made['id']}")
    assert status == 200, body
    expect(page.locator("#login-error")).to_contain_text("log in again", timeout=3_000)
    expect(page.locator("#nav button")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('federation.token')") is None


def test_the_dashboard_works_from_the_keyboard_alone(browser: Browser, cluster: Cluster) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(cluster.url + "/ui/")

        def tab_to(selector: str) -> None:
            for _ in range(40):
                page.keyboard.press("Tab")
                if page.evaluate(f"document.activeElement.matches({selector!r})"):
                    return
            raise AssertionError(f"Tab never reaches {selector}")

        tab_to("#token")
        page.keyboard.type(cluster.tokens["viewer"])
        page.keyboard.press("Enter")
        page.wait_for_selector("#nav button")
        tab_to("nav button[data-view=residency]")
        page.keyboard.press("Enter")
        tab_to("input[value=phi-eu]")
        page.keyboard.press("Space")
        row = page.locator('table.verdicts tr[data-region="us-east-1"]')
        expect(row.locator(".verdict")).to_have_text("rejected")
        tab_to('path.country[data-country="US"]')
        expect(page.locator("#country-detail")).to_contain_text("United States: rejected")
        # An odd address typed by hand: the page says what is wrong, it does not go blank.
        page.goto(cluster.url + "/ui/#/services/%E0%A4%A/../../v1/tokens")
        expect(page.locator("#status")).to_contain_text("must be a DNS-1123 label")
        expect(page.locator("#nav button")).to_have_count(3)
        tab_to("nav button[data-view=map]")
        page.keyboard.press("Enter")
        tab_to('g.marker[data-region="eu-fr-1"]')
        page.keyboard.press("Enter")
        expect(page.locator("#region-panel")).to_contain_text("Region eu-fr-1")
    finally:
        context.close()


def test_a_region_label_with_a_script_renders_as_text(
    as_role: Callable[[str], Page], cluster: Cluster
) -> None:
    hostile = "<script>window.__owned = 1</script><img src=x onerror='window.__owned = 2'>"
    status, body = cluster.http(
        "POST", "/v1/regions", {"name": "ch-x-1", "country": "CH", "labels": {"note": hostile}}
    )
    assert status == 201, body
    try:
        page = as_role("viewer")
        page.locator('table.regions tr[data-region="ch-x-1"] button').click()
        panel = page.locator("#region-panel")
        expect(panel.locator("ul.labels")).to_have_text(f"note: {hostile}")
        assert panel.locator("script, img").count() == 0
        assert page.evaluate("window.__owned") is None
        expect(marker(page, "ch-x-1")).to_have_attribute("data-state", "lost")
    finally:
        status, body = cluster.http("DELETE", "/v1/regions/ch-x-1")
        assert status == 200, body


def test_the_services_view_lists_and_explains_a_service(
    as_role: Callable[[str], Page],
) -> None:
    page = as_role("viewer")
    page.get_by_role("button", name="Services").click()
    row = page.locator('table.services tr[data-service="patient-records"]')
    expect(row).to_contain_text("Running")
    expect(row).to_contain_text("4/4")
    expect(row).to_contain_text("eu-de-1 2/2")
    row.get_by_role("button", name="patient-records").click()
    explain = page.locator("table.explain")
    for region in ("us-east-1", "ap-in-1"):
        expect(explain.locator(f'tr[data-region="{region}"] .verdict')).to_have_text("rejected")
        expect(explain.locator(f'tr[data-region="{region}"]')).to_contain_text("eu-patient-data")
    expect(explain.locator('tr[data-region="eu-fr-1"] .verdict')).to_have_text("allowed")
    expect(page.locator("#service-page")).to_contain_text("4 of 4 replicas ready")


def test_an_admin_reads_the_latest_audit_entries_and_their_verification(
    as_role: Callable[[str], Page],
) -> None:
    operator = as_role("operator")
    expect(operator.get_by_role("button", name="Audit")).to_have_count(0)
    page = as_role("admin")
    page.get_by_role("button", name="Audit").click()
    expect(page.locator("#audit-result")).to_contain_text("verified")
    entries = page.locator("table.audit")
    expect(entries).to_contain_text("patient-records")
    expect(entries).to_contain_text("eu-patient-data")


def test_an_operator_starts_a_drill_and_watches_the_timeline_finish(
    as_role: Callable[[str], Page], cluster: Cluster
) -> None:
    page = as_role("operator")
    page.get_by_role("button", name="Drills").click()
    page.get_by_label("eu-fr-1").check()
    # The plan first: what cordoning eu-fr-1 would do, changing nothing.
    page.get_by_role("button", name="Plan").click()
    plan = page.locator("#drill-plan")
    # All 4 replicas fit in eu-de-1, below min_regions 2: degraded, not lost.
    expect(plan).to_contain_text("1 degraded, 0 unrecoverable")
    row = plan.locator("tr", has_text="patient-records")
    expect(row).to_contain_text("degraded")
    expect(row).to_contain_text("eu-de-1 4")
    page.fill("#drill-max", "60")
    page.get_by_role("button", name="Start live drill").click()
    state = page.locator("#drill-state")
    expect(state).to_have_text("running")
    expect(page.get_by_role("button", name="Abort drill")).to_be_visible()
    expect(page.locator("#drill-timeline li").first).to_contain_text("live drill started")
    expect(state).to_have_text("completed", timeout=45_000)
    timeline = page.locator("#drill-timeline")
    expect(timeline).to_contain_text("cordoned")
    expect(timeline).to_contain_text("patient-records recovered")
    expect(page.locator("#drill-recovery")).not_to_have_text("- / - / -")
    expect(page.get_by_role("button", name="Abort drill")).to_have_count(0)
    with page.expect_download() as got:
        page.get_by_role("button", name="Download report (Markdown)").click()
    assert "patient-records" in got.value.path().read_text()
    with page.expect_download() as got:
        page.get_by_role("button", name="Download report (JSON)").click()
    assert '"state": "completed"' in got.value.path().read_text()
    # The drill restored what it cordoned before the next test.
    wait_until(
        lambda: cluster.service("patient-records")["status"]["phase"] == "Running",
        30,
        "patient-records Running after the drill",
    )


def test_an_operator_aborts_a_drill_that_cannot_finish(
    as_role: Callable[[str], Page], cluster: Cluster
) -> None:
    # A service whose instances never answer their health check: its replica never
    # recovers elsewhere, so the drill runs until it is aborted.
    stuck = {
        "command": ["{python}", "-c", "import time; time.sleep(3600)"],
        "replicas": 1,
        "placement": {"prefer": ["ap-in-1"], "regions": ["ap-in-1", "us-east-1"]},
        "health": {"http": "/health", "interval_s": 0.5},
        "resources": {"cpu": 0.1, "memory_mb": 32},
    }
    status, body = cluster.http("PUT", "/v1/services/never-ready", stuck)
    assert status == 201, body
    try:
        wait_until(
            lambda: "ap-in-1" in cluster.service("never-ready")["status"]["placements"],
            15,
            "never-ready placed in ap-in-1",
        )
        page = as_role("operator")
        page.get_by_role("button", name="Drills").click()
        page.get_by_label("ap-in-1").check()
        page.get_by_role("button", name="Start live drill").click()
        expect(page.locator("#drill-state")).to_have_text("running")
        head = page.locator("#drill-head")
        expect(head).to_contain_text("0 of 1 services")
        page.get_by_role("button", name="Abort drill").click()
        expect(page.locator("#drill-state")).to_have_text("aborted")
        expect(page.get_by_role("button", name="Abort drill")).to_have_count(0)
        expect(head).to_contain_text("aborted from the dashboard")
        status, region = cluster.http("GET", "/v1/regions/ap-in-1")
        assert status == 200 and region["cordoned"] is False, region
    finally:
        status, body = cluster.http("DELETE", "/v1/services/never-ready")
        assert status == 200, body


def test_a_killed_agents_marker_turns_lost_and_its_services_reappear_elsewhere(
    as_role: Callable[[str], Page], cluster: Cluster
) -> None:
    page = as_role("viewer")
    expect(marker(page, "eu-de-1")).to_have_attribute("data-state", "ready")
    page.evaluate("window.__same_page = true")
    cluster.agents["eu-de-1"].stop(signal.SIGKILL)
    killed = time.monotonic()
    expect(marker(page, "eu-de-1")).to_have_attribute(
        "data-state", "lost", timeout=(TTL + 5) * 1000
    )
    print(f"marker lost {time.monotonic() - killed:.2f} s after the agent was killed")
    expect(marker(page, "eu-de-1")).to_contain_text("eu-de-1 · lost")
    fr = page.locator('table.regions tr[data-region="eu-fr-1"] .placed')
    expect(fr).to_have_text("patient-records 4/4", timeout=15_000)
    expect(page.locator('tr[data-region="eu-de-1"] .placed')).to_have_text("none")
    for region in ("us-east-1", "ap-in-1"):
        expect(page.locator(f'tr[data-region="{region}"] .placed')).to_have_text("none")
    assert page.evaluate("window.__same_page") is True, "the page was reloaded"
