"""Residency engine: the jurisdiction catalogue, policies and their evaluation.

Pure: no I/O, no clock of its own (callers pass `now`), no etcd. Everything here
is tested exhaustively without a server (tests/unit, hypothesis).
"""
