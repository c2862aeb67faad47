# Helpers shared by scripts/test.sh and scripts/run.sh: make sure a service answers.
# shellcheck shell=bash

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

port_open() {  # host port
  python3 - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

wait_port() {  # host port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}

ensure_rabbitmq() {
  step "RabbitMQ on 127.0.0.1:5672"
  if ! port_open 127.0.0.1 5672; then
    command -v rabbitmq-server >/dev/null \
      || die "RabbitMQ does not answer on 127.0.0.1:5672 and is not installed (apt-get install rabbitmq-server)"
    echo "not answering; starting it (rabbitmq-server -detached)"
    rabbitmq-server -detached || true
    wait_port 127.0.0.1 5672 90 || die "RabbitMQ did not come up within 90 s; see /var/log/rabbitmq"
  fi
  command -v rabbitmqctl >/dev/null || die "rabbitmqctl is needed (the tests make a vhost per test)"
  rabbitmqctl -q await_startup >/dev/null 2>&1 || die "RabbitMQ answers on 5672 but rabbitmqctl cannot reach the node"
  echo "ok"
}

ensure_postgres() {
  step "PostgreSQL on 127.0.0.1:5432"
  if ! port_open 127.0.0.1 5432; then
    command -v pg_ctlcluster >/dev/null \
      || die "PostgreSQL does not answer on 127.0.0.1:5432 and is not installed (apt-get install postgresql)"
    echo "not answering; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    wait_port 127.0.0.1 5432 60 || die "PostgreSQL did not come up within 60 s"
  fi
  echo "ok"
}
