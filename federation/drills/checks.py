"""Practice drills' checks and notifications: real HTTP calls, each bounded.

A check never hangs the scheduler and never reads an unbounded answer: every call runs
under its own `timeout_s` (connect, answer and body together), redirects are not
followed (a check's URL is what the operator wrote), and a Prometheus answer is read to
at most `MAX_BODY` bytes. Any failure to call or to understand the answer is a failing
check whose value says why, never an exception.

Webhooks get a JSON body signed with HMAC-SHA256 of a webhook signing key (a secret
whose only data class is `webhook-signing`; `X-Federation-Signature: sha256=<hex>`);
a delivery that fails is logged (host only, never the secret or the body) and
counted, and the run goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from federation.model.schedule import (
    CheckResult,
    HttpCheck,
    Outcome,
    PracticeRun,
    PrometheusCheck,
    Webhook,
)
from federation.model.secret import WEBHOOK_SIGNING, parse_reference
from federation.store import Store
from federation.store import secrets as store_secrets
from federation.store.envelope import KeyProvider
from federation.telemetry import metrics

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
SIGNATURE_HEADER = "X-Federation-Signature"
MAX_CHECKS_DURING = 200  # check results kept in a run: the first of each and every change


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(8192):
        body += chunk
        if len(body) > MAX_BODY:
            raise ValueError(f"answer larger than {MAX_BODY} bytes")
    return bytes(body)


def _number(sample: Any) -> float:
    """A sample's value; ValueError naming what is wrong with it."""
    if not isinstance(sample, list) or len(sample) != 2:
        raise ValueError("malformed sample")
    raw = sample[1]
    # bool is an int to Python, but no Prometheus value.
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"sample value is not a number (a {type(raw).__name__})")
    try:
        value = float(raw)
    except OverflowError:
        raise ValueError("sample value out of range") from None
    if math.isinf(value) and not (isinstance(raw, str) and raw.lstrip("+-").lower() == "inf"):
        raise ValueError("sample value out of range")
    return value


