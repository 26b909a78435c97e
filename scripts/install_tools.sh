#!/usr/bin/env bash
# Installs the pinned code-generation tools into .cache/tools (never system-wide):
#   buf (npm, scripts/tools/package-lock.json)   .cache/tools/node_modules/.bin/buf
#   protoc-gen-go, protoc-gen-go-grpc (go install)   .cache/tools/bin/
#   grpcurl, grpc-health-probe (go install)   .cache/tools/bin/ (tests/test_grpc_tools.py
#                                  runs them against a live server, as an operator would)
#   protoc-gen-openapiv2 (grpc-gateway, go install)  .cache/tools/bin/
#   protoc-gen-es                  client/typescript/node_modules/.bin/ (a devDependency
#                                  pinned by client/typescript/package-lock.json, so the
#                                  generator and the runtime it targets are the same version)
# Python's generator (grpcio-tools, mypy-protobuf) is pinned in pyproject.toml's dev extra.
# Safe to run again: each tool is reinstalled only when its pinned version changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.cache/tools"

PROTOC_GEN_GO_VERSION=v1.36.11
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
GRPCURL_VERSION=v1.9.4
GRPC_HEALTH_PROBE_VERSION=v0.4.63
PROTOC_GEN_OPENAPIV2_VERSION=v2.34.0

mkdir -p "$tools/bin"

# stamp NAME VERSION: true when NAME was installed at VERSION by an earlier run.
stamp() { [ -f "$tools/$1.version" ] && [ "$(cat "$tools/$1.version")" = "$2" ]; }

# buf, exactly as scripts/tools/package-lock.json pins it (and its platform binary package).
buf_lock="$(cat "$root/scripts/tools/package.json" "$root/scripts/tools/package-lock.json" | sha256sum | cut -d' ' -f1)"
if ! stamp buf "$buf_lock" || [ ! -x "$tools/node_modules/.bin/buf" ]; then
  cp "$root/scripts/tools/package.json" "$root/scripts/tools/package-lock.json" "$tools/"
  npm ci --silent --no-audit --no-fund --prefix "$tools" >/dev/null
  echo "$buf_lock" >"$tools/buf.version"
fi

if ! stamp protoc-gen-go "$PROTOC_GEN_GO_VERSION" || [ ! -x "$tools/bin/protoc-gen-go" ]; then
  GOBIN="$tools/bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
  echo "$PROTOC_GEN_GO_VERSION" >"$tools/protoc-gen-go.version"
fi

if ! stamp protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION" || [ ! -x "$tools/bin/protoc-gen-go-grpc" ]; then
  GOBIN="$tools/bin" go install \
    "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
  echo "$PROTOC_GEN_GO_GRPC_VERSION" >"$tools/protoc-gen-go-grpc.version"
fi

if ! stamp grpcurl "$GRPCURL_VERSION" || [ ! -x "$tools/bin/grpcurl" ]; then
  GOBIN="$tools/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  echo "$GRPCURL_VERSION" >"$tools/grpcurl.version"
fi

if ! stamp grpc-health-probe "$GRPC_HEALTH_PROBE_VERSION" || [ ! -x "$tools/bin/grpc-health-probe" ]; then
  GOBIN="$tools/bin" go install \
    "github.com/grpc-ecosystem/grpc-health-probe@$GRPC_HEALTH_PROBE_VERSION"
  echo "$GRPC_HEALTH_PROBE_VERSION" >"$tools/grpc-health-probe.version"
fi

if ! stamp protoc-gen-openapiv2 "$PROTOC_GEN_OPENAPIV2_VERSION" || [ ! -x "$tools/bin/protoc-gen-openapiv2" ]; then
  GOBIN="$tools/bin" go install \
    "github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$PROTOC_GEN_OPENAPIV2_VERSION"
  echo "$PROTOC_GEN_OPENAPIV2_VERSION" >"$tools/protoc-gen-openapiv2.version"
fi

# The TypeScript package's dependencies, protoc-gen-es and tsc among them, exactly as locked.
ts="$root/client/typescript"
if [ ! -f "$ts/node_modules/.package-lock.json" ] || [ "$ts/package-lock.json" -nt "$ts/node_modules/.package-lock.json" ]; then
  npm ci --silent --no-audit --no-fund --prefix "$ts" >/dev/null
fi
