#!/usr/bin/env bash
# Runs the whole test suite: unit tests, then integration tests against a real Ray, a real Docker
# engine with runsc and the sandbox image, through HTTP. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
