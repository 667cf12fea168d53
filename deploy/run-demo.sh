#!/usr/bin/env bash
# The demo fleet: two echo backends (blue 127.0.0.1:9101, green 127.0.0.1:9102), one controller
# watching deploy/examples/dynamic/ (gRPC 127.0.0.1:7070), two proxies (entry point web on
# 127.0.0.1:8081 and 127.0.0.1:8082, admin on 127.0.0.1:9081 and 127.0.0.1:9082).
# Builds first (unless SWITCHYARD_BIN_DIR names a directory of built binaries), waits until both
# proxies serve, prints what to try. Ctrl-C stops everything this
# script started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo curl; do
  command -v "$tool" >/dev/null || { echo "run-demo: \`$tool\` is required" >&2; exit 1; }
done

# The fixed demo ports must be free (bash's /dev/tcp connects when something listens).
for port in 7070 8081 8082 9081 9082 9101 9102; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-demo: 127.0.0.1:$port is already in use (another demo running?)" >&2
    exit 1
  fi
done

# SWITCHYARD_BIN_DIR (as in the tests) uses binaries built elsewhere, e.g. target/release.
if [ -n "${SWITCHYARD_BIN_DIR:-}" ]; then
  bin=$(cd "$SWITCHYARD_BIN_DIR" && pwd)
else
  cargo build --workspace --bins
  bin="$PWD/target/debug"
fi
for b in switchyard-controller switchyard-proxy switchyard-echo; do
  [ -x "$bin/$b" ] || { echo "run-demo: $bin/$b is missing: run \`cargo build --workspace --bins\`" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-demo.XXXXXX")
pids=()
names=()
keep_logs=0

cleanup() {
  local status=$?
  trap - INT TERM EXIT
  echo
  echo "stopping the demo fleet…"
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Give them 5 s to drain, then SIGKILL whatever is left (still only our own PIDs).
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$keep_logs" = 1 ]; then
    echo "logs kept in $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name, command…
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

# Fails with the logs when a process we started has exited.
check_alive() {
  local i
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run-demo: ${names[$i]} exited; its log ($work/${names[$i]}.log):" >&2
      tail -n 20 "$work/${names[$i]}.log" >&2
      keep_logs=1
      exit 1
    fi
  done
}

start backend-blue "$bin/switchyard-echo" --listen 127.0.0.1:9101 --name blue
start backend-green "$bin/switchyard-echo" --listen 127.0.0.1:9102 --name green
start controller "$bin/switchyard-controller" run --config deploy/examples/static.yml
controller_pid=${pids[-1]}
for n in 1 2; do
  start "proxy-$n" "$bin/switchyard-proxy" run --controller http://127.0.0.1:7070 \
    --node-id "demo-$n" --state-dir "$work/state-$n" --admin "127.0.0.1:908$n" \
    --entrypoint "web=127.0.0.1:808$n"
done

echo "waiting for both proxies to serve…"
for n in 1 2; do
  code=000
  for _ in $(seq 1 150); do
    check_alive
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: blue.localhost' "http://127.0.0.1:808$n/" || true)
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  if [ "$code" != 200 ]; then
    echo "run-demo: proxy $n did not serve within 30 s (last status $code); logs:" >&2
    tail -n 20 "$work"/*.log >&2
    keep_logs=1
    exit 1
  fi
done

cat <<TXT

Switchyard demo fleet is up (logs in $work).

Try:
  curl -i -H 'Host: blue.localhost'  http://127.0.0.1:8081/        # X-Backend: blue
  curl -i -H 'Host: green.localhost' http://127.0.0.1:8082/        # X-Backend: green
  curl    -H 'Host: api.localhost'   http://127.0.0.1:8081/api/users  # stripPrefix: path /users; 3:1 blue:green
  curl -i                            http://127.0.0.1:8082/green/x # PathPrefix on any host
  curl -i -H 'Host: old.localhost'   http://127.0.0.1:8081/        # 301 to https://
  curl -i -H 'Host: nowhere.localhost' http://127.0.0.1:8081/      # 404: no router matches

Status:
  $bin/switchyard-controller status --controller http://127.0.0.1:7070 [--json]
  $bin/switchyard-proxy status --admin 127.0.0.1:9081 [--json]
  $bin/switchyard-proxy status --admin 127.0.0.1:9082 [--json]

Edit deploy/examples/dynamic/*.yml: both proxies follow. kill -9 $controller_pid (the controller):
both proxies keep serving. Ctrl-C stops everything.
TXT

# Stay up until Ctrl-C, saying so (once) when a process exits — e.g. the controller you killed.
reported=()
while true; do
  for i in "${!pids[@]}"; do
    if [ -z "${reported[$i]:-}" ] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "(${names[$i]} exited; the others keep running)"
      reported[i]=1
    fi
  done
  sleep 1
done
