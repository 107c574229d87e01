#!/usr/bin/env python3
"""Training run for a profile-guided build (scripts/build-release.sh).

Starts an instrumented Keyway in front of the bundled mock upstream on free 127.0.0.1 ports
and sends it a broad mix for a few seconds per phase, so the profile weighs the paths real
traffic takes, not one benchmark:

  1. the demo config (examples/demo): OpenAI Chat, Anthropic Messages and the Responses API,
     native and translated both ways, streamed and not, with every request body of the
     translation corpus (tests/golden, including real Claude Code and Codex turns of
     16-18 KB), plus the error answers (unknown model, bad key, bad JSON, wrong method);
     then the same over TLS when openssl is there to make a certificate;
  2. each shipped example policy (examples/policies/*.rhai), whose hooks run in Rhai.

Keyway is stopped with SIGTERM so it exits normally and writes its profile. Exits non-zero
when a phase served too few successful answers: a profile of error paths would be worse
than none.
"""
import argparse
import glob
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT_KEY = "pgo-client-key"
ENV = {
    "KEYWAY_DEMO_CLIENT_KEY": CLIENT_KEY,
    "KEYWAY_DEMO_OPENAI_KEY_1": "pgo-openai-1",
    "KEYWAY_DEMO_OPENAI_KEY_2": "pgo-openai-2",
    "KEYWAY_DEMO_ANTHROPIC_KEY": "pgo-anthropic",
    "KEYWAY_DEMO_DEEPSEEK_KEY": "pgo-deepseek",
    "TEAM_A_KEY": CLIENT_KEY,
    "TEAM_B_KEY": "pgo-team-b",
    "OPENAI_KEY": "pgo-openai",
    "OPENAI_KEY_2": "pgo-openai-extra",
    "GROQ_KEY": "pgo-groq",
    "OPENROUTER_KEY": "pgo-openrouter",
    "ANTHROPIC_KEY": "pgo-anthropic",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"pgo training: {name} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"pgo training: {name} did not listen on {port}")


def body(path, model):
    with open(path) as f:
        doc = json.load(f)
    doc["model"] = model
    return json.dumps(doc).encode()


def small(kind, model, stream):
    if kind == "chat":
        doc = {"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}],
               "max_tokens": 16}
    elif kind == "messages":
        doc = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}
    else:
        doc = {"model": model, "input": "hello"}
    if stream:
        doc["stream"] = True
    return json.dumps(doc).encode()


PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


def demo_mix():
    """(method, path, headers, body, expect_ok) for the demo config."""
    bearer = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    xkey = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    mix = []
    for kind in PATHS:
        hdrs = xkey if kind == "messages" else bearer
        for model in ("gpt-4o", "claude-3-5-sonnet", "deepseek-chat"):
            for stream in (False, True):
                # The everyday small request weighs most, as in real traffic.
                mix += [("POST", PATHS[kind], hdrs, small(kind, model, stream), True)] * 4
    corpus = {"chat_to_messages": ("chat", ["claude-3-5-sonnet", "gpt-4o"]),
              "messages_to_chat": ("messages", ["deepseek-chat", "claude-3-5-sonnet"]),
              "responses_to_chat": ("responses", ["deepseek-chat", "gpt-4o"]),
              "responses_to_messages": ("responses", ["claude-3-5-sonnet"])}
    for direction, (kind, models) in corpus.items():
        hdrs = xkey if kind == "messages" else bearer
        for path in sorted(glob.glob(os.path.join(ROOT, "tests", "golden", direction, "*", "request.json"))):
            for model in models:
                # Some corpus requests are meant to be refused (unsupported parts): not expected ok.
                mix.append(("POST", PATHS[kind], hdrs, body(path, model), None))
    mix += [
        ("GET", "/v1/models", bearer, None, True),
        ("POST", PATHS["chat"], bearer, small("chat", "no-such-model", False), False),
        ("POST", PATHS["chat"], {**bearer, "authorization": "Bearer wrong-key"}, small("chat", "gpt-4o", False), False),
        ("POST", PATHS["chat"], bearer, b'{"model": "gpt-4o", "messages": [', False),
        ("POST", PATHS["messages"], xkey, b'{"max_tokens": 8, "messages": []}', False),
        ("GET", PATHS["chat"], bearer, None, False),
    ]
    return mix


