"""Child processes: a local etcd (one member or a cluster) and its certificates, the dev
federation of `up` and the supervision that keeps its children running, and the one
place that builds the `federation serve` and `federation agent` command lines that
`up`, the tests and the benchmarks start.

This layer supervises processes; it never talks to etcd's API (that is `store/`).
"""
