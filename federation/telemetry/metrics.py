"""The metrics: what `/metrics` shows. Names are Prometheus names once exported (the
exporter adds `_total` to counters and the unit to the rest).

Counters and histograms are recorded where things happen. The gauges (regions by
state, services by phase, residency rejections, the reconcile queue) are observed
from the last controller pass: `observe_pass` replaces that snapshot after each pass
of the leader, `clear_pass` drops it when this replica stops leading (a standby must
not report a stale world).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Observation

from federation.telemetry.setup import meter

_SECONDS_FAST = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
_SECONDS_SLOW = [0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600]


@dataclass
class PassSnapshot:
    """What the last controller pass saw, for the gauges."""

    regions_by_state: dict[str, int] = field(default_factory=dict)
    services_by_phase: dict[str, int] = field(default_factory=dict)
    rejections_by_reason: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0


_last: PassSnapshot | None = None


@dataclass
class EtcdSnapshot:
    """etcd's history and alarms as this process last saw them."""

    revision: int = 0
    compacted: int = 0
    alarms: frozenset[str] = frozenset()


_etcd = EtcdSnapshot()


def observe_history(*, revision: int, compacted: int) -> None:
    """The store's revision and the revision its history is compacted to."""
    _etcd.revision, _etcd.compacted = revision, compacted


def observe_etcd_alarms(alarms: frozenset[str]) -> None:
    _etcd.alarms = alarms


def observe_pass(snapshot: PassSnapshot) -> None:
    global _last
    _last = snapshot


def clear_pass() -> None:
    global _last
    _last = None


def _gauge(values: Mapping[str, int], label: str) -> Iterable[Observation]:
    return [Observation(n, {label: key}) for key, n in sorted(values.items())]


def _regions(options: CallbackOptions) -> Iterable[Observation]:
    return _gauge(_last.regions_by_state, "state") if _last else []


def _services(options: CallbackOptions) -> Iterable[Observation]:
    return _gauge(_last.services_by_phase, "phase") if _last else []


def _rejections(options: CallbackOptions) -> Iterable[Observation]:
    return _gauge(_last.rejections_by_reason, "reason") if _last else []


def _queue(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(_last.queue_depth)] if _last else []


def _compacted(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(_etcd.compacted)] if _etcd.revision else []


def _history(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(_etcd.revision - _etcd.compacted)] if _etcd.revision else []


def _alarms(options: CallbackOptions) -> Iterable[Observation]:
    # Always NOSPACE (0 or 1), so an alert rule has a series to compare.
    raised = _etcd.alarms | {"NOSPACE"}
    return [Observation(int(name in _etcd.alarms), {"alarm": name}) for name in sorted(raised)]


def reason_kind(reason: str) -> str:
    """A residency rejection's reason sentence, as a small fixed set of label values."""
    if "expired at" in reason:
        return "exemption_expired"
    if "is denied by deny" in reason:
        return "deny"
    if "is not in allow" in reason:
        return "not_in_allow"
    if "cannot be evaluated" in reason:
        return "policy_error"
    if "data class" in reason:
        return "unknown_data_class"
    if "country" in reason:
        return "unknown_country"
    return "other"


_meter = meter()