def policy_mix():
    mix = []
    for client_key in (CLIENT_KEY, "pgo-team-b"):
        bearer = {"authorization": f"Bearer {client_key}", "content-type": "application/json"}
        for model in ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-latest", "llama-3.1-8b-instant"):
            for stream in (False, True):
                mix += [("POST", PATHS["chat"], bearer, small("chat", model, stream), None)] * 3
                mix.append(("POST", PATHS["responses"], bearer, small("responses", model, stream), None))
        xkey = {"x-api-key": client_key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        mix.append(("POST", PATHS["messages"], xkey, small("messages", "claude-3-5-sonnet-latest", False), None))
    return mix


def drive(port, mix, seconds, threads=2, tls=None):
    """Sends the mix in random order on keep-alive connections until the time is up."""
    deadline = time.monotonic() + seconds

    def connect():
        if tls:
            return http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    stats = {"sent": 0, "ok": 0, "expected_ok_failed": 0, "statuses": {}}
    lock = threading.Lock()

    def worker(seed):
        rnd = random.Random(seed)
        conn = connect()
        while time.monotonic() < deadline:
            method, path, hdrs, data, expect_ok = rnd.choice(mix)
            try:
                conn.request(method, path, body=data, headers=hdrs)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = connect()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = connect()
                status = 0
            with lock:
                stats["sent"] += 1
                stats["ok"] += 200 <= status < 300
                stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
                if expect_ok and not 200 <= status < 300:
                    stats["expected_ok_failed"] += 1
        conn.close()

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return stats


def run_keyway(keyway, config, port, env, log):
    proc = subprocess.Popen([keyway, "run", "--config", config], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port, proc, "keyway")
    except SystemExit:
        proc.kill()
        proc.wait()
        raise
    return proc


def stop_keyway(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit("pgo training: keyway did not stop within 30 s of SIGTERM; no profile written")
    if code != 0:
        sys.exit(f"pgo training: keyway exited with {code}; its profile may be incomplete")


def check(name, stats, min_ok_share, log):
    share = stats["ok"] / max(stats["sent"], 1)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(stats["statuses"].items()))
    print(f"pgo training: {name}: {stats['sent']} requests, {share:.0%} 2xx ({statuses})", flush=True)
    if stats["sent"] < 50 or share < min_ok_share or stats["expected_ok_failed"]:
        sys.exit(f"pgo training: {name} served too few successful answers "
                 f"({stats['expected_ok_failed']} that should have succeeded failed); see {log}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keyway", required=True, help="the instrumented keyway binary")
    ap.add_argument("--mock", required=True, help="the mock_upstream binary")
    ap.add_argument("--seconds", type=float, default=12, help="length of the demo phase")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="keyway-pgo-")
    env = dict(os.environ, **ENV)
    mock_port, kw_port, admin_port = free_port(), free_port(), free_port()
    mock = subprocess.Popen([args.mock, "--listen", f"127.0.0.1:{mock_port}", "--chunks", "8", "--pacing-ms", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log = open(os.path.join(work, "keyway.log"), "w")
    try:
        wait_port(mock_port, mock, "mock upstream")
        with open(os.path.join(ROOT, "examples", "demo", "keyway.toml")) as f:
            demo = f.read()
        demo = (demo.replace("127.0.0.1:8787", f"127.0.0.1:{kw_port}")
                .replace("127.0.0.1:9787", f"127.0.0.1:{admin_port}")
                .replace("127.0.0.1:18080", f"127.0.0.1:{mock_port}")
                .replace('dir = "policies"', f'dir = {json.dumps(os.path.join(ROOT, "examples", "demo", "policies"))}'))
        config = os.path.join(work, "demo.toml")
        with open(config, "w") as f:
            f.write(demo)
        proc = run_keyway(args.keyway, config, kw_port, env, log)
        try:
            stats = drive(kw_port, demo_mix(), args.seconds)
        finally:
            stop_keyway(proc)
        check("demo config", stats, 0.6, log.name)

        # The same over TLS (HTTP/1.1; rustls), with a throwaway certificate.
        if shutil.which("openssl"):
            cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
            config = os.path.join(work, "demo-tls.toml")
            with open(config, "w") as f:
                f.write(demo.replace("[server]\n", f"[server]\ntls = {{ cert = {json.dumps(cert)}, key = {json.dumps(key)} }}\n", 1))
            proc = run_keyway(args.keyway, config, kw_port, env, log)
            try:
                stats = drive(kw_port, demo_mix(), max(args.seconds / 3, 1), tls=ssl.create_default_context(cafile=cert))
            finally:
                stop_keyway(proc)
            check("demo config over TLS", stats, 0.6, log.name)
        else:
            print("pgo training: openssl not found, TLS not trained", flush=True)

        # The example policies: every provider points at the mock.
        with open(os.path.join(ROOT, "examples", "policies", "keyway.toml")) as f:
            example = f.read()
        for url in ("https://api.openai.com/v1", "https://api.groq.com/openai/v1", "https://openrouter.ai/api/v1",
                    "https://api.anthropic.com/v1"):
            example = example.replace(url, f"http://127.0.0.1:{mock_port}/v1")
        example = example.replace("127.0.0.1:8787", f"127.0.0.1:{kw_port}")
        for policy in sorted(glob.glob(os.path.join(ROOT, "examples", "policies", "*.rhai"))):
            name = os.path.basename(policy)
            pdir = os.path.join(work, name + ".d")
            os.makedirs(pdir)
            shutil.copy(policy, os.path.join(pdir, "main.rhai"))
            config = os.path.join(work, name + ".toml")
            with open(config, "w") as f:
                f.write(example.replace('dir = "."', f"dir = {json.dumps(pdir)}"))
            proc = run_keyway(args.keyway, config, kw_port, env, log)
            try:
                stats = drive(kw_port, policy_mix(), max(args.seconds / 6, 1))
            finally:
                stop_keyway(proc)
            check(f"policy {name}", stats, 0.3, log.name)
    finally:
        mock.kill()
        mock.wait()
        log.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
