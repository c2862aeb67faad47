#!/usr/bin/env bash
# Run the whole mesh on this machine: install into .venv, make sure RabbitMQ answers, then
# `workmesh run` (every role in one process, SQLite in ./workmesh.db unless
# WORKMESH_DATABASE_URL says otherwise; the schema is migrated first). Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

step "installing into .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet -e .
ensure_rabbitmq
step "workmesh run (http://${WORKMESH_HTTP_HOST:-127.0.0.1}:${WORKMESH_HTTP_PORT:-8080})"
exec .venv/bin/workmesh run "$@"
