"""Time from saving a policy file to Keyway serving the new policy.

Starts the mock upstream and Keyway (binaries given), then for N trials saves a policy
that routes to a new model name (atomic rename, as editors do) and polls Keyway until a
response carries that model. Prints each trial and the median, in milliseconds.

Usage: reload_latency.py KEYWAY_BIN MOCK_BIN [TRIALS]
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(keyway_bin, mock_bin, trials=15):
    tmp = tempfile.mkdtemp(prefix="keyway-reload-")
    os.makedirs(os.path.join(tmp, "policies"))
    mock_port, port = free_port(), free_port()
    with open(os.path.join(tmp, "keyway.toml"), "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:{port}"
[auth]
allow_unauthenticated = true
[policy]
dir = "policies"
[[provider]]
id = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
[[provider.connection]]
id = "main"
keys = ["env:RELOAD_BENCH_KEY"]
""")
    main_rhai = os.path.join(tmp, "policies", "main.rhai")

    def save(model):
        tmp_path = main_rhai + ".tmp"
        with open(tmp_path, "w") as f:
            f.write(f'fn route(req) {{ ["mock/{model}"] }}\n')
        os.rename(tmp_path, main_rhai)

    save("model-0")
    env = dict(os.environ, RELOAD_BENCH_KEY="k", RUST_LOG="warn")
    procs = [
        subprocess.Popen([mock_bin, "--listen", f"127.0.0.1:{mock_port}"], stdout=subprocess.DEVNULL),
        subprocess.Popen([keyway_bin, "run", "--config", os.path.join(tmp, "keyway.toml")], env=env),
    ]
    body = json.dumps({"model": "x", "messages": []}).encode()

    def served():
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)["model"]

    try:
        for _ in range(100):
            try:
                served()
                break
            except OSError:
                time.sleep(0.05)
        times = []
        for i in range(1, trials + 1):
            time.sleep(0.2)  # let the previous reload's debounce settle
            start = time.perf_counter()
            save(f"model-{i}")
            while served() != f"model-{i}":
                if time.perf_counter() - start > 5:
                    raise SystemExit(f"trial {i}: not reloaded within 5 s")
            times.append((time.perf_counter() - start) * 1000)
        print("reload latency ms:", " ".join(f"{t:.1f}" for t in times))
        print(f"reload latency median: {statistics.median(times):.1f} ms (debounce 50 ms; {trials} trials)")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 15)
