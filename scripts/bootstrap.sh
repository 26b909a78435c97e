#!/usr/bin/env bash
# Prepares this checkout: a virtualenv in .venv installed from the lock (requirements/*.txt,
# every package pinned with hashes), and redis-server when STEPLINE_NEED_REDIS=1.
#
#   bash scripts/bootstrap.sh          # what `stepline serve` needs (runtime.txt)
#   bash scripts/bootstrap.sh dev      # plus tests, linters and generators (dev.txt)
#
# Safe to run again: it installs only when the lock changed. Sourcing it also works and
# leaves the caller's shell options alone: it runs in a child bash, then puts .venv/bin on
# PATH.
if [ -n "${BASH_SOURCE[0]:-}" ] && [ "${BASH_SOURCE[0]}" != "$0" ]; then
  bash "${BASH_SOURCE[0]}" "$@" && export PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin:$PATH"
  return
fi
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
set_name="${1:-runtime}"
case "$set_name" in
  runtime | dev) ;;
  *) echo "usage: bootstrap.sh [runtime|dev]" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
venv="$root/.venv"
uv_home="$root/.cache/uv"
export UV_PYTHON_DOWNLOADS=never

say() { printf '==> %s\n' "$*" >&2; }
digest() { cat "$@" | sha256sum | cut -d' ' -f1; }

# 1. uv, the installer, pinned with hashes and bootstrapped by pip into .cache/uv.
uv_want="$(digest "$root/requirements/uv.txt")"
if [ ! -x "$uv_home/bin/uv" ] || [ "$(cat "$uv_home/.lock-digest" 2>/dev/null)" != "$uv_want" ]; then
  say "installing the installer (uv, pinned in requirements/uv.txt)"
  "$python" -m venv "$uv_home"
  "$uv_home/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
    -r "$root/requirements/uv.txt"
  echo "$uv_want" >"$uv_home/.lock-digest"
fi
uv="$uv_home/bin/uv"

# 2. The virtualenv, from the lock: runtime.txt (+ dev.txt for the dev set), then Stepline
#    itself as an editable install built by the pinned backend (build.txt).
if [ ! -x "$venv/bin/python" ]; then
  say "creating .venv"
  "$uv" venv --quiet --python "$python" "$venv"
fi
lock="$root/requirements/$set_name.txt"
want="$(digest "$lock" "$root/requirements/build.txt" "$root/pyproject.toml")"
stamp="$venv/.stepline-$set_name"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing the $set_name set into .venv from requirements/$set_name.txt"
  "$uv" pip install --python "$venv/bin/python" --require-hashes \
    -r "$lock" -r "$root/requirements/build.txt"
  say "installing stepline (editable) into .venv"
  "$uv" pip install --quiet --python "$venv/bin/python" --no-deps --no-build-isolation -e "$root"
  echo "$want" >"$stamp"
fi

# 3. redis-server (Debian package) for the tests, when missing and we may install it.
if [ "${STEPLINE_NEED_REDIS:-0}" = "1" ] && ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is not installed; install it (e.g. 'sudo apt-get install redis-server')" >&2
    exit 1
  fi
fi
