"""Many concurrent SSE streams through Keyway, once: `scripts/bench.sh --streams N`.

Starts the bundled mock upstream and Keyway on free ports, opens N streams at once through
Keyway (examples/sse_load checks every chunk arrives, in order), and reports what is lost,
Keyway's peak RSS above idle and per stream, and its CPU per stream. Bounded: paced slowly
enough for two shared cores, one attempt, a per-stream timeout, and every process is
stopped at the end. Prints one JSON line last.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the shared helpers: ports, configs, /proc readings)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=0, help="default: 10,000, or what the descriptor limit allows")
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--pacing-ms", type=int, default=500)
    ap.add_argument("--timeout-secs", type=int, default=120)
    ap.add_argument("--keyway", default=run.KEYWAY, help="the binary to measure (A/B runs)")
    args = ap.parse_args()
    # Every stream holds a client and an upstream socket in Keyway (the upstream pool speaks
    # HTTP/1.1); Keyway raises its soft descriptor limit to the hard one and keeps 64 spare.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fit = (hard - 64) // 2 - 16 if hard != resource.RLIM_INFINITY else 10**6
    if args.streams == 0:
        args.streams = min(10000, fit)
        if args.streams < 10000:
            print(f"note: {hard} descriptors per process allow one Keyway {fit} streams; "
                  f"running {args.streams}", file=sys.stderr)
    elif args.streams > fit:
        sys.exit(f"{hard} descriptors per process allow one Keyway at most {fit} streams")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    os.makedirs(run.WORK, exist_ok=True)
    ports = {k: run.free_port() for k in ["mock", "kw", "up"]}
    conf = run.keyway_conf("keyway-streams", ports["kw"], ports["up"], ports["mock"])
    # Each stream holds a client and an upstream socket; the default cap is 10,000.
    with open(conf) as f:
        text = f.read().replace("[server]\n", f"[server]\nmax_connections = {args.streams + 1000}\n", 1)
    with open(conf, "w") as f:
        f.write(text)
    env = dict(os.environ, BENCH_CLIENT_KEY=run.CLIENT_KEY, BENCH_UPSTREAM_KEY="sk-bench-upstream", MOCK_THREADS="1")
    specs = [
        ("mock", [os.path.join(run.REL, "examples", "mock_upstream"), "--listen", f"127.0.0.1:{ports['mock']}",
                  "--chunks", str(args.chunks), "--pacing-ms", str(args.pacing_ms)], ports["mock"]),
        ("keyway-streams", [args.keyway, "run", "-c", conf], ports["kw"]),
    ]
    procs = {}
    try:
        for name, cmd, port in specs:
            log = open(os.path.join(run.WORK, f"{name}.log"), "w")
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            run.wait_port(port, procs[name], name)
        kw = procs["keyway-streams"].pid
        time.sleep(0.5)
        idle = run.proc_status(kw, "VmRSS")
        with open(f"/proc/{kw}/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark
        cpu0 = run.cpu_seconds(kw)
        r = run.sh([os.path.join(run.REL, "examples", "sse_load"), "--url",
                    f"http://127.0.0.1:{ports['kw']}/v1/chat/completions", "--streams", str(args.streams),
                    "--chunks", str(args.chunks), "--key", run.CLIENT_KEY, "--model", "stream-model",
                    "--timeout-secs", str(args.timeout_secs)])
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            sys.exit(f"sse_load failed: {r.stdout}{r.stderr}")
        peak = run.proc_status(kw, "VmHWM")
        cpu_ms = (run.cpu_seconds(kw) - cpu0) * 1000
        # Idle again: freed memory goes back to the OS when the serving threads park.
        time.sleep(3)
        after = run.proc_status(kw, "VmRSS")
    finally:
        run.stop(procs)
    out = {
        "streams": args.streams, "chunks": args.chunks, "pacing_ms": args.pacing_ms,
        "ok": res["ok"], "lost_chunks": res["lost_chunks"], "reordered_chunks": res["reordered_chunks"],
        "ttfb_p50_ms": res["ttfb_p50_ms"], "ttfb_p99_ms": res.get("ttfb_p99_ms"),
        "idle_rss_mib": round(idle, 1), "peak_rss_mib": round(peak, 1), "rss_after_mib": round(after, 1),
        "kib_per_stream": round((peak - idle) * 1024 / args.streams, 1),
        "cpu_ms_per_stream": round(cpu_ms / args.streams, 3),
    }
    print(f"{out['ok']}/{out['streams']} streams ok, lost {out['lost_chunks']} chunks, "
          f"reordered {out['reordered_chunks']}; Keyway RSS {out['idle_rss_mib']} MiB idle, "
          f"{out['peak_rss_mib']} MiB peak ({out['kib_per_stream']} KiB per stream), "
          f"{out['rss_after_mib']} MiB 3 s after; CPU {out['cpu_ms_per_stream']} ms per stream", file=sys.stderr)
    print(json.dumps(out))
    if out["ok"] != out["streams"] or out["lost_chunks"] or out["reordered_chunks"]:
        sys.exit("streams were lost")


if __name__ == "__main__":
    main()
