"""End-to-end check with the official OpenAI and Anthropic Python SDKs, as a user would
run them: Keyway over TLS (certificate from `trustme`) in front of the mock upstream.

Usage: e2e.py KEYWAY_BIN MOCK_BIN
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import anthropic
import httpx
import httpx2
import openai
import trustme


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(keyway_bin, mock_bin):
    tmp = tempfile.mkdtemp(prefix="keyway-sdk-")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(os.path.join(tmp, "server.pem"))
    ca.cert_pem.write_to_path(os.path.join(tmp, "ca.pem"))
    mock_port, port = free_port(), free_port()
    with open(os.path.join(tmp, "keyway.toml"), "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:{port}"
tls = {{ cert = "server.pem", key = "server.pem" }}
[auth]
clients = [{{ name = "sdk", key = "env:E2E_CLIENT_KEY" }}]
[[provider]]
id = "openai"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
models = ["gpt-4o", "gpt-5", "text-embedding-3-small"]
[[provider.connection]]
id = "main"
keys = ["env:E2E_OPENAI_KEY"]
[[provider]]
id = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:{mock_port}/v1"
models = ["claude-3-5-sonnet"]
[[provider.connection]]
id = "main"
keys = ["env:E2E_ANTHROPIC_KEY"]
[[provider]]
id = "deepseek"
kind = "openai-compatible"
base_url = "http://127.0.0.1:{mock_port}/v1"
models = ["deepseek-chat"]
[[provider.connection]]
id = "main"
keys = ["env:E2E_OPENAI_KEY"]
""")
    env = dict(os.environ, RUST_LOG="warn", E2E_CLIENT_KEY="sdk-client-key", E2E_OPENAI_KEY="sk-e2e-openai",
               E2E_ANTHROPIC_KEY="sk-ant-e2e")
    procs = [
        subprocess.Popen([mock_bin, "--listen", f"127.0.0.1:{mock_port}", "--chunks", "6", "--pacing-ms", "10"],
                         stdout=subprocess.DEVNULL),
        subprocess.Popen([keyway_bin, "run", "--config", os.path.join(tmp, "keyway.toml")], env=env),
    ]
    try:
        ca_file = os.path.join(tmp, "ca.pem")
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        oai = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key="sdk-client-key",
                            http_client=httpx.Client(verify=ca_file), max_retries=0)
        chunks = [c.choices[0].delta.content for c in oai.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices and c.choices[0].delta.content]
        assert chunks == [f"tok{i} " for i in range(6)], chunks
        reply = oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content.startswith("tok0"), reply
        assert oai.embeddings.create(model="text-embedding-3-small", input="x").data[0].embedding == [0.1, 0.2, 0.3]
        assert [m.id for m in oai.models.list()][:1] == ["gpt-4o"]
        try:
            oai.chat.completions.create(model="no-such-model", messages=[])
            raise AssertionError("unknown model accepted")
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body
        try:
            openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key="wrong",
                          http_client=httpx.Client(verify=ca_file), max_retries=0).models.list()
            raise AssertionError("wrong key accepted")
        except openai.AuthenticationError:
            pass
        ant = anthropic.Anthropic(base_url=f"https://localhost:{port}", api_key="sdk-client-key",
                                  http_client=httpx2.Client(verify=ca_file), max_retries=0)
        with ant.messages.stream(model="claude-3-5-sonnet", max_tokens=64,
                                 messages=[{"role": "user", "content": "hi"}]) as s:
            text = "".join(s.text_stream)
        assert text == "".join(f"tok{i} " for i in range(6)), text
        msg = ant.messages.create(model="claude-3-5-sonnet", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
        assert msg.content[0].text.startswith("tok0"), msg
        # Translated routes: the OpenAI SDK asks for a Claude model (Anthropic provider) ...
        want = "".join(f"tok{i} " for i in range(6))
        stream = oai.chat.completions.create(model="claude-3-5-sonnet", messages=[{"role": "user", "content": "hi"}],
                                             stream=True, stream_options={"include_usage": True})
        got, usage = "", None
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                got += c.choices[0].delta.content
            if c.usage:
                usage = c.usage
        assert got == want, got
        assert usage and usage.completion_tokens == 6 and usage.prompt_tokens == 5, usage
        reply = oai.chat.completions.create(model="claude-3-5-sonnet", messages=[
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == want and reply.choices[0].finish_reason == "stop", reply
        # ... and the Anthropic SDK asks for a GPT model (OpenAI provider).
        with ant.messages.stream(model="gpt-4o", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert text == want, text
        assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6, final
        msg = ant.messages.create(model="gpt-4o", max_tokens=64, system="be brief",
                                  messages=[{"role": "user", "content": "hi"}])
        assert msg.content[0].text == want and msg.stop_reason == "end_turn", msg
        # Tools across formats: a streamed parallel tool call the OpenAI SDK reassembles,
        # from an Anthropic provider, then the tool-result round trip.
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                 {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
                  "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}]
        calls = {}
        for c in oai.chat.completions.create(model="claude-3-5-sonnet", stream=True, tools=tools,
                                             messages=[{"role": "user", "content": "weather and time?"}]):
            for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
                slot["id"] = slot["id"] or tc.id
                slot["name"] = slot["name"] or (tc.function.name if tc.function else None)
                slot["args"] += (tc.function.arguments or "") if tc.function else ""
        assert sorted(calls) == [0, 1], calls
        assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"], calls
        assert json.loads(calls[0]["args"]) == {"city": "mock city"}, calls
        assert json.loads(calls[1]["args"]) == {"zone": "mock zone"}, calls
        reply = oai.chat.completions.create(model="claude-3-5-sonnet", tools=tools, messages=[
            {"role": "user", "content": "weather and time?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": calls[i]["id"], "type": "function", "function": {"name": calls[i]["name"], "arguments": calls[i]["args"]}}
                for i in (0, 1)]},
            {"role": "tool", "tool_call_id": calls[1]["id"], "content": "12:00"},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C"}])
        assert reply.choices[0].message.content.startswith("Done:"), reply
        assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls, reply
        # The Anthropic SDK with thinking and tools on an OpenAI reasoning model (the
        # capability table sends `reasoning_effort` to GPT-5, not to GPT-4o).
        ant_tools = [{"name": "get_weather", "description": "Weather in a city",
                      "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
        with ant.messages.stream(model="gpt-5", max_tokens=4096, tools=ant_tools,
                                 thinking={"type": "enabled", "budget_tokens": 2048},
                                 messages=[{"role": "user", "content": "weather?"}]) as s:
            final = s.get_final_message()
        kinds = [b.type for b in final.content]
        assert kinds == ["thinking", "text", "tool_use"], kinds
        assert final.content[0].thinking == "Thinking it over.", final
        use = final.content[2]
        assert use.name == "get_weather" and use.input == {"city": "mock city"}, use
        assert final.stop_reason == "tool_use", final
        msg = ant.messages.create(model="gpt-4o", max_tokens=256, tools=ant_tools, messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                              {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]}])
        assert msg.content[0].text.startswith("Done:") and msg.stop_reason == "end_turn", msg
        # The Responses API: pass-through to OpenAI (ids tagged with the creating
        # connection, so retrieval and previous_response_id find it), and translated to an
        # Anthropic and an OpenAI-compatible provider.
        first = oai.responses.create(model="gpt-4o", input="hi")
        assert first.output_text == want and first.status == "completed", first
        assert first.id.startswith("resp_mock1_kw"), first.id
        assert oai.responses.retrieve(first.id).id == first.id
        again = oai.responses.create(model="gpt-4o", input="again", previous_response_id=first.id)
        assert again.previous_response_id == first.id, again
        weather = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
        for model in ("gpt-4o", "claude-3-5-sonnet", "deepseek-chat"):
            plain = oai.responses.create(model=model, input="hi")
            assert plain.output_text == want, (model, plain)
            assert plain.usage.output_tokens == 6, (model, plain.usage)
            deltas = [e.delta for e in oai.responses.create(model=model, input="hi", stream=True)
                      if e.type == "response.output_text.delta"]
            assert "".join(deltas) == want, (model, deltas)
            with oai.responses.stream(model=model, input="weather?", tools=weather) as s:
                kinds = [e.type for e in s]
                final = s.get_final_response()
            assert "response.function_call_arguments.delta" in kinds, (model, kinds)
            assert kinds[-1] == "response.completed", (model, kinds)
            calls = [o for o in final.output if o.type == "function_call"]
            assert len(calls) == 1 and calls[0].name == "get_weather", (model, final.output)
            assert json.loads(calls[0].arguments) == {"city": "mock city"}, calls
            done = oai.responses.create(model=model, tools=weather, input=[
                {"role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                 "arguments": calls[0].arguments},
                {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C"}])
            assert done.output_text.startswith("Done:"), (model, done)
        try:
            oai.responses.create(model="claude-3-5-sonnet", input="hi", previous_response_id="resp_x")
            raise AssertionError("previous_response_id accepted on a translated route")
        except openai.BadRequestError as e:
            assert e.body["param"] == "previous_response_id", e.body
        print("sdk e2e: 20 passed, 0 failed")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
