"""The controller: leader-elected reconcile loops over the state in etcd.

Every server replica runs `Controller.run`; only the replica that holds the
leader key acts. Its writes carry `election.fence()` so a deposed leader's writes
fail in etcd rather than land.
"""

from federation.controller.runner import Controller

__all__ = ["Controller"]
