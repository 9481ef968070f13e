"""Failover drills: the what-if plan (pure), the live drill runner, the report.

`plan` and `report` do no I/O. `runner` runs on the controller leader only: it
cordons the target regions, lets the controller evacuate them, measures, restores,
and keeps everything it learns in the drill's etcd record.
"""
