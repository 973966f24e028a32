#!/usr/bin/env bash
# One-command local stack on this machine: redis-server, the workers, the router replicas, nginx in
# front of them on :8080 and Prometheus on :9090, as listed in a stack file (default
# deploy/local/stack.toml: 2 SmolLM2 workers, 1 router).
#
#   deploy/local/stack.sh up [--stack FILE]   install what is missing, start it all, wait until it serves
#   deploy/local/stack.sh status              what runs, where, and whether it answers
#   deploy/local/stack.sh down                stop it all, by the PIDs it recorded
#
# Environment: STACK_FILE (the stack file), RUN_DIR (PIDs, logs, configs and data; default run/),
# SKIP_INSTALL=1 to skip the install step, PYTHON (python3). The work is done by
# deploy/local/stack.py; see its docstring for the start and stop order.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}

case "${1:-}" in
  up)
    [ "${SKIP_INSTALL:-0}" = 1 ] || bash deploy/install.sh
    exec "$PY" -m deploy.local.stack "$@"
    ;;
  status | down) exec "$PY" -m deploy.local.stack "$@" ;;
  *) echo "usage: $0 up [--stack FILE] | status | down" >&2; exit 2 ;;
esac
