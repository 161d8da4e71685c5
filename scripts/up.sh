#!/usr/bin/env bash
# Brings the whole service up on the embedded defaults (SQLite, a local Ray head) on port 8080.
# Ctrl-C stops Serve and Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m serve_app
