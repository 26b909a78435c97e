#!/usr/bin/env bash
# Starts `stepline serve` with the example workflows on the in-memory store (127.0.0.1:50051).
# Extra arguments go to `stepline serve`, e.g. --redis-url redis://127.0.0.1:6379/0
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec stepline serve "$@"