def query_value(document: Any) -> tuple[bool, str]:
    """(all zero, the values seen) of a Prometheus `/api/v1/query` answer.
    ValueError when it is not one."""
    if not isinstance(document, dict) or document.get("status") != "success":
        error = document.get("error") if isinstance(document, dict) else None
        raise ValueError(f"query failed: {str(error)[:200]}" if error else "not a query answer")
    data = document.get("data")
    if not isinstance(data, dict):
        raise ValueError("answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    samples: list[Any]
    if kind == "vector" and isinstance(result, list):
        samples = [r.get("value") if isinstance(r, dict) else None for r in result]
    elif kind == "scalar":
        samples = [result]
    else:
        raise ValueError(f"result type {str(kind)[:20]!r} is neither vector nor scalar")
    values = [_number(sample) for sample in samples]
    shown = ", ".join(f"{v:g}" for v in values[:5]) + (" ..." if len(values) > 5 else "")
    ok = all(v == 0 and not math.isnan(v) for v in values)
    return ok, shown or "no series (0)"


async def _call(
    session: aiohttp.ClientSession, check: HttpCheck | PrometheusCheck
) -> tuple[bool, str, str]:
    if isinstance(check, HttpCheck):
        async with session.get(str(check.url), allow_redirects=False) as resp:
            ok = resp.status == check.expect_status
            return ok, str(resp.status), f"HTTP {resp.status} (expected {check.expect_status})"
    url = str(check.server).rstrip("/") + "/api/v1/query"
    async with session.get(url, params={"query": check.query}, allow_redirects=False) as resp:
        if resp.status != 200:
            return False, f"HTTP {resp.status}", f"Prometheus answered HTTP {resp.status}"
        ok, value = query_value(json.loads(await _read_bounded(resp)))
        return ok, value, f"{check.query} = {value}" + ("" if ok else " (must be 0)")


async def evaluate(
    session: aiohttp.ClientSession,
    check: HttpCheck | PrometheusCheck,
    phase: Literal["blocking", "outcome"],
    now: datetime,
) -> CheckResult:
    """Run one check, bounded by its timeout; a failure to call is a failing result."""
    try:
        async with asyncio.timeout(check.timeout_s):
            ok, value, message = await _call(session, check)
    except TimeoutError:
        ok, value, message = False, "timeout", f"no answer within {check.timeout_s:g} s"
    except RecursionError:
        ok, value, message = False, "error", "answer nested too deeply to read"
    except Exception as exc:  # any answer at all must be a result, never a crash
        ok, value, message = False, "error", f"{type(exc).__name__}: {str(exc)[:200]}"
    return CheckResult(
        name=check.name, kind=check.kind, phase=phase, ok=ok, value=value, message=message, at=now
    )


async def evaluate_all(
    session: aiohttp.ClientSession,
    checks: list[HttpCheck | PrometheusCheck],
    phase: Literal["blocking", "outcome"],
    now: datetime,
) -> list[CheckResult]:
    """Every check at once; results in the schedule's order."""
    return list(await asyncio.gather(*(evaluate(session, c, phase, now) for c in checks)))


def record(run: PracticeRun, results: list[CheckResult]) -> bool:
    """Keep in `run` each check's first result and every change of state (at most
    MAX_CHECKS_DURING); whether any was new."""
    last = {c.name: c.ok for c in run.checks_during}
    new = [c for c in results if last.get(c.name) is not c.ok]
    run.checks_during = (run.checks_during + new)[-MAX_CHECKS_DURING:]
    return bool(new)


def events(run: PracticeRun) -> list[str]:
    """The events a run in its state has to send: block, or start (and end)."""
    if run.outcome in (Outcome.BLOCKED, Outcome.CAPACITY_CHECK_FAILED):
        return ["block"]
    if run.outcome is Outcome.RUNNING:
        return ["start"]
    return ["start", "end"]


def event_body(event: str, run: PracticeRun, report_url: str) -> dict[str, Any]:
    """The JSON a webhook gets for `event` of `run` (docs/drills.md#practice-runs)."""
    report = f"/v1/drills/{run.drill_id}/report.md" if run.drill_id else None
    return {
        "event": event,
        "schedule": run.schedule,
        "run": run.id,
        "trigger": run.trigger,
        "regions": run.regions,
        "outcome": run.outcome.value,
        "message": run.message,
        "drill": run.drill_id,
        "report": (report_url + report) if report else None,
        "started_at": run.started_at.isoformat(),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "services": run.services,
        "checks": [c.model_dump(mode="json") for c in run.checks_before + run.checks_during],
    }


async def signing_key(store: Store, keyring: KeyProvider | None, reference: str) -> bytes | None:
    """The value of a webhook's key (`name#key`), or None (logged) when it cannot be
    read or its secret is not a webhook signing key (anymore): never sign with
    another secret's value."""
    if keyring is None:
        return None
    name, key = parse_reference(reference)
    try:
        found = await store_secrets.get(store, name)
        if found is None:
            return None
        if found[0].data_classes != [WEBHOOK_SIGNING]:
            log.warning("practice: secret %s is not a webhook signing key", name)
            return None
        values = await store_secrets.reveal(keyring, found[0], found[0].version)
    except Exception:  # a KEK not held here, a record that does not open
        log.warning("practice: webhook secret %s cannot be opened", name)
        return None
    value = (values or {}).get(key)
    return value.encode() if value is not None else None


def sign(key: bytes, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


async def deliver(
    session: aiohttp.ClientSession, webhook: Webhook, key: bytes | None, event: dict[str, Any]
) -> bool:
    """POST `event` to the webhook, signed; False (logged, counted) when it failed."""
    host = urlsplit(str(webhook.url)).hostname or "?"
    if key is None:
        log.warning(
            "practice webhook to %s not sent: its secret %s cannot be read",
            host,
            webhook.secret.split("#")[0],
        )
        metrics.practice_webhook_failures.add(1, {"reason": "secret"})
        return False
    body = json.dumps(event, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(key, body)}
    try:
        async with asyncio.timeout(webhook.timeout_s):
            async with session.post(
                str(webhook.url), data=body, headers=headers, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return True
                reason = f"HTTP {resp.status}"
    except TimeoutError:
        reason = "timeout"
    except Exception as exc:  # a webhook never stops the run
        reason = type(exc).__name__
    log.warning("practice webhook to %s failed (%s); the run goes on", host, reason)
    metrics.practice_webhook_failures.add(1, {"reason": "delivery"})
    return False
