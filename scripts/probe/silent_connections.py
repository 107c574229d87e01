#!/usr/bin/env python3
"""Holds N silent TCP connections against a Keyway for T seconds (reopening any it closes,
as an attacker would) while a well-behaved client sends one request every 200 ms on a fresh
connection. Reports request outcomes and latency, Keyway's RSS over time, and how often
Keyway closed the silent sockets. Loopback only; bounded in sockets and time.

  python3 scripts/probe/silent_connections.py --port 8787 --pid PID [--sockets 2000] [--seconds 60]
"""
import argparse, json, os, selectors, socket, time, urllib.request

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--pid", type=int, required=True, help="Keyway's pid, for RSS")
p.add_argument("--sockets", type=int, default=2000)
p.add_argument("--seconds", type=float, default=60.0)
p.add_argument("--key", default="")
p.add_argument("--model", default="gpt-4o-mini")
a = p.parse_args()
assert a.host.startswith("127.") or a.host == "localhost", "loopback only"
a.sockets = min(a.sockets, 5000)
a.seconds = min(a.seconds, 300.0)


def rss_mib():
    with open(f"/proc/{a.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


sel = selectors.DefaultSelector()
opened = closed_by_server = connect_failures = 0


def open_one():
    global opened, connect_failures
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect_ex((a.host, a.port))
        sel.register(s, selectors.EVENT_READ)
        opened += 1
    except OSError:
        connect_failures += 1
        s.close()


rss_before = rss_mib()
for _ in range(a.sockets):
    open_one()
body = json.dumps({"model": a.model, "messages": [{"role": "user", "content": "hi"}]}).encode()
headers = {"Content-Type": "application/json"}
if a.key:
    headers["Authorization"] = f"Bearer {a.key}"
ok = failed = 0
latencies, rss_samples, errors = [], [], {}
start = time.time()
next_request = start
while time.time() - start < a.seconds:
    for key, _ in sel.select(timeout=0.05):
        s = key.fileobj
        try:
            data = s.recv(1)
        except OSError:
            data = b""
        if not data:  # Keyway closed it: reconnect, as an attacker would
            sel.unregister(s)
            s.close()
            closed_by_server += 1
            open_one()
    now = time.time()
    if now >= next_request:
        next_request = now + 0.2
        t = time.time()
        try:
            req = urllib.request.Request(f"http://{a.host}:{a.port}/v1/chat/completions", data=body, headers=headers)
            with urllib.request.urlopen(req, timeout=5) as r:
                r.read()
                ok += r.status == 200
                failed += r.status != 200
            latencies.append((time.time() - t) * 1000)
        except Exception as e:  # noqa: BLE001 - a probe reports every failure
            failed += 1
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        rss_samples.append(rss_mib())
held = len(sel.get_map())
for key in list(sel.get_map().values()):
    key.fileobj.close()
latencies.sort()
pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")
print(json.dumps({
    "sockets": a.sockets, "seconds": a.seconds, "silent_open_at_end": held,
    "silent_closed_by_keyway": closed_by_server, "connect_failures": connect_failures,
    "requests_ok": ok, "requests_failed": failed, "errors": errors,
    "latency_ms_p50": round(pct(0.5), 2), "latency_ms_p99": round(pct(0.99), 2), "latency_ms_max": round(pct(1.0), 2),
    "rss_mib_before": round(rss_before, 1), "rss_mib_max": round(max(rss_samples or [0]), 1),
    "rss_mib_end": round(rss_mib(), 1),
}, indent=1))
