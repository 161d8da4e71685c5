#!/usr/bin/env bash
# Runs the whole test suite: unit tests, then integration tests against a real Ray, a real Docker
# engine with runsc and the sandbox image, through HTTP. Extra arguments go to pytest.
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