regions = _meter.create_observable_gauge(
    "federation_regions", [_regions], description="Regions by state (last controller pass)."
)
services = _meter.create_observable_gauge(
    "federation_services", [_services], description="Services by phase (last controller pass)."
)
residency_rejections = _meter.create_observable_gauge(
    "federation_residency_rejections",
    [_rejections],
    description="Rejected (service, region) residency verdicts in the last pass, by reason.",
)
reconcile_queue_depth = _meter.create_observable_gauge(
    "federation_reconcile_queue_depth",
    [_queue],
    description="Services the last controller pass found changed (to be written).",
)
scheduling_duration = _meter.create_histogram(
    "federation_scheduling_duration",
    unit="s",
    description="Time to plan and place every service in one controller pass.",
    explicit_bucket_boundaries_advisory=_SECONDS_FAST,
)
reconcile_duration = _meter.create_histogram(
    "federation_reconcile_duration",
    unit="s",
    description="One controller pass (kind: full or incremental): plan and write.",
    explicit_bucket_boundaries_advisory=_SECONDS_FAST,
)
reconcile_passes = _meter.create_counter(
    "federation_reconcile_passes",
    description="Controller passes, by outcome and kind (full: every service; "
    "incremental: the ones that changed).",
)
failover_duration = _meter.create_histogram(
    "federation_failover_duration",
    unit="s",
    description="From a region first seen unreachable to none of its services placed there.",
    explicit_bucket_boundaries_advisory=_SECONDS_SLOW,
)
residency_violations = _meter.create_counter(
    "federation_residency_violations",
    description="Plans that assigned a replica to a region residency rejects (must stay 0; "
    "such a plan is never written).",
)
drill_recovery = _meter.create_histogram(
    "federation_drill_recovery",
    unit="s",
    description="Per-service time to recover in live drills.",
    explicit_bucket_boundaries_advisory=_SECONDS_SLOW,
)
region_capacity_clamped = _meter.create_counter(
    "federation_region_capacity_clamped",
    description="Heartbeats whose capacity was above the region's ceiling and was clamped "
    "to it, by region (a region claiming more than an admin allows).",
)
etcd_duration = _meter.create_histogram(
    "federation_etcd_request_duration",
    unit="s",
    description="etcd unary calls (with their retries), by operation.",
    explicit_bucket_boundaries_advisory=_SECONDS_FAST,
)
etcd_errors = _meter.create_counter(
    "federation_etcd_errors", description="etcd calls that failed, by operation and kind."
)
audit_head_regressions = _meter.create_counter(
    "federation_audit_head_regressions",
    description="Times this server saw the audit head go back (a lower seq than one it saw, "
    "or the same seq with another hash): the log was cut, wiped or restored. Must stay 0.",
)
auth_failures = _meter.create_counter(
    "federation_auth_failures",
    description="Failed bearer-token authentications, by outcome: unknown (etcd holds no "
    "such token), remembered (refused from the short cache of unknown tokens, no etcd "
    "read), expired, limited (429: the client address failed too often).",
)
watches_closed = _meter.create_counter(
    "federation_assignment_watches_closed",
    description="Assignment watches the server ended, by reason: token (revoked, rotated "
    "away, expired or no longer allowed), region (deleted).",
)
etcd_compacted_revision = _meter.create_observable_gauge(
    "federation_etcd_compacted_revision",
    [_compacted],
    description="The revision etcd's history is compacted to (older revisions are gone).",
)
etcd_history = _meter.create_observable_gauge(
    "federation_etcd_history_revisions",
    [_history],
    description="Revisions of history etcd keeps: its revision minus the compacted one.",
)
etcd_alarms = _meter.create_observable_gauge(
    "federation_etcd_alarm",
    [_alarms],
    description="1 while etcd has raised the alarm (NOSPACE: writes are refused until the "
    "history is compacted, the members defragmented and the alarm disarmed).",
)
etcd_nospace_refusals = _meter.create_counter(
    "federation_etcd_nospace_refusals",
    description="etcd writes refused because etcd's NOSPACE alarm is raised, by operation.",
)
secret_deliveries = _meter.create_counter(
    "federation_secret_deliveries",
    description="Assignments sent to their region with secrets, by outcome: delivered, or "
    "withheld (residency, a KEK not held, a secret gone). Never a value or a name.",
)
residency_violations.add(0)  # shown as 0 from the start, not only after the first
audit_head_regressions.add(0)

# Practice drills: when each region last had a SUCCEEDED practice run, as the leader's
# scheduler last read its history (a standby shows none: it would be stale).
_practice_success: dict[str, float] = {}
_practice_now: list[float] = [0.0]


def observe_practice(last_success: Mapping[str, float], now: float) -> None:
    """Per region, the POSIX time of its last successful practice run, and now (the
    scheduler's clock)."""
    _practice_success.clear()
    _practice_success.update(last_success)
    _practice_now[0] = now


def clear_practice() -> None:
    _practice_success.clear()


def _since_practice(options: CallbackOptions) -> Iterable[Observation]:
    now = _practice_now[0]
    return [
        Observation(max(0.0, now - at), {"region": region})
        for region, at in sorted(_practice_success.items())
    ]


practice_runs = _meter.create_counter(
    "federation_practice_runs",
    description="Practice drill runs ended, by outcome (SUCCEEDED, INTERRUPTED, FAILED, "
    "CAPACITY_CHECK_FAILED, BLOCKED).",
)
practice_since_success = _meter.create_observable_gauge(
    "federation_practice_since_success",
    [_since_practice],
    unit="s",
    description="Seconds since the region's last SUCCEEDED practice drill run (alert on "
    "> 14 days).",
)
practice_webhook_failures = _meter.create_counter(
    "federation_practice_webhook_failures",
    description="Practice drill notifications that could not be delivered (the run goes on).",
)
practice_errors = _meter.create_counter(
    "federation_practice_errors",
    description="Practice scheduler steps (one schedule's work in a tick) that failed "
    "unexpectedly; the other schedules go on.",
)
