//! The OpenAI Responses API (`/v1/responses`): pass-through to providers that speak it
//! (response ids tagged with the connection that created them, so retrievals and
//! `previous_response_id` find it again), and translation to Chat and Messages providers
//! (full Responses objects and event streams; stateful features refused with `param`).

mod support;

use serde_json::{json, Value};
use support::{MockUpstream, TestProxy};

/// An `openai` provider with two connections (two accounts); the policy sends requests
/// with `x-conn: b` to connection `b`.
async fn openai_two_accounts(mock: &MockUpstream) -> TestProxy {
    TestProxy::builder()
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-5"],
            &["sk-account-a-0001"],
        )
        .connection("b", &["sk-account-b-0002"])
        .policy(
            r#"
fn route(req) {
    if req.header("x-conn") == "b" {
        [#{ target: "openai/" + req.model, connection: "b" }]
    } else {
        routes::resolve(req.model)
    }
}
"#,
        )
        .start()
        .await
}

fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_string();
            let data: String = e.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            let v: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data}: {e}"));
            assert_eq!(v["type"], name.as_str(), "event name and type agree");
            (name, v)
        })
        .collect()
}

#[tokio::test]
async fn pass_through_tags_ids_and_previous_response_id_returns_to_its_creator() {
    let mock = MockUpstream::start().await;
    let proxy = openai_two_accounts(&mock).await;
    // Created on account b.
    let body = r#"{"model":"gpt-5", "input":"hi", "store":true, "unknown_field":{"kept":1}}"#;
    let resp = proxy
        .post("/v1/responses")
        .header("content-type", "application/json")
        .header("x-conn", "b")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("resp_mock1_kw") && id.len() == "resp_mock1".len() + 11,
        "{id}"
    );
    assert_eq!(v["output"][0]["content"][0]["text"], "tok0 tok1 tok2 ");
    let first = &mock.received()[0];
    assert_eq!(first.path, "/v1/responses");
    assert_eq!(
        &first.body[..],
        body.as_bytes(),
        "pass-through is byte for byte"
    );
    assert_eq!(first.key.as_deref(), Some("sk-account-b-0002"));

    // The next turn names it, without the header: it still goes to account b, and the
    // upstream sees its own id.
    let resp = proxy
        .post("/v1/responses")
        .json(&json!({"model": "gpt-5", "input": "again", "previous_response_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["previous_response_id"],
        id.as_str(),
        "echoed id is tagged again"
    );
    let second = &mock.received()[1];
    assert_eq!(second.key.as_deref(), Some("sk-account-b-0002"));
    assert_eq!(second.json()["previous_response_id"], "resp_mock1");

    // Retrieval, input items, cancel and delete go to account b too.
    for (method, path) in [
        ("GET", format!("/v1/responses/{id}")),
        ("GET", format!("/v1/responses/{id}/input_items")),
        ("POST", format!("/v1/responses/{id}/cancel")),
        ("DELETE", format!("/v1/responses/{id}")),
    ] {
        let resp = proxy
            .http()
            .request(method.parse().unwrap(), proxy.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
        let trace = resp.headers()["x-keyway-attempts"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(trace.contains("openai/responses b/k0 200"), "{trace}");
        let got = mock.received().last().unwrap().clone();
        assert_eq!(got.method, method);
        assert_eq!(got.path, path.replace(&id, "resp_mock1"));
        assert_eq!(got.key.as_deref(), Some("sk-account-b-0002"));
        let v: Value = resp.json().await.unwrap();
        if v.get("id").is_some() {
            assert_eq!(v["id"], id.as_str());
        }
    }

    // Ids Keyway cannot place answer 404 in OpenAI's shape, and nothing is sent.
    let before = mock.received().len();
    for bad in ["resp_notours", "resp_mock1_kw00000000", "resp_kwchatcmpl-x"] {
        let resp = proxy
            .http()
            .get(proxy.url(&format!("/v1/responses/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{bad}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "response_not_found", "{bad}");
    }
    assert_eq!(mock.received().len(), before);
}

#[tokio::test]
async fn a_pass_through_stream_keeps_its_events_and_tags_ids() {
    let mock = MockUpstream::start().await;
    let proxy = openai_two_accounts(&mock).await;
    let resp = proxy
        .post("/v1/responses")
        .json(&json!({"model": "gpt-5", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let evs = events(&text);
    assert_eq!(evs.first().unwrap().0, "response.created");
    assert_eq!(evs.last().unwrap().0, "response.completed");
    let id = evs[0].1["response"]["id"].as_str().unwrap();
    assert!(id.starts_with("resp_mock1_kw"), "{id}");
    assert_eq!(evs.last().unwrap().1["response"]["id"], id);
    assert!(!text.contains("\"resp_mock1\""), "no untagged id escapes");
}

async fn translated(mock: &MockUpstream) -> TestProxy {
    TestProxy::builder()
        .provider(
            "anthropic",
            "anthropic",
            &mock.base_url(),
            &["claude-sonnet-4-5"],
            &["sk-ant-responses"],
        )
        .provider(
            "deepseek",
            "openai-compatible",
            &mock.base_url(),
            &["deepseek-chat"],
            &["sk-ds-responses"],
        )
        // DeepSeek takes `reasoning_effort` (the table's default for unknown models is none).
        .extra("[[capability]]\nmodels = \"deepseek-*\"\nthinking = \"effort\"\n")
        .start()
        .await
}

fn codex_like(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "AGENTS.md says hi"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]}
        ],
        "tools": [
            {"type": "function", "name": "exec_command", "strict": false,
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
            {"type": "custom", "name": "apply_patch", "description": "Apply a patch",
             "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
            {"type": "web_search"}
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": false,
        "stream": stream,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "thread-1",
        "client_metadata": {"session_id": "s"}
    })
}

#[tokio::test]
async fn codex_shaped_requests_reach_chat_and_messages_providers() {
    let mock = MockUpstream::start().await;
    let proxy = translated(&mock).await;
    for (model, via, path) in [
        (
            "deepseek-chat",
            "via responses-to-chat",
            "/v1/chat/completions",
        ),
        (
            "claude-sonnet-4-5",
            "via responses-to-messages",
            "/v1/messages",
        ),
    ] {
        let resp = proxy
            .post("/v1/responses")
            .json(&codex_like(model, false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        let trace = resp.headers()["x-keyway-attempts"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(trace.contains(via), "{trace}");
        let dropped = resp.headers()["x-keyway-dropped"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            dropped.contains("client_metadata") && !dropped.contains("include"),
            "{dropped}"
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert!(v["id"].as_str().unwrap().starts_with("resp_kw"));
        let types: Vec<&str> = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        // Thinking (asked for), the line, then the two tools restored to their own types.
        assert_eq!(
            types,
            ["reasoning", "message", "function_call", "custom_tool_call"],
            "{model}: {v}"
        );
        let custom = &v["output"][3];
        assert_eq!(custom["name"], "apply_patch");
        assert_eq!(custom["input"], "mock input", "the raw input, unwrapped");
        assert!(v["output"][0]["encrypted_content"]
            .as_str()
            .unwrap()
            .starts_with("kw1."));
        assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
        let sent = mock.received().last().unwrap().clone();
        assert_eq!(sent.path, path);
        let body = sent.json();
        let names: Vec<String> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["function"]["name"]
                    .as_str()
                    .or(t["name"].as_str())
                    .unwrap()
                    .to_string()
            })
            .collect();
        if path == "/v1/messages" {
            assert_eq!(
                names,
                ["exec_command", "apply_patch", "web_search"],
                "{body}"
            );
            assert_eq!(body["system"][0]["text"], "You are a coding agent.");
            assert_eq!(body["system"][1]["text"], "AGENTS.md says hi");
        } else {
            assert_eq!(names, ["exec_command", "apply_patch"], "{body}");
            assert_eq!(body["messages"][0]["role"], "system");
            assert!(body.get("prompt_cache_key").is_none(), "OpenAI-only field");
        }
    }
}

#[tokio::test]
async fn translated_streams_are_full_responses_event_sequences() {
    let mock = MockUpstream::start().await;
    let proxy = translated(&mock).await;
    for model in ["deepseek-chat", "claude-sonnet-4-5"] {
        let resp = proxy
            .post("/v1/responses")
            .json(&codex_like(model, true))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("[DONE]"),
            "{model}: Responses streams have no [DONE]"
        );
        let evs = events(&text);
        for (i, (_, v)) in evs.iter().enumerate() {
            assert_eq!(
                v["sequence_number"], i as u64,
                "{model}: dense sequence numbers"
            );
        }
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[..2],
            ["response.created", "response.in_progress"],
            "{model}"
        );
        assert_eq!(
            *names.last().unwrap(),
            "response.completed",
            "{model}: {names:?}"
        );
        for must in [
            "response.reasoning_summary_text.delta",
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.custom_tool_call_input.done",
        ] {
            assert!(names.contains(&must), "{model}: no {must} in {names:?}");
        }
        let done = &evs.last().unwrap().1["response"];
        assert_eq!(
            done["output"].as_array().unwrap().len(),
            4,
            "{model}: {done}"
        );
        assert!(
            done["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{model}: {done}"
        );
        // output_index rises by one per item, assigned when the item is added.
        let added: Vec<u64> = evs
            .iter()
            .filter(|(n, _)| n == "response.output_item.added")
            .map(|(_, v)| v["output_index"].as_u64().unwrap())
            .collect();
        assert_eq!(added, [0, 1, 2, 3], "{model}");
    }
}

#[tokio::test]
async fn what_needs_openais_state_is_refused_with_param() {
    let mock = MockUpstream::start().await;
    let proxy = translated(&mock).await;
    let base = |extra: Value| {
        let mut b = json!({"model": "claude-sonnet-4-5", "input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases = [
        (
            json!({"previous_response_id": "resp_abc"}),
            "previous_response_id",
        ),
        (json!({"conversation": "conv_1"}), "conversation"),
        (
            json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0]",
        ),
        (
            json!({"input": [{"type": "compaction_trigger"}]}),
            "input[0]",
        ),
        (
            json!({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}),
            "tools[0].type",
        ),
        (
            json!({"tools": [{"type": "code_interpreter"}]}),
            "tools[0].type",
        ),
        (
            json!({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "web_search_preview"}}),
            "tool_choice",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]}),
            "input[0].content[0]",
        ),
        (json!({"prompt": {"id": "pmpt_1"}}), "prompt"),
    ];
    for (extra, param) in cases {
        let resp = proxy
            .post("/v1/responses")
            .json(&base(extra.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{extra}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{extra}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // Remote compaction needs a provider that speaks Responses.
    let resp = proxy
        .post("/v1/responses/compact")
        .json(&json!({"model": "claude-sonnet-4-5", "input": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("compact locally"),
        "{v}"
    );
    assert!(mock.received().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn reasoning_minted_on_a_translated_route_restores_anthropic_thinking() {
    let mock = MockUpstream::start().await;
    let proxy = translated(&mock).await;
    let mut first = codex_like("claude-sonnet-4-5", false);
    first["tools"] = json!([{"type": "function", "name": "exec_command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}]);
    let v: Value = proxy
        .post("/v1/responses")
        .json(&first)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reasoning = v["output"][0].clone();
    let call = v["output"][2].clone();
    assert_eq!(reasoning["type"], "reasoning");
    assert_eq!(call["type"], "function_call");
    // Codex sends the turn back with the tool's result.
    let mut next = first.clone();
    let input = next["input"].as_array_mut().unwrap();
    input.push(reasoning);
    input.push(v["output"][1].clone());
    input.push(call.clone());
    input.push(json!({"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}));
    let resp = proxy
        .post("/v1/responses")
        .json(&next)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = mock.received().last().unwrap().json();
    let assistant = &sent["messages"][1];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(
        assistant["content"][0],
        json!({"type": "thinking", "thinking": "Thinking it over.", "signature": "mock-signature"}),
        "{sent}"
    );
    assert_eq!(
        assistant["content"].as_array().unwrap().last().unwrap()["type"],
        "tool_use"
    );
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(
        sent["thinking"]["type"], "enabled",
        "manual thinking stays on"
    );
}

#[tokio::test]
async fn responses_requests_are_logged_and_counted_like_the_others() {
    let (logs, _guard) = support::logs::Logs::capture();
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-5"],
            &["sk-metrics-0001"],
        )
        .admin(None, true)
        .start()
        .await;
    let resp = proxy
        .post("/v1/responses")
        .json(&json!({"model": "gpt-5", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let lines = logs.wait_requests(1).await;
    assert!(
        lines[0].contains("endpoint=\"responses\"")
            && lines[0].contains("path=/v1/responses")
            && lines[0].contains("completion_tokens=3"),
        "{}",
        lines[0]
    );
    let metrics = proxy.metrics_text().await;
    assert!(
        metrics.contains(
            r#"keyway_requests_total{endpoint="responses",model="gpt-5",status="200"} 1"#
        ),
        "{metrics}"
    );
}
