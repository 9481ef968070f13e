"""Failover drills: the live drill runner and the report.

The what-if plan is pure and lives in `federation.planning.what_if`; `report` does no
I/O. `runner` runs on the controller leader only: it cordons the target regions, lets
the controller evacuate them, measures, restores, and keeps everything it learns in
the drill's etcd record.
"""
