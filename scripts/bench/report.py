"""Renders target/bench/results.json into BENCHMARKS.md (full runs) or a smoke report.

The newest run goes under "Latest run"; the run that was there moves to "Previous run",
so a regression shows side by side. Every figure is also given as a ratio to the
baselines of the same run (direct to the upstream, nginx as a plain proxy).
"""
import json
import statistics
import sys


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_us(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def render(r):
    out = []
    m = r["machine"]
    out.append(f"Run {r['date']} ({r['mode']} mode, {r['rounds']} interleaved rounds, median shown) on "
               f"{m['cpus']} × {m['cpu_model']}, {m['mem_gib']} GiB; {m['kernel']}.")
    out.append(f"Versions: keyway {r['versions']['keyway']} ({r['versions']['rustc']}), "
               f"{r['versions']['nginx']}, {r['versions']['wrk']}, {r['versions']['oha']}.")
    if r.get("build", "").startswith("profile-guided"):
        out.append(f"Keyway's build: {r['build']}; the *plain* rows run the plain "
                   f"`cargo build --release` binary.")
    out.append("")
    w1 = r["w1"]
    base_direct = med([x["rps"] for x in w1["direct"]])
    base_nginx = med([x["rps"] for x in w1["nginx"]])
    p50_direct = med([x["p50_us"] for x in w1["direct"]])
    p50_nginx = med([x["p50_us"] for x in w1["nginx"]])
    out.append(f"### 1. Non-streaming chat, {r['w1_conns']} connections, closed loop (wrk, {r['w1_secs']} s per round)")
    out.append("")
    out.append("| target | req/s | × direct | × nginx | proxy CPU/req (user + sys) | CPU × nginx | p50 | p99 | p99.9 | "
               "added p50 vs direct | vs nginx | errors |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def cpu(runs):
        if not runs or "cpu_user_us" not in runs[0]:
            return None
        return (med([x["cpu_user_us"] for x in runs]), med([x["cpu_sys_us"] for x in runs]))

    nginx_cpu = cpu(w1.get("nginx", []))
    for name, label in [("direct", "direct to upstream"), ("nginx", "nginx proxy"),
                        ("floor", "hyper floor (same stack, no Keyway logic)"), ("keyway", "Keyway (HTTP)"),
                        ("keyway_plain", "Keyway (HTTP), plain `cargo build --release`"),
                        ("keyway_tls", "Keyway (TLS)"), ("keyway_heavy", "Keyway, 30 routes × 10 keys"),
                        ("keyway_custom", "Keyway, custom policy (every hook scripted)"),
                        ("keyway_redis", "Keyway, custom policy, state shared on Redis")]:
        runs = w1.get(name, [])
        if not runs:
            continue
        rps = med([x["rps"] for x in runs])
        p50 = med([x["p50_us"] for x in runs])
        c = cpu(runs)
        cpu_cell = f"{c[0] + c[1]:.1f} µs ({c[0]:.1f} + {c[1]:.1f})" if c else "–"
        ratio = f"{(c[0] + c[1]) / (nginx_cpu[0] + nginx_cpu[1]):.2f}" if c and nginx_cpu else "–"
        out.append(f"| {label} | {rps:,.0f} | {rps / base_direct:.2f} | {rps / base_nginx:.2f} | {cpu_cell} | {ratio} | "
                   f"{fmt_us(p50)} | "
                   f"{fmt_us(med([x['p99_us'] for x in runs]))} | {fmt_us(med([x['p999_us'] for x in runs]))} | "
                   f"{fmt_us(p50 - p50_direct)} | {fmt_us(p50 - p50_nginx)} | {sum(x['errors'] for x in runs)} |")
    out.append("")
    redis_runs = w1.get("keyway_redis", [])
    if redis_runs and "redis_calls_per_req" in redis_runs[0]:
        out.append(f"Redis round trips per request with shared state: "
                   f"{med([x['redis_calls_per_req'] for x in redis_runs]):.5f} "
                   f"({med([x['redis_calls_per_s'] for x in redis_runs]):.1f} per second, "
                   f"{med([x['redis_commands_per_s'] for x in redis_runs]):.0f} commands per second counting those "
                   f"the scripts run), all from the background replicator: a request never waits on Redis.")
        out.append("")
    out.append("CPU/req is the proxy process's CPU time (all its threads; nginx: its workers) over the "
               "requests served in the round. On this 2-core box throughput is CPU-bound, so "
               "**CPU × nginx** is the headline efficiency figure. The *hyper floor* "
               "(`examples/hyper_floor.rs`) is a bare proxy on Keyway's own stack (tokio, hyper, a "
               "per-thread keep-alive pool, one runtime per CPU) with no routing, auth, policy, "
               "metrics or timeouts: what Keyway costs above it is Keyway's own work.")
    floor_cpu, kw_cpu = cpu(w1.get("floor", [])), cpu(w1.get("keyway", []))
    if floor_cpu and kw_cpu:
        out.append("")
        out.append(f"Keyway (HTTP) spends {sum(kw_cpu) / sum(floor_cpu):.2f}× the floor's CPU per request "
                   f"({sum(kw_cpu) - sum(floor_cpu):.1f} µs of its own work); the floor spends "
                   f"{sum(floor_cpu) / sum(nginx_cpu):.2f}× nginx's.")
    out.append("")
    w2 = r["w2"]
    out.append(f"### 2. Fixed rate {r['w2_rate']} req/s (oha, {r['w2_secs']} s per round, latency corrected)")
    out.append("")
    out.append("| target | achieved req/s | p50 | p99 | p99.9 | added p50 vs direct | added p99 vs direct | errors |")
    out.append("|---|---|---|---|---|---|---|---|")
    d50 = med([x["p50_us"] for x in w2["direct"]])
    d99 = med([x["p99_us"] for x in w2["direct"]])
    for name, label in [("direct", "direct to upstream"), ("nginx", "nginx proxy"), ("floor", "hyper floor"),
                        ("keyway", "Keyway (HTTP)"), ("keyway_tls", "Keyway (TLS)"), ("keyway_custom", "Keyway, custom policy"),
                        ("keyway_redis", "Keyway, custom policy, state on Redis")]:
        runs = w2.get(name, [])
        if not runs:
            continue
        p50 = med([x["p50_us"] for x in runs])
        p99 = med([x["p99_us"] for x in runs])
        out.append(f"| {label} | {med([x['rps'] for x in runs]):,.0f} | {fmt_us(p50)} | {fmt_us(p99)} | "
                   f"{fmt_us(med([x['p999_us'] for x in runs]))} | {fmt_us(p50 - d50)} | {fmt_us(p99 - d99)} | "
                   f"{sum(x['errors'] for x in runs)} |")
    out.append("")
    w3 = r["w3"]
    out.append(f"### 3. Streaming: {r['w3_streams']} concurrent SSE streams × {r['w3_chunks']} chunks, "
               f"{r['w3_pacing_ms']} ms pacing")
    out.append("")
    out.append("| target | streams ok | lost chunks | reordered | TTFB p50 | TTFB p99 | added TTFB p50 vs direct |")
    out.append("|---|---|---|---|---|---|---|")
    t50 = med([x["ttfb_p50_ms"] for x in w3["direct"]])
    for name, label in [("direct", "direct to mock"), ("nginx", "nginx proxy (buffering off)"), ("keyway", "Keyway (HTTP)")]:
        runs = w3.get(name, [])
        if not runs:
            continue
        x50 = med([x["ttfb_p50_ms"] for x in runs])
        out.append(f"| {label} | {min(x['ok'] for x in runs)}/{r['w3_streams']} | {sum(x['lost_chunks'] for x in runs)} | "
                   f"{sum(x['reordered_chunks'] for x in runs)} | {x50:.2f} ms | "
                   f"{med([x['ttfb_p99_ms'] for x in runs]):.2f} ms | {x50 - t50:+.2f} ms |")
    out.append("")
    w4 = r.get("w4")
    if w4:
        out.append(f"### 4. One connection, one request at a time (wrk -t1 -c1, {r['w4_secs']} s per round)")
        out.append("")
        out.append("| target | req/s | p50 | p99 | added p50 vs direct | vs nginx | errors |")
        out.append("|---|---|---|---|---|---|---|")
        o50 = med([x["p50_us"] for x in w4["direct"]])
        n50 = med([x["p50_us"] for x in w4["nginx"]])
        for name, label in [("direct", "direct to upstream"), ("nginx", "nginx proxy"), ("floor", "hyper floor"),
                            ("keyway", "Keyway (HTTP)"), ("keyway_plain", "Keyway (HTTP), plain build"),
                            ("keyway_tls", "Keyway (TLS)"), ("keyway_custom", "Keyway, custom policy")]:
            runs = w4.get(name, [])
            if not runs:
                continue
            p50 = med([x["p50_us"] for x in runs])
            out.append(f"| {label} | {med([x['rps'] for x in runs]):,.0f} | {fmt_us(p50)} | "
                       f"{fmt_us(med([x['p99_us'] for x in runs]))} | {fmt_us(p50 - o50)} | {fmt_us(p50 - n50)} | "
                       f"{sum(x['errors'] for x in runs)} |")
        out.append("")
    k = r["keyway"]
    out.append("### Keyway's footprint")
    out.append("")
    out.append("| measure | value |")
    out.append("|---|---|")
    out.append(f"| binary size (release) | {k['binary_mib']:.1f} MiB |")
    out.append(f"| idle RSS | {k['idle_rss_mib']:.1f} MiB |")
    out.append(f"| peak RSS with {r['w3_streams']} open streams | {med(k['stream_peak_rss_mib']):.1f} MiB |")
    out.append(f"| CPU per stream ({r['w3_chunks']} chunks) | {med(k['stream_cpu_ms_per_stream']):.2f} ms |")
    if k.get("reload_median_ms") is not None:
        out.append(f"| policy reload, file save → serving (median) | {k['reload_median_ms']:.1f} ms |")
    for name, us in (r.get("criterion") or {}).items():
        out.append(f"| policy work per request, {name} (criterion) | {us:.2f} µs |")
    out.append("")
    return "\n".join(out)


HEADER = """# Benchmarks

Produced by `scripts/bench.sh` (`--smoke` for a quick check). Everything runs on one
machine over 127.0.0.1: the load generator, the proxy under test and the upstream share the
same cores, so absolute numbers are low and noisy; read the **ratios to the baselines of the
same run**: *direct* (load generator straight to the upstream), *nginx* (a plain
keep-alive reverse proxy, the cost of one proxy hop) and the *hyper floor* (a bare proxy on
Keyway's own stack, `examples/hyper_floor.rs`: the cost of the HTTP engine alone). Each case runs several rounds,
interleaved, and the median is shown. The instant upstream for workloads 1, 2 and 4 is
nginx returning a canned chat completion; streams come from Keyway's mock upstream
(release build). Keyway runs the default policy with client auth on, logs at `warn`, and
no access log on either proxy.

Exact commands: see `scripts/bench.sh` (wrk `-t2 -c64 --latency -s scripts/bench/wrk_post.lua`, `-t1 -c1` for workload 4;
oha `-q RATE -c 32 --latency-correction`; `examples/sse_load.rs` for streams).
"""


NOTES = "## Measurements by change"


def main(results_path, out_path, keep_previous):
    r = json.load(open(results_path))
    latest = render(r)
    previous = notes = ""
    if keep_previous:
        try:
            old = open(out_path).read()
            # Hand-written sections (A/B runs per change) live under NOTES and are kept.
            if NOTES in old:
                old, notes = old.split(NOTES, 1)
                notes = NOTES + notes
            if "## Latest run" in old:
                previous = old.split("## Latest run", 1)[1].split("## Previous run", 1)[0].strip()
        except FileNotFoundError:
            pass
    reading = r.get("reading", "")
    text = HEADER + "\n## Latest run\n\n" + latest + ("\n" + reading + "\n" if reading else "")
    if previous:
        text += "\n## Previous run\n\n" + previous + "\n"
    if notes:
        text += "\n" + notes.rstrip() + "\n"
    open(out_path, "w").write(text)
    print(latest)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "--keep-previous")
