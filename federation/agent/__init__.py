"""The region master: heartbeats for its region and (with drivers) runs its assignments.

Speaks only HTTP(S) to the federation server; a region never holds etcd credentials.
"""
