#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, make sure RabbitMQ and PostgreSQL answer
# (starting them where they are installed but stopped), lint, type-check, test.
# Fails loudly when a service cannot be had; no test is ever skipped for a missing service.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

step "installing into .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,bench]"
# The browser tests (tests/web/) drive Debian's Chromium; Playwright never downloads one.
[ -x /usr/bin/chromium ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

ensure_rabbitmq
ensure_postgres

step "ruff"
.venv/bin/ruff check .
step "mypy"
.venv/bin/mypy .

step "pytest (SQLite and PostgreSQL)"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
