#!/usr/bin/env bash
# The production topology as local processes on loopback: a 3-member etcd cluster,
# 2 federation servers (ports 8080 and 8081, one of them the controller leader) and the
# 4 demo region agents, each agent pointed at both servers. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/federation up --etcd-members=3 --servers=2 --data-dir=.federation-cluster "$@"
