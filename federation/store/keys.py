"""The key layout, in one place (documented in docs/keys.md). Relative to the prefix."""

from __future__ import annotations

REGIONS = "regions/"  # regions/{name} -> RegionRecord (admin-owned identity and cordon)
ALIVE = "alive/"  # alive/{name} -> {"since"} on the region's lease: present = reachable
HEARTBEATS = "heartbeats/"  # heartbeats/{name} -> HeartbeatRecord (outlives the lease)
TOKENS = "tokens/"  # tokens/{sha256 of secret} -> TokenRecord
BOOTSTRAP = "bootstrap"  # present once the first admin token has been made
# revoked-env-tokens/{sha256 of secret} -> {"revoked_at"}: a FEDERATION_ADMIN_TOKEN that
# was revoked, so a restart with the same value does not store it again.
REVOKED_ENV_TOKENS = "revoked-env-tokens/"
LEADER = "leader"  # identity of the controller leader, on its lease
POLICIES = "policies/"  # policies/{name} -> Policy (docs/residency.md)
GROUPS = "groups/"  # groups/{name} -> Group (admin-defined; built-in groups are never stored)
# Bumped in the same txn as every policy or group write, and compared by each of them:
# checks that read all policies and groups (references, cycles) stay true when applied.
RESIDENCY_FENCE = "residency-fence"


def region(name: str) -> str:
    return REGIONS + name


def alive(name: str) -> str:
    return ALIVE + name


def heartbeat(name: str) -> str:
    return HEARTBEATS + name


def token(digest: str) -> str:
    return TOKENS + digest


def revoked_env_token(digest: str) -> str:
    return REVOKED_ENV_TOKENS + digest


def policy(name: str) -> str:
    return POLICIES + name


def group(name: str) -> str:
    return GROUPS + name


SERVICES = "services/"  # services/{name} -> ServiceRecord (spec + generation), operator-owned
PLACEMENTS = "placements/"  # placements/{name} -> PlacementRecord, controller-owned
ASSIGNMENTS = "assignments/"  # assignments/{region}/{service} -> Assignment, controller-owned
# reports/{region}/{service} -> ServiceReport: what the region's agent last reported of
# the service, as counts; written only when they change. (A `reports/{region}` key,
# the whole report of servers before, is ignored and deleted by the region's next report.)
REPORTS = "reports/"
REBALANCE = "rebalance/"  # rebalance/{service} -> request; the controller consumes it


def service(name: str) -> str:
    return SERVICES + name


def placement(name: str) -> str:
    return PLACEMENTS + name


def assignments(region: str) -> str:
    return f"{ASSIGNMENTS}{region}/"


def assignment(region: str, service: str) -> str:
    return f"{ASSIGNMENTS}{region}/{service}"


def reports(region: str) -> str:
    return f"{REPORTS}{region}/"


def report(region: str, service: str) -> str:
    return f"{REPORTS}{region}/{service}"


def rebalance(name: str) -> str:
    return REBALANCE + name


DRILLS = "drills/"  # drills/{id} -> DrillRecord (live drills; plan mode stores nothing)
DRILL_LOCKS = "drill-locks/"  # drill-locks/{region} -> {"drill"} while a live drill holds it


def drill(drill_id: str) -> str:
    return DRILLS + drill_id


def drill_lock(region: str) -> str:
    return DRILL_LOCKS + region


DRILL_SCHEDULES = "drill-schedules/"  # drill-schedules/{name} -> DrillSchedule (operator-owned)
DRILL_RUNS = "drill-runs/"  # drill-runs/{schedule}/{run id} -> PracticeRun (leader-owned)
# drill-run-requests/{schedule} -> {"by", "at"}: an on-demand run the leader consumes.
DRILL_RUN_REQUESTS = "drill-run-requests/"


def drill_schedule(name: str) -> str:
    return DRILL_SCHEDULES + name


def drill_runs(schedule: str) -> str:
    return f"{DRILL_RUNS}{schedule}/"


def drill_run(schedule: str, run_id: str) -> str:
    return f"{DRILL_RUNS}{schedule}/{run_id}"


def drill_run_request(schedule: str) -> str:
    return DRILL_RUN_REQUESTS + schedule


# practice-success/{region} -> {"at", "schedule", "run"}: the region's last SUCCEEDED
# practice run, kept apart from the runs (which are pruned) for its metric.
PRACTICE_SUCCESS = "practice-success/"


def practice_success(region: str) -> str:
    return PRACTICE_SUCCESS + region


AUDIT = "audit/"  # audit/{seq:020d} -> AuditEntry, hash-chained (federation.store.audit)
AUDIT_HEAD = "audit-head"  # {"seq", "hash"} of the last entry; every audited txn compares it


SECRETS = "secrets/"  # secrets/{name} -> SecretRecord, sealed (federation.store.envelope)


def secret(name: str) -> str:
    return SECRETS + name
