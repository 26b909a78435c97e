#!/usr/bin/env bash
# Runs the whole test suite. Tests start their own redis-server on a free loopback port.
# Installs the dev set (requirements/dev.txt) on first use. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export STEPLINE_NEED_REDIS=1 STEPLINE_REQUIRE_REDIS=1
bash "$root/scripts/bootstrap.sh" dev
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
