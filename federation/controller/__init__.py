"""The controller: the reconcile loop over the state in etcd, leader-only.

Every server replica runs `Controller.run` (started by the server, federation.api.app,
beside the replica's `LeaderElection`); only the replica that holds the leader key
acts. Its writes carry `election.fence()` so a deposed leader's writes fail in etcd
rather than land. Modules: `runner` (the loop and its passes), `writes` (batched,
fenced, audited transactions), `summary` (each pass as one sentence), `ledger` (what
a pass keeps of every service), `observe` (telemetry and the residency check).
The controller imports neither the drill runner nor the agent: they are siblings.
"""

from federation.controller.runner import Controller

__all__ = ["Controller"]
