#!/usr/bin/env bash
# The demo fleet: two echo backends, one controller watching deploy/examples/dynamic/, two proxies.
# Builds first. Ctrl-C stops everything this script started (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

cargo build --workspace --bins
bin="$root/target/debug"

work=$(mktemp -d -t switchyard-demo.XXXXXX)
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping the demo fleet…"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup INT TERM EXIT

start() { # name, command…
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}

sed "s#__DYNAMIC_DIR__#$root/deploy/examples/dynamic#" deploy/examples/static.yml >"$work/static.yml"

start backend-blue "$bin/switchyard-echo" --listen 127.0.0.1:9101 --name blue
start backend-green "$bin/switchyard-echo" --listen 127.0.0.1:9102 --name green
start controller "$bin/switchyard-controller" run --config "$work/static.yml"
for n in 1 2; do
  start "proxy-$n" "$bin/switchyard-proxy" run --controller http://127.0.0.1:7070 \
    --node-id "demo-$n" --state-dir "$work/state-$n" --admin "127.0.0.1:908$n" \
    --entrypoint "web=127.0.0.1:808$n"
done

echo "waiting for both proxies to serve…"
for n in 1 2; do
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: blue.localhost' "http://127.0.0.1:808$n/" || true)
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  if [ "$code" != 200 ]; then
    echo "proxy $n did not come up; logs in $work:" >&2
    tail -n 20 "$work"/*.log >&2
    exit 1
  fi
done

cat <<TXT

Switchyard demo fleet is up (logs: $work).

  curl -H 'Host: blue.localhost'  http://127.0.0.1:8081/
  curl -H 'Host: green.localhost' http://127.0.0.1:8082/
  curl -H 'Host: api.localhost'   http://127.0.0.1:8081/api/users   # stripPrefix, 3:1 weighted
  curl -i -H 'Host: old.localhost' http://127.0.0.1:8082/           # redirectScheme → https
  curl -i -H 'Host: nowhere'       http://127.0.0.1:8081/           # 404

  $bin/switchyard-controller status --controller http://127.0.0.1:7070
  $bin/switchyard-proxy status --admin 127.0.0.1:9081 --json

Edit deploy/examples/dynamic/*.yml and both proxies follow. Try: kill -9 the controller
(pid ${pids[2]}) — the proxies keep serving. Ctrl-C stops everything.
TXT

wait
