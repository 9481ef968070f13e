"""Residency engine: policies, groups and their evaluation against regions' countries.

Pure: no I/O, no clock of its own (callers pass `now`), no etcd. The jurisdiction
catalogue it evaluates against is data and lives below it, in
`federation.model.jurisdictions`. Everything here is tested exhaustively without a
server (tests/unit, hypothesis).
"""
