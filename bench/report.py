#!/usr/bin/env python3
"""Turns bench/run.sh's raw results (TSV files in one directory) into markdown tables.

usage: report.py RESULTS_DIR CONNS DURATION SCALE_DURATION ROUNDS SCALE_ROUNDS [RATE]
"""
import csv
import os
import statistics
import sys

res, conns, dur, sdur, rounds, srounds = sys.argv[1:7]
rate = int(sys.argv[7]) if len(sys.argv) > 7 else None
CLK = os.sysconf("SC_CLK_TCK")


def rows(name):
    path = os.path.join(res, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def med(xs):
    return statistics.median(xs) if xs else float("nan")


runs = rows("runs.tsv")
mem = {(r["section"], r["target"]): r for r in rows("memory.tsv")}


def agg(section, target, scen):
    rs = [r for r in runs if r["section"] == section and r["target"] == target and r["scenario"] == scen]
    if not rs:
        return None
    rps = [int(r["requests"]) / float(r["seconds"]) for r in rs]
    cpu = [int(r["proxy_ticks"]) / CLK * 1e6 / max(1, int(r["requests"])) for r in rs]
    sys_cpu = [int(r.get("proxy_sys_ticks") or 0) / CLK * 1e6 / max(1, int(r["requests"])) for r in rs]
    return dict(
        rps=med(rps), lo=min(rps), hi=max(rps),
        p50=med([int(r["p50_us"]) / 1000 for r in rs]),
        p99=med([int(r["p99_us"]) / 1000 for r in rs]),
        cpu=None if target == "direct" else med(cpu),
        sys=None if target == "direct" else med(sys_cpu),
        errors=sum(int(r["errors"]) for r in rs),
        non2xx=sum(int(r["non2xx"]) for r in rs),
        n=len(rs),
    )


out = []
p = out.append
with open(os.path.join(res, "info.txt")) as f:
    info = f.read().strip().splitlines()

# --- throughput -------------------------------------------------------------------------------
LABEL = {
    "small": "small (2 B), keep-alive",
    "16k": "16 KiB, keep-alive",
    "close": "small, `Connection: close`",
    "h2c": "HTTP/2 h2c, 16 conns × 10 streams",
    "rate": f"small, keep-alive, {rate:,} req/s offered" if rate else "small, keep-alive, fixed rate",
}
if any(r["section"] == "tp" for r in runs):
    p(f"### 1. Throughput and latency\n")
    p(f"wrk -t1 -c{conns} -d{dur}s (h2load -t1 -c16 -m10 -D {dur} for h2c; its p50 column is the mean "
      f"latency, it reports no percentiles). Median of {rounds} interleaved rounds; in each round "
      f"`direct` and Traefik go first and nginx, HAProxy and Switchyard take turns right after them "
      f"(a run after a light one reads faster on this machine). Proxy on one core, "
      f"wrk + origin on the other. × nginx: ratio of medians in this run. CPU µs/req: the proxy's "
      f"utime+stime (all threads, /proc/PID/stat) ÷ requests; kernel: its stime part (the "
      f"socket work every proxy does: on loopback a write also runs the peer's receive path). "
      f"The fixed-rate rows (`h2load --h1 -c{conns} --rps`, each connection sending on its own "
      f"clock for the same count of requests; percentiles from its per-request log) offer every "
      f"proxy the same load, below what each takes: their latency and CPU per request compare "
      f"without the closed loop's tie to throughput (Traefik's ceiling is below that rate). "
      f"`nginx-fwd`: the same nginx also sending the client's Host and Traefik's six forwarding "
      f"headers upstream, as Switchyard and Traefik do (plain nginx and HAProxy send none), "
      f"measured right after nginx in the keep-alive, close and fixed-rate scenarios; every "
      f"× nginx is against plain nginx, the issue's reference.\n")
    p("| target | scenario | req/s | min–max | × nginx | p50 ms | p99 ms | proxy CPU µs/req | of it kernel | CPU × nginx | errors / non-2xx |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scen in ["small", "16k", "close", "h2c", "rate"]:
        base = agg("tp", "nginx", scen)
        for t in ["direct", "nginx", "nginx-fwd", "haproxy", "traefik", "switchyard", "switchyard-alt"]:
            a = agg("tp", t, scen)
            if not a:
                continue
            ratio = f"{a['rps'] / base['rps']:.2f}" if base and t != "direct" else "—"
            cpu = "—" if a["cpu"] is None else f"{a['cpu']:.1f}"
            kernel = "—" if a["sys"] is None else f"{a['sys']:.1f}"
            cpur = f"{a['cpu'] / base['cpu']:.2f}" if base and a["cpu"] is not None else "—"
            p99 = "—" if scen == "h2c" else f"{a['p99']:.2f}"
            name = f"**{t}**" if t == "switchyard" else t
            p(f"| {name} | {LABEL[scen]} | {a['rps']:,.0f} | {a['lo']:,.0f}–{a['hi']:,.0f} | {ratio} | "
              f"{a['p50']:.2f} | {p99} | {cpu} | {kernel} | {cpur} | {a['errors']} / {a['non2xx']} |")
    p("")
    fwd_rows = [(scen, agg("tp", "switchyard", scen), agg("tp", "nginx-fwd", scen))
                for scen in ["small", "close", "rate"]]
    fwd_rows = [(scen, a, b) for scen, a, b in fwd_rows if a and b]
    if fwd_rows:
        p("Like for like: Switchyard against `nginx-fwd`, both sending the same headers upstream "
          "(medians of the rows above):\n")
        p("| scenario | req/s × nginx-fwd | p50 ms | p99 ms | CPU µs/req | CPU × nginx-fwd |")
        p("|---|---:|---|---|---|---:|")
        for scen, a, b in fwd_rows:
            cpu = (f"{a['cpu']:.1f} vs {b['cpu']:.1f}", f"{a['cpu'] / b['cpu']:.2f}") \
                if a["cpu"] is not None and b["cpu"] else ("—", "—")
            p(f"| {LABEL[scen]} | {a['rps'] / b['rps']:.2f} | {a['p50']:.2f} vs {b['p50']:.2f} | "
              f"{a['p99']:.2f} vs {b['p99']:.2f} | {cpu[0]} | {cpu[1]} |")
        p("")
    p("| proxy | idle RSS MiB | peak RSS MiB (VmHWM, whole run) | × nginx |")
    p("|---|---:|---:|---:|")
    base = mem.get(("tp", "nginx"))
    for t in ["nginx", "haproxy", "traefik", "switchyard", "switchyard-alt"]:
        m = mem.get(("tp", t))
        if not m:
            continue
        ratio = f"{int(m['peak_kb']) / int(base['peak_kb']):.2f}" if base else "—"
        p(f"| {t} | {int(m['idle_rss_kb']) / 1024:.1f} | {int(m['peak_kb']) / 1024:.1f} | {ratio} |")
    p("")
    idle = {r["target"]: r for r in rows("idle_connections.tsv")}
    if idle:
        n = int(next(iter(idle.values()))["connections"])
        p(f"Idle keep-alive connections (`bench/idle_connections.py`, each proxy started afresh "
          f"after the loads above): {n:,} connections opened one after another, one small request "
          "each, then all held open; the proxy's VmRSS before and with them open. The difference per connection is what a "
          "proxy keeps for a client that stays connected between requests (its kernel socket "
          "not included):\n")
        p("| proxy | RSS before MiB | RSS held MiB | bytes per idle connection | × nginx |")
        p("|---|---:|---:|---:|---:|")

        def per_conn(r):
            return (int(r["rss_held_kb"]) - int(r["rss_before_kb"])) * 1024 / int(r["connections"])

        base = idle.get("nginx")
        for t, r in idle.items():
            ratio = (f"{per_conn(r) / per_conn(base):.1f}"
                     if base and t != "nginx" and per_conn(base) > 0 else "—")
            p(f"| {t} | {int(r['rss_before_kb']) / 1024:.1f} | {int(r['rss_held_kb']) / 1024:.1f} | "
              f"{per_conn(r):,.0f} | {ratio} |")
        p("")

# --- scale ------------------------------------------------------------------------------------
comp = {r["config"]: r for r in rows("compile.tsv")}
if any(r["section"] == "scale" for r in runs):
    p("### 2. Route scale\n")
    p(f"wrk -t1 -c{conns} -d{sdur}s per run, median of {srounds} interleaved rounds; one proxy per "
      "configuration, all alive for the whole section, only the measured one loaded. `match`: a "
      "request routed to the origin (200); `no match`: a request no router matches (404). "
      "× 10: the median over rounds of req/s ÷ the 10-router proxy's req/s in the same round (each "
      "round starts one proxy later than the one before). Traefik's rounds come after Switchyard's "
      "(a run right after a light one reads faster on this machine).\n")
    p("| target | routers | match req/s | × 10 | p99 ms | CPU µs/req | no match req/s | × 10 | p99 ms | CPU µs/req | idle RSS MiB | peak RSS MiB |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    b_m = agg("scale", "sy-host-10", "match")
    b_n = agg("scale", "sy-host-10", "nomatch")

    def paired(t, scen):
        """The median over rounds of t's req/s ÷ the 10-router proxy's in the same round."""
        by_round = lambda target: {
            r["round"]: int(r["requests"]) / float(r["seconds"])
            for r in runs if r["section"] == "scale" and r["target"] == target and r["scenario"] == scen
        }
        base, mine = by_round("sy-host-10"), by_round(t)
        return med([mine[k] / base[k] for k in mine if k in base and base[k] > 0])

    order = ["sy-host-10", "sy-host-1k", "sy-host-10k", "sy-host-50k", "sy-hostpath-50k", "sy-path-10k", "traefik-host-10k"]
    for t in order:
        m, n = agg("scale", t, "match"), agg("scale", t, "nomatch")
        if not m:
            continue
        cfg = t.split("-", 1)[1]
        routers = comp.get(cfg, {}).get("routers", "?")
        mm = mem.get(("scale", t), {})
        label = {"host": "Host", "hostpath": "Host && PathPrefix", "path": "PathPrefix, one host"}[cfg.split("-")[0]]
        sys_name = "switchyard" if t.startswith("sy-") else "traefik"
        p(f"| {sys_name}: {label} | {int(routers):,} | {m['rps']:,.0f} | {paired(t, 'match'):.2f} | {m['p99']:.2f} | {m['cpu']:.1f} | "
          f"{n['rps']:,.0f} | {paired(t, 'nomatch'):.2f} | {n['p99']:.2f} | {n['cpu']:.1f} | "
          f"{int(mm.get('idle_rss_kb', 0)) / 1024:.1f} | {int(mm.get('peak_kb', 0)) / 1024:.1f} |")
    p("")
if comp:
    p("Controller compile (in-process, `switchyard-bench compile`: the controller's own YAML parser, "
      "compiler, encoding + hash + chunking as the publisher does them; median of 3), encoded snapshot size, and the "
      "proxy's apply of that snapshot over the previous table (in-process on the proxy's core, "
      "`switchyard-apply`: verify the hash and decode, build the table, free the replaced one; "
      "median of 4 changes; patch: a snapshot with one router added or removed, verified, compared "
      "with the served one and applied as a patch of the table, median of 10):\n")
    p("| configuration | routers | YAML parse ms | compile ms | encode + hash + chunk ms | snapshot bytes | bytes/router | gzip | zstd | gRPC messages | largest message | proxy verify + decode ms | proxy build ms | proxy free ms | proxy patch ms |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cfg, c in comp.items():
        n = int(c["routers"])
        p(f"| {cfg} | {n:,} | {float(c['parse_ms']):.1f} | {float(c['compile_ms']):.1f} | {float(c['publish_ms']):.1f} | "
          f"{int(c['snapshot_bytes']):,} | {int(c['snapshot_bytes']) / n:.0f} | {int(c['gzip_bytes']):,} | "
          f"{int(c['zstd_bytes']):,} | {c['messages']} | {int(c['max_message_bytes']):,} | "
          f"{float(c['open_ms']):.1f} | {float(c['build_ms']):.1f} | {float(c['free_ms']):.1f} | "
          f"{float(c.get('patch_ms') or 'nan'):.1f} |")
    p("")

# --- propagation ------------------------------------------------------------------------------
prop = rows("propagation.tsv")
if prop:
    p("### 3. Propagation\n")
    p("A change (one router added/renamed in its own file, written atomically) to the file "
      "provider's directory → applied. Switchyard: the controller's ACK timestamp of each proxy "
      "(`ListProxies`) minus the write time, so it includes inotify, the 10 ms debounce, parse of "
      "the changed file, compile (reusing unchanged routers), encode, hash, the delta, fan-out, "
      "transfer, rebuild from the base and verify, the table patch (processes; the whole snapshot "
      "decoded and a table built when a change is not a patch) and ACK. etcd: the same router and "
      "service written as Traefik's KV keys in one transaction to a real etcd (Debian "
      "`etcd-server`, on the controllers' core), from the moment the transaction is sent (its "
      "commit, an fsync, included) to the ACK; the provider reads it from its watch. "
      "Traefik: time until the new router answers 200 (polled every 2 ms); its "
      "file provider applies its default 2 s `providersThrottleDuration`. Percentiles over all "
      "subscribers × changes. Switchyard's changes follow one unmeasured warm-up change (the first "
      "change after a start pays once for fresh memory and for what later changes reuse); its "
      "slowest ACK is the last column.\n")
    p("| system | provider | routers | subscribers | kind | changes | samples (failed) | p50 ms | p99 ms | max ms | write → published p50 ms | warm-up change max ms |")
    p("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in prop:
        pub = r["published_p50_ms"]
        pub = "—" if pub == "nan" else f"{float(pub):.1f}"
        warm = (r.get("warmup_max_ms") or "nan").lower()
        warm = "—" if warm == "nan" else f"{float(warm):.1f}"
        p(f"| {r['system']} | {r.get('provider') or 'file'} | {int(r['routers']):,} | {r['subscribers']} | {r['kind']} | {r['changes']} | "
          f"{r['samples']} ({r['failed']}) | {float(r['p50_ms']):.1f} | {float(r['p99_ms']):.1f} | "
          f"{float(r['max_ms']):.1f} | {pub} | {warm} |")
    p("")

# --- cold start -------------------------------------------------------------------------------
cold = rows("coldstart.tsv")
if cold:
    p("### 4. Cold start from disk\n")
    p("Process start (exec) → first 200 from the origin for a host in the middle of the table, "
      "controller down (Switchyard serves its persisted snapshot; Traefik reads its file provider). "
      "Polled every 1 ms.\n")
    p("| system | routers | runs | median ms | max ms | all ms |")
    p("|---|---:|---:|---:|---:|---|")
    for r in cold:
        p(f"| {r['system']} | {int(r['routers']):,} | {r['repeat']} | {float(r['median_ms']):.1f} | "
          f"{float(r['max_ms']):.1f} | {r['all_ms']} |")
    p("")

# --- instructions per request -----------------------------------------------------------------
ir = rows("instructions.tsv")
if ir:
    p("### 5. User-space instructions per request (callgrind)\n")
    p("Each proxy alone under valgrind's callgrind on the proxy core, counters zeroed after 2 000 "
      f"requests and read after the next {int(ir[0]['requests']):,} (`h2load --h1 -c{conns}`, the "
      "origin's small response): the instructions the proxy executes in user space per request, "
      "libc included, the kernel not. Nearly deterministic (one build reads within ~1 % from run to "
      "run: how many requests one wakeup serves still varies), so a change to the request path "
      "shows here when CPU time, which moves 10–20 %, cannot resolve it.\n")
    targets = list(dict.fromkeys(r["target"] for r in ir))

    def by_mode(values, show, ratio):
        """A row per proxy: each mode's value and its ratio to nginx's."""
        for t in targets:
            cells = []
            for mode in ("keep-alive", "close"):
                v, base = values.get((t, mode)), values.get(("nginx", mode))
                cells.append(show(v) if v else "—")
                cells.append(ratio(v, base) if v and base and t != "nginx" else "—")
            p(f"| {t} | " + " | ".join(cells) + " |")
        p("")

    per = {(r["target"], r["mode"]): int(r["instructions"]) / int(r["requests"]) for r in ir}
    p("| proxy | keep-alive | × nginx | `Connection: close` | × nginx |")
    p("|---|---:|---:|---:|---:|")
    by_mode(per, lambda v: f"{v:,.0f}", lambda v, base: f"{v / base:.2f}")
    # Older result directories have no footprint columns.
    code = {(r["target"], r["mode"]): (int(r["code_lines"]), int(r["code_pages"]))
            for r in ir if r.get("code_lines")}
    if code:
        p(f"Code that ran during those {int(ir[0]['requests']):,} requests (`--dump-instr=yes`, "
          "`bench/code_footprint.py`): distinct 64-byte lines, as KiB, and distinct 4 KiB pages, "
          "libc included. It is what the instruction cache and TLB hold for a request, or fetch "
          "again after the kernel's part of it has run:\n")
        p("| proxy | keep-alive KiB / pages | × nginx | `Connection: close` KiB / pages | × nginx |")
        p("|---|---:|---:|---:|---:|")
        by_mode(code, lambda c: f"{c[0] * 64 / 1024:.1f} / {c[1]}",
                lambda c, base: f"{c[0] / base[0]:.2f} / {c[1] / base[1]:.2f}")
    # IR_CACHE_SIM=1: callgrind's cache simulation ran too.
    sim = [r for r in ir if r.get("d1_write_misses")]
    if sim:
        p("L1 data cache misses per request, simulated (`IR_CACHE_SIM=1`: callgrind's "
          "`--cache-sim=yes`, the host's cache sizes; every line a copy writes counts as a miss, "
          "which a real core's string copy may avoid), read / write:\n")
        misses = {(r["target"], r["mode"]): (int(r["d1_read_misses"]) / int(r["requests"]),
                                             int(r["d1_write_misses"]) / int(r["requests"]))
                  for r in sim}
        p("| proxy | keep-alive | `Connection: close` |")
        p("|---|---:|---:|")
        for t in dict.fromkeys(r["target"] for r in sim):
            cells = [f"{m[0]:.1f} / {m[1]:.1f}" if (m := misses.get((t, mode))) else "—"
                     for mode in ("keep-alive", "close")]
            p(f"| {t} | " + " | ".join(cells) + " |")
        p("")

p("Environment of this run:\n")
p("```")
out.extend(info)
p("```")
print("\n".join(out))
