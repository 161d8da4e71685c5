#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh: Docker + gVisor, the venv, the sandbox image;
# then Redis, iproute2 and PostgreSQL's server binaries), then runs the whole suite (tests/) in one
# pytest run, file by file as pytest collects them: the unit tests and, among them, the integration
# tests (marked `integration`: real Docker/runsc sandboxes, Ray, the API over HTTP, PostgreSQL,
# Redis; most of the time). Extra arguments go to pytest. The unit tests alone, in seconds and with
# nothing but the venv:  .venv/bin/python -m pytest -m "not integration"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The long-poll tests start their own Redis on loopback.
command -v redis-server >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

# The egress tests make a "public" test host in a network namespace.
command -v ip >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }

# The tests start their own PostgreSQL on loopback: they need its server binaries (no cluster).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "[test] installing PostgreSQL server binaries"
  mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold postgresql >/dev/null
fi
exec .venv/bin/python -m pytest "$@"
