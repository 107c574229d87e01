"""Runs the benchmark workloads (see scripts/bench.sh) and writes target/bench/results.json.

Baselines and Keyway are measured in the same run, interleaved round by round, so the
report can quote ratios that survive this machine's noise.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REL = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
# The Keyway under test: the profile-guided build from scripts/build-release.sh when bench.sh
# made one (KEYWAY_BIN), else the plain release build. The plain build is measured too.
KEYWAY = os.environ.get("KEYWAY_BIN") or os.path.join(REL, "keyway")
WORK = os.path.join(ROOT, "target", "bench", "run")
CLIENT_KEY = "bench-client-key"
CANNED = ('{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"gpt-4o",'
          '"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how are you?"},'
          '"finish_reason":"stop"}],"usage":{"prompt_tokens":13,"completion_tokens":7,"total_tokens":20}}')

PROFILES = {
    "full": dict(rounds=3, w1_secs=10, w1_conns=64, w2_secs=10, w2_rate=2000, w3_streams=1000, w3_chunks=100,
                 w3_pacing_ms=20, w4_secs=5, reload_trials=15, criterion=True),
    "smoke": dict(rounds=1, w1_secs=2, w1_conns=16, w2_secs=2, w2_rate=300, w3_streams=40, w3_chunks=10,
                  w3_pacing_ms=20, w4_secs=1, reload_trials=3, criterion=False),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name, tls=False):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"{name} exited early (code {proc.returncode}); see {WORK}/{name}.log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{name} did not open port {port}")


def stop(procs):
    """Terminates every process in `procs` (a dict), killing those that do not go in 10 s."""
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # MiB
    return 0.0


def cpu_seconds(pid):
    user, sys_ = cpu_split(pid)
    return user + sys_


def cpu_split(pid):
    """(user, system) CPU seconds of a process and its live children (nginx workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = sys_ = 0
    for p in [pid] + children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user += int(fields[11])
        sys_ += int(fields[12])
    return user / ticks, sys_ / ticks


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def nginx_conf(name, workers, server_block):
    d = os.path.join(WORK, name)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    conf = f"""
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    {server_block}
}}
"""
    path = os.path.join(d, "nginx.conf")
    write(path, conf)
    return ["nginx", "-p", d, "-c", path]


def redis_calls(port):
    """(round trips, commands) Redis has served, from INFO commandstats over a raw RESP
    socket: round trips are the calls made from outside (every Keyway write is one EVALSHA;
    INFO itself is excluded), commands also count those its scripts ran."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or (data.startswith(b"$") and b"\r\n" in data and
                             len(data) >= data.index(b"\r\n") + 2 + int(data[1:data.index(b"\r\n")]) + 2):
                break
    stats = {name.decode(): int(n) for name, n in re.findall(rb"cmdstat_([a-z|]+):calls=(\d+)", data)}
    outside = ("evalsha", "eval", "script|load", "subscribe", "ping", "hello", "set", "client|setname", "select")
    return sum(stats.get(c, 0) for c in outside), sum(v for k, v in stats.items() if k != "info")


def keyway_conf(name, port, up, mock, keys=3, tls=None, policy_dir=None, redis=False):
    keylist = ", ".join(f'{{ id = "k{i}", key = "env:BENCH_UPSTREAM_KEY" }}' for i in range(keys))
    text = f"""
[server]
listen = "127.0.0.1:{port}"
{f'tls = {{ cert = "{tls[0]}", key = "{tls[1]}" }}' if tls else ''}
[log]
level = "warn"
[auth]
clients = [{{ name = "bench", key = "env:BENCH_CLIENT_KEY" }}]
{f'[policy]{chr(10)}dir = "{policy_dir}"' if policy_dir else ''}
[[provider]]
id = "fast"
kind = "openai"
base_url = "http://127.0.0.1:{up}/v1"
models = ["gpt-4o"]
[[provider.connection]]
id = "main"
keys = [{keylist}]
[[provider]]
id = "stream"
kind = "openai"
base_url = "http://127.0.0.1:{mock}/v1"
models = ["stream-model"]
[[provider.connection]]
id = "main"
keys = ["env:BENCH_UPSTREAM_KEY"]
"""
    if redis:
        text += '\n[state]\nbackend = "redis"\nurl = "env:BENCH_REDIS_URL"\nnamespace = "bench"\n'
    path = os.path.join(WORK, f"{name}.toml")
    write(path, text)
    return path


def heavy_policy():
    d = os.path.join(WORK, "heavy-policy")
    os.makedirs(d, exist_ok=True)
    routes = "".join(f'            #{{ model: "family{i}-*", targets: ["fast/*"] }},\n' for i in range(30))
    main_rhai = open(os.path.join(ROOT, "policies", "main.rhai")).read()
    main_rhai = main_rhai.replace("        routes: [\n", "        routes: [\n" + routes +
                                  '            #{ model: "gpt-4o*", targets: ["fast/*"] },\n', 1)
    write(os.path.join(d, "main.rhai"), main_rhai)
    return d


def custom_policy():
    """A policy whose hooks cannot be bound to natives: `route` branches on a request
    header, `select_key` picks by the client, `on_outcome` counts successes in a window
    (so "scripts in the path" stays honest next to the shipped policy)."""
    d = os.path.join(WORK, "custom-policy")
    os.makedirs(d, exist_ok=True)
    write(os.path.join(d, "main.rhai"), """
fn route(req) {
    if req.header("x-tier") == "batch" {
        ["fast/gpt-4o-mini"]
    } else {
        routes::resolve(req.model)
    }
}
fn select_key(req, conn) {
    if req.client == "nobody" { keys::fill_first(conn) } else { keys::round_robin(conn) }
}
fn on_outcome(req, attempt, outcome) {
    if outcome.class == "ok" {
        quota::hit("ok:" + attempt.provider, 60);
        "return"
    } else if outcome.class == "rate_limited" {
        quota::lock(attempt.key_model_scope, outcome.retry_after ?? 30, "rate_limited");
        "next"
    } else {
        "next"
    }
}
""")
    return d


def wrk(url, secs, conns, model="gpt-4o"):
    env = dict(os.environ, BENCH_KEY=CLIENT_KEY, BENCH_MODEL=model)
    r = sh(["wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{secs}s", "--latency", "-s",
            os.path.join(ROOT, "scripts", "bench", "wrk_post.lua"), url], env=env)
    line = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not line:
        sys.exit(f"wrk failed against {url}: {r.stdout}{r.stderr}")
    return json.loads(line[-1])


def oha(url, secs, rate):
    body = '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
    r = sh(["oha", "-z", f"{secs}s", "-q", str(rate), "-c", "32", "--latency-correction", "--no-tui", "--insecure",
            "--output-format", "json", "-m", "POST", "-H", "content-type: application/json",
            "-H", f"authorization: Bearer {CLIENT_KEY}", "-d", body, url])
    try:
        j = json.loads(r.stdout)
    except json.JSONDecodeError:
        sys.exit(f"oha failed against {url}: {r.stdout[:500]}{r.stderr[:500]}")
    p = j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    # Requests cut off by oha's own -z deadline are not failures.
    errors = sum(v for k, v in codes.items() if k != "200") + sum(
        v for k, v in j.get("errorDistribution", {}).items() if "aborted due to deadline" not in k)
    return {"rps": j["summary"]["requestsPerSec"], "p50_us": p["p50"] * 1e6, "p99_us": p["p99"] * 1e6,
            "p999_us": p.get("p99.9", p["p99"]) * 1e6, "errors": errors}


def hey(url, secs, rate):
    """Fixed rate with hey (Debian): -q is per worker, so 20 workers at rate/20 each."""
    body = '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
    workers = 20
    # hey puts its Host value, port included, into TLS SNI, which rustls rightly refuses
    # ("127.0.0.1:PORT" is not a host name): give it the bare host for HTTPS targets.
    host = ["-host", url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]] if url.startswith("https://") else []
    r = sh(["hey", "-z", f"{secs}s", "-c", str(workers), "-q", str(max(1, rate // workers)), "-m", "POST",
            "-T", "application/json", "-H", f"Authorization: Bearer {CLIENT_KEY}", *host, "-d", body, url])
    rps = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    pct = {int(p): float(s) * 1e6 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", r.stdout)}
    if not rps or 50 not in pct:
        sys.exit(f"hey failed against {url}: {r.stdout[:500]}{r.stderr[:500]}")
    ok = sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", r.stdout))
    total = sum(int(n) for n in re.findall(r"\[\d+\]\s+(\d+) responses", r.stdout))
    # Non-200 responses, plus transport errors ("  [3]\tPost ...: dial tcp ...").
    transport = r.stdout.split("Error distribution:")[1] if "Error distribution:" in r.stdout else ""
    # Requests still in flight when hey's own -z deadline fires are not failures.
    errors = total - ok + sum(int(n) for n, msg in re.findall(r"\[(\d+)\]\s+((?:Get|Post).*)", transport)
                              if "deadline exceeded" not in msg and "Client.Timeout" not in msg)
    return {"rps": float(rps.group(1)), "p50_us": pct[50], "p99_us": pct.get(99, pct[max(pct)]),
            "p999_us": pct.get(99, pct[max(pct)]), "errors": errors}


def fixed_rate(url, secs, rate):
    return oha(url, secs, rate) if shutil.which("oha") else hey(url, secs, rate)


def sse(url, streams, chunks):
    r = sh([os.path.join(REL, "examples", "sse_load"), "--url", url, "--streams", str(streams), "--chunks",
            str(chunks), "--key", CLIENT_KEY, "--model", "stream-model"])
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        sys.exit(f"sse_load failed against {url}: {r.stdout}{r.stderr}")


def criterion():
    r = sh(["cargo", "bench", "--bench", "policy", "--", "--warm-up-time", "1", "--measurement-time", "3"], cwd=ROOT)
    out = {}
    for m in re.finditer(r"policy_per_request/(\S+)\s+time:\s+\[\S+ \S+ (\S+) (\S+)", r.stdout):
        value, unit = float(m.group(2)), m.group(3)
        out[m.group(1)] = value / 1000 if unit == "ns" else value
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=PROFILES, default="full")
    args = ap.parse_args()
    P = PROFILES[args.mode]
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    ports = {k: free_port() for k in ["up", "ngx", "ngx_s", "mock", "floor", "kw", "kwp", "kws", "kwh", "kwc", "kwr", "redis"]}
    cert, key = os.path.join(WORK, "cert.pem"), os.path.join(WORK, "key.pem")
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
        key, "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
       check=True)
    env = dict(os.environ, BENCH_CLIENT_KEY=CLIENT_KEY, BENCH_UPSTREAM_KEY="sk-bench-upstream", MOCK_THREADS="1",
               BENCH_REDIS_URL=f"redis://127.0.0.1:{ports['redis']}")
    canned = CANNED.replace("'", "\\'")
    specs = [
        ("nginx-upstream", nginx_conf("nginx-upstream", 1, f"""server {{ listen 127.0.0.1:{ports['up']} backlog=4096;
            location / {{ default_type application/json; return 200 '{canned}'; }} }}"""), ports["up"]),
        ("nginx-proxy", nginx_conf("nginx-proxy", 2, f"""
            upstream fast {{ server 127.0.0.1:{ports['up']}; keepalive 128; }}
            upstream mock {{ server 127.0.0.1:{ports['mock']}; keepalive 1024; }}
            server {{ listen 127.0.0.1:{ports['ngx']} backlog=4096;
                location / {{ proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
            server {{ listen 127.0.0.1:{ports['ngx_s']} backlog=4096;
                location / {{ proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection "";
                              proxy_buffering off; }} }}"""), ports["ngx"]),
        ("mock", [os.path.join(REL, "examples", "mock_upstream"), "--listen", f"127.0.0.1:{ports['mock']}",
                  "--chunks", str(P["w3_chunks"]), "--pacing-ms", str(P["w3_pacing_ms"])], ports["mock"]),
        # The same stack (tokio, hyper) doing no more than a proxy must: Keyway's floor.
        ("hyper-floor", [os.path.join(REL, "examples", "hyper_floor"), "--listen", f"127.0.0.1:{ports['floor']}",
                         "--upstream", f"127.0.0.1:{ports['up']}"], ports["floor"]),
        ("keyway", [KEYWAY, "run", "-c", keyway_conf("keyway", ports["kw"], ports["up"], ports["mock"])],
         ports["kw"]),
        # The same config on the plain `cargo build --release` binary (no profile guidance).
        ("keyway-plain", [os.path.join(REL, "keyway"), "run", "-c",
                          keyway_conf("keyway-plain", ports["kwp"], ports["up"], ports["mock"])], ports["kwp"]),
        ("keyway-tls", [KEYWAY, "run", "-c",
                        keyway_conf("keyway-tls", ports["kws"], ports["up"], ports["mock"], tls=(cert, key))], ports["kws"]),
        ("keyway-heavy", [KEYWAY, "run", "-c",
                          keyway_conf("keyway-heavy", ports["kwh"], ports["up"], ports["mock"], keys=10,
                                      policy_dir=heavy_policy())], ports["kwh"]),
        ("keyway-custom", [KEYWAY, "run", "-c",
                           keyway_conf("keyway-custom", ports["kwc"], ports["up"], ports["mock"],
                                       policy_dir=custom_policy())], ports["kwc"]),
        ("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", WORK], ports["redis"]),
        # The custom policy with state shared on Redis: its `quota::hit` per success makes
        # window deltas to sync, so this is the backend's worst case next to keyway_custom.
        ("keyway-redis", [KEYWAY, "run", "-c",
                          keyway_conf("keyway-redis", ports["kwr"], ports["up"], ports["mock"],
                                      policy_dir=custom_policy(), redis=True)], ports["kwr"]),
    ]
    procs = {}
    try:
        for name, cmd, port in specs:
            log = open(os.path.join(WORK, f"{name}.log"), "w")
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            wait_port(port, procs[name], name)
        kw_pid = procs["keyway"].pid
        time.sleep(0.5)
        idle_rss = proc_status(kw_pid, "VmRSS")
        path = "/v1/chat/completions"
        w1_targets = {"direct": f"http://127.0.0.1:{ports['up']}{path}", "nginx": f"http://127.0.0.1:{ports['ngx']}{path}",
                      "floor": f"http://127.0.0.1:{ports['floor']}{path}",
                      "keyway": f"http://127.0.0.1:{ports['kw']}{path}",
                      "keyway_plain": f"http://127.0.0.1:{ports['kwp']}{path}",
                      "keyway_tls": f"https://127.0.0.1:{ports['kws']}{path}",
                      "keyway_heavy": f"http://127.0.0.1:{ports['kwh']}{path}",
                      "keyway_custom": f"http://127.0.0.1:{ports['kwc']}{path}",
                      "keyway_redis": f"http://127.0.0.1:{ports['kwr']}{path}"}
        # The process whose CPU a target's proxying costs (direct: none).
        w1_procs = {"nginx": procs["nginx-proxy"].pid, "floor": procs["hyper-floor"].pid, "keyway": procs["keyway"].pid,
                    "keyway_plain": procs["keyway-plain"].pid, "keyway_tls": procs["keyway-tls"].pid,
                    "keyway_heavy": procs["keyway-heavy"].pid,
                    "keyway_custom": procs["keyway-custom"].pid, "keyway_redis": procs["keyway-redis"].pid}
        w1 = {k: [] for k in w1_targets}
        w2_targets = {k: v for k, v in w1_targets.items() if k not in ("keyway_heavy", "keyway_plain")}
        w2 = {k: [] for k in w2_targets}
        w3_targets = {"direct": f"http://127.0.0.1:{ports['mock']}{path}", "nginx": f"http://127.0.0.1:{ports['ngx_s']}{path}",
                      "keyway": f"http://127.0.0.1:{ports['kw']}{path}"}
        w3 = {k: [] for k in w3_targets}
        # One request at a time: latency with nothing queued anywhere.
        w4_targets = {k: v for k, v in w1_targets.items()
                      if k in ("direct", "nginx", "floor", "keyway", "keyway_plain", "keyway_tls", "keyway_custom")}
        w4 = {k: [] for k in w4_targets}
        peak, cpu_per_stream = [], []
        # Warm every target (connection pools, page cache) before measuring.
        for url in w1_targets.values():
            wrk(url, 1, 8)
        for rnd in range(P["rounds"]):
            print(f"round {rnd + 1}/{P['rounds']}", flush=True)
            for name, url in w1_targets.items():
                pid = w1_procs.get(name)
                before = cpu_split(pid) if pid else (0.0, 0.0)
                calls0 = redis_calls(ports["redis"]) if name == "keyway_redis" else (0, 0)
                res = wrk(url, P["w1_secs"], P["w1_conns"])
                if name == "keyway_redis":
                    # Everything the replicator sent while this round ran (the request
                    # path itself never calls Redis).
                    trips, cmds = (a - b for a, b in zip(redis_calls(ports["redis"]), calls0))
                    res["redis_calls_per_req"] = trips / max(res["requests"], 1)
                    res["redis_calls_per_s"] = trips / P["w1_secs"]
                    res["redis_commands_per_s"] = cmds / P["w1_secs"]
                if pid:
                    after = cpu_split(pid)
                    n = max(res["requests"], 1)
                    # CPU per request of the proxy process: the efficiency figure on a box
                    # where throughput is CPU-bound.
                    res["cpu_user_us"] = (after[0] - before[0]) * 1e6 / n
                    res["cpu_sys_us"] = (after[1] - before[1]) * 1e6 / n
                w1[name].append(res)
                cpu = f", proxy CPU {res['cpu_user_us'] + res['cpu_sys_us']:.1f} µs/req" if pid else ""
                if "redis_calls_per_req" in res:
                    cpu += (f", Redis round trips {res['redis_calls_per_req']:.5f}/req "
                            f"({res['redis_calls_per_s']:.1f}/s, {res['redis_commands_per_s']:.0f} commands/s)")
                print(f"  w1 {name}: {res['rps']:.0f} req/s{cpu}", flush=True)
            for name, url in w4_targets.items():
                w4[name].append(wrk(url, P["w4_secs"], 1))
                print(f"  w4 {name}: p50 {w4[name][-1]['p50_us']:.0f} µs p99 {w4[name][-1]['p99_us']:.0f} µs", flush=True)
            for name, url in w2_targets.items():
                w2[name].append(fixed_rate(url, P["w2_secs"], P["w2_rate"]))
                print(f"  w2 {name}: p50 {w2[name][-1]['p50_us']:.0f} µs p99 {w2[name][-1]['p99_us']:.0f} µs", flush=True)
            for name, url in w3_targets.items():
                if name == "keyway":
                    with open(f"/proc/{kw_pid}/clear_refs", "w") as f:
                        f.write("5")  # reset the peak-RSS mark
                    cpu0 = cpu_seconds(kw_pid)
                res = sse(url, P["w3_streams"], P["w3_chunks"])
                if name == "keyway":
                    peak.append(proc_status(kw_pid, "VmHWM"))
                    cpu_per_stream.append((cpu_seconds(kw_pid) - cpu0) * 1000 / P["w3_streams"])
                w3[name].append(res)
                print(f"  w3 {name}: {res['ok']}/{res['streams']} ok, lost {res['lost_chunks']}, "
                      f"ttfb p50 {res['ttfb_p50_ms']:.2f} ms", flush=True)
    finally:
        stop(procs)
    reload = sh([sys.executable, os.path.join(ROOT, "scripts", "bench", "reload_latency.py"), KEYWAY,
                 os.path.join(REL, "examples", "mock_upstream"), str(P["reload_trials"])])
    m = re.search(r"median: ([\d.]+) ms", reload.stdout)
    crit = criterion() if P["criterion"] else {}
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": args.mode,
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model, "mem_gib": round(mem / 1024 / 1024),
                    "kernel": platform.platform()},
        "build": ("profile-guided (scripts/build-release.sh)" if os.environ.get("KEYWAY_BIN")
                  else "plain cargo build --release"),
        "versions": {"keyway": sh([KEYWAY, "version"]).stdout.strip().split()[-1],
                     "rustc": sh(["rustc", "--version"]).stdout.strip(),
                     "nginx": sh(["nginx", "-v"]).stderr.strip().replace("nginx version: ", ""),
                     "wrk": "wrk " + (sh(["wrk", "-v"]).stdout.split()[1:2] or ["?"])[0],
                     "oha": sh(["oha", "--version"]).stdout.strip() if shutil.which("oha") else "hey (oha not installed)"},
        **P,
        "w1": w1, "w2": w2, "w3": w3, "w4": w4,
        "keyway": {"binary_mib": os.path.getsize(KEYWAY) / 1024 / 1024, "idle_rss_mib": idle_rss,
                   "stream_peak_rss_mib": peak, "stream_cpu_ms_per_stream": cpu_per_stream,
                   "reload_median_ms": float(m.group(1)) if m else None},
        "criterion": crit,
    }
    out = os.path.join(ROOT, "target", "bench", "results.json")
    write(out, json.dumps(results, indent=1))
    # Keyway's failures fail the run; a baseline's (nginx dropping a stream under the same
    # load) are reported in the tables and warned about here.
    def failures(keyway):
        lost = sum(x["lost_chunks"] + x["reordered_chunks"] + x["failed"] for name, runs in w3.items()
                   if name.startswith("keyway") == keyway for x in runs)
        errors = sum(x["errors"] for d in (w1, w2, w4) for name, runs in d.items()
                     if name.startswith("keyway") == keyway for x in runs)
        return errors, lost
    print(f"results: {out}")
    errors, lost = failures(False)
    if errors or lost:
        print(f"warning: baselines failed: {errors} request errors, {lost} lost/reordered chunks or failed streams")
    errors, lost = failures(True)
    if lost or errors:
        sys.exit(f"benchmark found failures: {errors} request errors, {lost} lost/reordered chunks or failed streams")


if __name__ == "__main__":
    main()
