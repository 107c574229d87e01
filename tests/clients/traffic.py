"""What real coding clients send, kept as golden translator inputs.

The mock upstream records every request it gets (`--record FILE`, JSON lines). On the
pass-through runs of scripts/clients-e2e.sh the upstream receives the client's own bytes,
so those records are the clients' requests. This tool:

  traffic.py capture RECORD GOLDEN   write the clients' requests as golden cases (long
                                     texts elided: the shape matters, not their wording)
  traffic.py check RECORD GOLDEN     fail when a client's request shape differs from the
                                     golden one (a client update changed what it sends)

A golden case is `tests/golden/<pair>/<case>/request.json` (+ `headers.json`); the
translators' outputs for it are checked by tests/translation.rs like every golden case.
"""
import json
import os
import sys

# (case directory, which recorded request: client, upstream path, index among those, meta)
CASES = [
    ("messages_to_chat/client_claude_code_first_turn", "claude-code", "/v1/messages", 0,
     {"target_model": "deepseek-chat", "kind": "openai-compatible",
      "capabilities": {"max_output_tokens": 8192, "thinking": "effort"}}),
    ("messages_to_chat/client_claude_code_tool_result_turn", "claude-code", "/v1/messages", 1,
     {"target_model": "gpt-5", "kind": "openai"}),
    ("responses_to_chat/client_codex_first_turn", "codex", "/v1/responses", 0,
     {"target_model": "deepseek-chat", "kind": "openai-compatible", "capabilities": {"thinking": "effort"}}),
    ("responses_to_messages/client_codex_tool_result_turn", "codex", "/v1/responses", 1,
     {"target_model": "claude-sonnet-4-5"}),
]

# Headers whose presence (and for these, value) is part of the shape.
VALUE_HEADERS = {"anthropic-beta", "anthropic-version", "x-app", "originator", "openai-beta"}
VOLATILE_HEADERS = {"content-length", "host", "authorization", "x-api-key", "connection",
                    "x-stainless-retry-count", "x-stainless-timeout", "accept-encoding"}
LONG = 160


def elide(v):
    if isinstance(v, str):
        return v if len(v) <= LONG else f"<{len(v)} characters of the client's own text, elided>"
    if isinstance(v, list):
        return [elide(x) for x in v]
    if isinstance(v, dict):
        return {k: elide(x) for k, x in v.items()}
    return v


def shape(v, key=""):
    """Structure without wording: strings become "str" except where they name structure
    (types, roles, tool names)."""
    if isinstance(v, dict):
        return {k: shape(x, k) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [shape(x, key) for x in v]
    if isinstance(v, str):
        return v if key in ("type", "role", "name", "model", "wire_api") else "str"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "num"
    return None


def header_shape(h):
    out = {}
    for k, v in sorted(h.items()):
        k = k.lower()
        if k in VOLATILE_HEADERS:
            continue
        out[k] = sorted(v.split(",")) if k in VALUE_HEADERS else "str"
    return out


def client_of(rec):
    ua = rec["headers"].get("user-agent", "")
    if "claude-cli" in ua or "claude-code" in ua or rec["headers"].get("x-app") == "cli":
        return "claude-code"
    if "codex" in ua.lower() or "originator" in rec["headers"]:
        return "codex"
    return "other"


def pick(records, client, path, index):
    hits = [r for r in records if client_of(r) == client and r["path"] == path
            and isinstance(r.get("body"), dict) and r["body"].get("tools")]
    if len(hits) <= index:
        raise SystemExit(f"traffic: no request #{index} from {client} on {path} in the recording")
    return hits[index]


def main(mode, record, golden):
    records = [json.loads(line) for line in open(record) if line.strip()]
    failures = []
    for case, client, path, index, meta in CASES:
        rec = pick(records, client, path, index)
        d = os.path.join(golden, case)
        body, headers = elide(rec["body"]), {k: v for k, v in rec["headers"].items()
                                            if k.lower() not in VOLATILE_HEADERS}
        if mode == "capture":
            os.makedirs(d, exist_ok=True)
            for name, obj in (("request.json", body), ("headers.json", headers)):
                with open(os.path.join(d, name), "w") as f:
                    json.dump(obj, f, indent=2)
                    f.write("\n")
            if not os.path.exists(os.path.join(d, "meta.json")):
                with open(os.path.join(d, "meta.json"), "w") as f:
                    json.dump(dict(meta, dropped=[]), f, indent=2)
                    f.write("\n")
            print(f"traffic: captured {case}")
            continue
        want_body = json.load(open(os.path.join(d, "request.json")))
        want_headers = json.load(open(os.path.join(d, "headers.json")))
        if shape(body) != shape(want_body):
            failures.append(f"{case}: {client}'s request body changed shape")
            diff(shape(want_body), shape(body), case)
        if header_shape(headers) != header_shape(want_headers):
            failures.append(f"{case}: {client}'s request headers changed: "
                            f"{header_shape(want_headers)} -> {header_shape(headers)}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        print("a client changed what it sends: check the translators, then re-capture with "
              "scripts/clients-e2e.sh --capture", file=sys.stderr)
        sys.exit(1)
    if mode == "check":
        print(f"traffic: {len(CASES)} client requests match their golden shape")


def diff(want, got, at):
    if type(want) is not type(got):
        print(f"  {at}: {json.dumps(want)[:120]} -> {json.dumps(got)[:120]}", file=sys.stderr)
    elif isinstance(want, dict):
        for k in sorted(set(want) | set(got)):
            if k not in got:
                print(f"  {at}.{k}: gone", file=sys.stderr)
            elif k not in want:
                print(f"  {at}.{k}: new", file=sys.stderr)
            else:
                diff(want[k], got[k], f"{at}.{k}")
    elif isinstance(want, list):
        if len(want) != len(got):
            print(f"  {at}: {len(want)} items -> {len(got)}", file=sys.stderr)
        for i, (a, b) in enumerate(zip(want, got)):
            diff(a, b, f"{at}[{i}]")
    elif want != got:
        print(f"  {at}: {want!r} -> {got!r}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
