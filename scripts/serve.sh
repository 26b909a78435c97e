#!/usr/bin/env bash
# Starts `stepline serve` with the example workflows on the in-memory store: gRPC on
# 127.0.0.1:50051, the HTTP/JSON API and the console on http://127.0.0.1:8080/
# (STEPLINE_HTTP_PORT to move it). Installs only what serving needs
# (requirements/runtime.txt) on first use.
# Extra arguments go to `stepline serve`, e.g. --redis-url redis://127.0.0.1:6379/0
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh" runtime
exec "$root/.venv/bin/stepline" serve --http-port "${STEPLINE_HTTP_PORT:-8080}" --example-runs "$@"
