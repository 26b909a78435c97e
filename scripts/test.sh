#!/usr/bin/env bash
# Runs the whole test suite. Tests start their own redis-server on a free loopback port.
# Extra arguments go to pytest.
set -euo pipefail
export STEPLINE_NEED_REDIS=1 STEPLINE_REQUIRE_REDIS=1
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python -m pytest "$@"
