"""The key layout, in one place (documented in docs/keys.md). Relative to the prefix."""

from __future__ import annotations

REGIONS = "regions/"  # regions/{name} -> RegionRecord (admin-owned identity and cordon)
ALIVE = "alive/"  # alive/{name} -> {"since"} on the region's lease: present = reachable
HEARTBEATS = "heartbeats/"  # heartbeats/{name} -> HeartbeatRecord (outlives the lease)
TOKENS = "tokens/"  # tokens/{sha256 of secret} -> TokenRecord
BOOTSTRAP = "bootstrap"  # present once the first admin token has been made
LEADER = "leader"  # identity of the controller leader, on its lease


def region(name: str) -> str:
    return REGIONS + name


def alive(name: str) -> str:
    return ALIVE + name


def heartbeat(name: str) -> str:
    return HEARTBEATS + name


def token(digest: str) -> str:
    return TOKENS + digest
