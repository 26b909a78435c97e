#!/usr/bin/env bash
# Prepares a fresh machine: a virtualenv in .venv with Stepline and its dev tools, and
# redis-server (Debian package) when it is missing and we may install it.
# Sourced by scripts/serve.sh and scripts/test.sh; safe to run again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
stamp="$venv/.stepline-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[dev,fast]"
  touch "$stamp"
fi

if [ "${STEPLINE_NEED_REDIS:-0}" = "1" ] && ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is not installed; install it (e.g. 'sudo apt-get install redis-server')" >&2
    exit 1
  fi
fi
export PATH="$venv/bin:$PATH"
