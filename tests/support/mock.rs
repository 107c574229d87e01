//! A scriptable mock AI upstream speaking OpenAI (chat, completions, embeddings, models)
//! and Anthropic (messages), JSON and SSE. Used in-process by the tests and as the
//! `mock_upstream` example binary by the demo and the benchmarks.
//!
//! Behaviour per request: the first queued [`Reply`] for the presented key, else the first
//! of the global queue, else the per-key default, else the default. Every request is
//! recorded ([`Received`]) and every request the peer abandoned (connection dropped before
//! the response completed) is counted, so tests can assert on both.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

#[path = "mock_turns.rs"]
pub mod turns;

/// What the mock does for one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Overrides the generated body (sent as-is, JSON content type).
    pub body: Option<String>,
    /// Delay before the response headers.
    pub latency: Duration,
    /// Never answer.
    pub hang: bool,
    /// Content chunks in a streamed response.
    pub chunks: usize,
    /// Delay between streamed chunks.
    pub pacing: Duration,
    /// Hold the last streamed event until this is notified.
    pub hold_last: Option<Arc<Notify>>,
    /// Break the connection after this many streamed events.
    pub cut_after: Option<usize>,
    /// Streamed frames sent as they are, instead of generated events.
    pub frames: Option<Vec<String>>,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: None,
            latency: Duration::ZERO,
            hang: false,
            chunks: 3,
            pacing: Duration::ZERO,
            hold_last: None,
            cut_after: None,
            frames: None,
        }
    }
}

impl Reply {
    pub fn ok() -> Self {
        Self::default()
    }
    /// An error status with an OpenAI-shaped error body.
    pub fn status(status: u16) -> Self {
        let body = json!({"error": {"message": format!("mock error {status}"), "type": "mock_error", "code": status}});
        Self {
            status,
            body: Some(body.to_string()),
            ..Self::default()
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn retry_after(self, secs: u64) -> Self {
        self.header("retry-after", &secs.to_string())
    }
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::default()
        }
    }
    pub fn chunks(mut self, n: usize) -> Self {
        self.chunks = n;
        self
    }
    pub fn pacing(mut self, d: Duration) -> Self {
        self.pacing = d;
        self
    }
    pub fn hold_last(mut self, gate: Arc<Notify>) -> Self {
        self.hold_last = Some(gate);
        self
    }
    /// Streams exactly these frames (raw SSE text, any framing) for a streamed request.
    pub fn frames(mut self, frames: Vec<String>) -> Self {
        self.frames = Some(frames);
        self
    }

    pub fn cut_after(mut self, events: usize) -> Self {
        self.cut_after = Some(events);
        self
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The key presented (`Authorization: Bearer` or `x-api-key`).
    pub key: Option<String>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct State {
    queue: Mutex<VecDeque<Reply>>,
    key_queue: Mutex<HashMap<String, VecDeque<Reply>>>,
    key_default: Mutex<HashMap<String, Reply>>,
    default: Mutex<Reply>,
    received: Mutex<Vec<Received>>,
    /// Off for long-running use (demo, benchmarks), where the record would grow forever.
    no_recording: std::sync::atomic::AtomicBool,
    aborted: AtomicUsize,
    /// TCP connections accepted.
    accepted: AtomicUsize,
    events: Notify,
}

/// A running mock upstream on 127.0.0.1.
pub struct MockUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), Reply::ok()).await
    }

    /// Starts on `addr` with `default` as the reply when nothing is queued.
    pub async fn start_on(addr: SocketAddr, default: Reply) -> Self {
        let listener = TcpListener::bind(addr).await.expect("mock upstream bind");
        let addr = listener.local_addr().expect("mock upstream addr");
        let state = Arc::new(State {
            default: Mutex::new(default),
            ..State::default()
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a reply for the next request (any key).
    pub fn push(&self, reply: Reply) -> &Self {
        self.state.queue.lock().unwrap().push_back(reply);
        self
    }

    /// Queues a reply for the next request presenting `key`.
    pub fn push_for_key(&self, key: &str, reply: Reply) -> &Self {
        self.state
            .key_queue
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .push_back(reply);
        self
    }

    /// The reply for every request presenting `key` when nothing is queued.
    pub fn default_for_key(&self, key: &str, reply: Reply) -> &Self {
        self.state
            .key_default
            .lock()
            .unwrap()
            .insert(key.to_string(), reply);
        self
    }

    /// Stops recording requests (for long runs: the demo and benchmarks).
    pub fn disable_recording(&self) {
        self.state.no_recording.store(true, Ordering::Relaxed);
    }

    pub fn set_default(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = reply;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn keys_seen(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .map(|r| r.key.unwrap_or_default())
            .collect()
    }

    /// Requests whose peer went away before the response was complete.
    pub fn aborted(&self) -> usize {
        self.state.aborted.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` requests were abandoned by the peer.
    pub async fn wait_aborted(&self, n: usize, limit: Duration) -> bool {
        self.wait_until(limit, || self.aborted() >= n).await
    }

    /// Waits (bounded) until at least `n` requests were received.
    pub async fn wait_received(&self, n: usize, limit: Duration) -> bool {
        self.wait_until(limit, || self.state.received.lock().unwrap().len() >= n)
            .await
    }

    async fn wait_until(&self, limit: Duration, done: impl Fn() -> bool) -> bool {
        let wait = async {
            loop {
                let notified = self.state.events.notified();
                if done() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Counts an abandoned request when dropped before `finish`.
struct AbortGuard {
    state: Arc<State>,
    finished: bool,
}

impl AbortGuard {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.aborted.fetch_add(1, Ordering::SeqCst);
            self.state.events.notify_waiters();
        }
    }
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let key = presented_key(&parts.headers);
    let received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body: body.clone(),
        key: key.clone(),
    };
    if !state.no_recording.load(Ordering::Relaxed) {
        state.received.lock().unwrap().push(received);
        state.events.notify_waiters();
    }
    let reply = next_reply(&state, key.as_deref());
    let guard = AbortGuard {
        state: state.clone(),
        finished: false,
    };
    if reply.hang {
        std::future::pending::<()>().await;
    }
    if !reply.latency.is_zero() {
        tokio::time::sleep(reply.latency).await;
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stored = parts
        .uri
        .path()
        .strip_prefix("/v1/responses/")
        .filter(|r| *r != "compact");
    let mut resp = if let (Some(rest), None) = (stored, &reply.body) {
        guard.finish();
        json_response(
            reply.status,
            stored_response(&parts.method, rest).to_string(),
        )
    } else if let Some(custom) = &reply.body {
        guard.finish();
        json_response(reply.status, custom.clone())
    } else if request["stream"] == Value::Bool(true) && reply.status == 200 {
        stream_response(parts.uri.path(), &request, &reply, guard)
    } else {
        guard.finish();
        json_response(
            reply.status,
            generate(parts.uri.path(), &request, &reply).to_string(),
        )
    };
    for (k, v) in &reply.headers {
        resp.headers_mut().insert(
            http::HeaderName::try_from(k.as_str()).unwrap(),
            http::HeaderValue::try_from(v.as_str()).unwrap(),
        );
    }
    Ok(resp)
}

fn next_reply(state: &State, key: Option<&str>) -> Reply {
    if let Some(k) = key {
        if let Some(r) = state
            .key_queue
            .lock()
            .unwrap()
            .get_mut(k)
            .and_then(|q| q.pop_front())
        {
            return r;
        }
    }
    if let Some(r) = state.queue.lock().unwrap().pop_front() {
        return r;
    }
    if let Some(r) = key.and_then(|k| state.key_default.lock().unwrap().get(k).cloned()) {
        return r;
    }
    state.default.lock().unwrap().clone()
}

fn presented_key(h: &HeaderMap) -> Option<String> {
    if let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) {
        return Some(v.trim_start_matches("Bearer ").to_string());
    }
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn json_response(status: u16, body: String) -> Response<MockBody> {
    let mut resp = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

fn model_of(request: &Value) -> String {
    request["model"]
        .as_str()
        .unwrap_or("mock-model")
        .to_string()
}

/// What OpenAI answers for a stored response (the mock keeps none; any id exists).
fn stored_response(method: &http::Method, rest: &str) -> Value {
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    match (method.as_str(), tail) {
        ("DELETE", _) => json!({"id": id, "object": "response", "deleted": true}),
        (_, "input_items") => {
            json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false})
        }
        (_, "cancel") => {
            json!({"id": id, "object": "response", "status": "cancelled", "output": []})
        }
        _ => json!({"id": id, "object": "response", "created_at": 0, "status": "completed",
                    "model": "mock-model", "output": [], "usage": null}),
    }
}

/// A Responses output item for a planned call: `custom_tool_call` when the mock made
/// free-text input, `function_call` otherwise.
fn responses_call_item(c: &turns::Call, status: &str) -> Value {
    match c.args.strip_prefix("custom:") {
        Some(input) => {
            json!({"id": format!("ctc_{}", c.id), "type": "custom_tool_call", "status": status,
            "call_id": c.id, "name": c.name, "input": if status == "completed" { input } else { "" }})
        }
        None => json!({"id": format!("fc_{}", c.id), "type": "function_call", "status": status,
            "call_id": c.id, "name": c.name, "arguments": if status == "completed" { c.args.as_str() } else { "" }}),
    }
}

/// The output items of a Responses turn.
fn responses_output(turn: &turns::Turn) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(t) = &turn.thinking {
        out.push(json!({"id": "rs_mock", "type": "reasoning",
            "summary": [{"type": "summary_text", "text": t}], "encrypted_content": "gAAAAmock-openai-reasoning"}));
    }
    out.push(
        json!({"id": "msg_mock", "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": turn.text, "annotations": []}]}),
    );
    out.extend(
        turn.calls
            .iter()
            .map(|c| responses_call_item(c, "completed")),
    );
    out
}

fn responses_object(request: &Value, status: &str, output: Vec<Value>, usage: Value) -> Value {
    json!({"id": "resp_mock1", "object": "response", "created_at": 0, "status": status,
        "model": model_of(request), "output": output, "error": null, "incomplete_details": null,
        "previous_response_id": request["previous_response_id"], "parallel_tool_calls": true,
        "tool_choice": "auto", "tools": [], "usage": usage})
}

/// The non-streaming body for an endpoint.
fn generate(path: &str, request: &Value, reply: &Reply) -> Value {
    let model = model_of(request);
    let words = reply.chunks.max(1);
    let text: String = (0..words).map(|i| format!("tok{i} ")).collect();
    if path.ends_with("/messages/count_tokens") {
        return json!({"input_tokens": 42});
    }
    if path.ends_with("/responses/compact") {
        return json!({"id": "cmp_mock", "object": "response.compaction", "created_at": 0,
            "output": [{"type": "compaction", "encrypted_content": "gAAAAmock-compaction"}],
            "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}});
    }
    if path.ends_with("/responses") {
        let turn = turns::plan(path, request, text);
        let usage = json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": words, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5 + words});
        return responses_object(request, "completed", responses_output(&turn), usage);
    }
    if path.ends_with("/chat/completions") {
        let turn = turns::plan(path, request, text);
        let mut message = json!({"role": "assistant", "content": turn.text});
        if let Some(t) = &turn.thinking {
            message["reasoning_content"] = json!(t);
        }
        if !turn.calls.is_empty() {
            message["tool_calls"] = turn
                .calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.args}})
                })
                .collect();
        }
        let finish = if turn.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words}
        })
    } else if path.ends_with("/completions") {
        json!({
            "id": "cmpl-mock", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words}
        })
    } else if path.ends_with("/embeddings") {
        json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}
        })
    } else if path.ends_with("/messages") {
        let turn = turns::plan(path, request, text);
        let mut content = Vec::new();
        if let Some(t) = &turn.thinking {
            content.push(json!({"type": "thinking", "thinking": t, "signature": "mock-signature"}));
        }
        content.push(json!({"type": "text", "text": turn.text}));
        for c in &turn.calls {
            let input: Value = serde_json::from_str(&c.args).unwrap_or(json!({}));
            content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
        }
        let stop = if turn.calls.is_empty() {
            "end_turn"
        } else {
            "tool_use"
        };
        json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": words}
        })
    } else if path.ends_with("/models") {
        json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]})
    } else {
        json!({"error": {"message": format!("mock: unknown path {path}"), "type": "invalid_request_error", "code": null}})
    }
}

/// A string cut in two at a character boundary near its middle (fragments, as models send).
fn halves(s: &str) -> (&str, &str) {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid -= 1;
    }
    s.split_at(mid)
}

/// The SSE events for a streamed response, in order.
fn stream_events(path: &str, request: &Value, chunks: usize) -> Vec<String> {
    let model = model_of(request);
    let tokens: Vec<String> = (0..chunks).map(|i| format!("tok{i} ")).collect();
    let turn = turns::plan(path, request, tokens.concat());
    // A plain answer streams token by token; a turn with tool calls says its line at once.
    let text_pieces = if turn.calls.is_empty() && !turn.text.starts_with("Done") {
        tokens
    } else {
        vec![turn.text.clone()]
    };
    let mut out = Vec::with_capacity(chunks + 12);
    if path.ends_with("/responses") {
        let mut seq = 0u64;
        let mut ev = |name: &str, mut data: Value| {
            data["type"] = json!(name);
            data["sequence_number"] = json!(seq);
            seq += 1;
            format!("event: {name}\ndata: {data}\n\n")
        };
        let null = Value::Null;
        out.push(ev(
            "response.created",
            json!({"response": responses_object(request, "in_progress", vec![], null.clone())}),
        ));
        out.push(ev(
            "response.in_progress",
            json!({"response": responses_object(request, "in_progress", vec![], null)}),
        ));
        let items = responses_output(&turn);
        for (i, item) in items.iter().enumerate() {
            match item["type"].as_str() {
                Some("reasoning") => {
                    out.push(ev("response.output_item.added", json!({"output_index": i, "item": {"id": "rs_mock", "type": "reasoning", "summary": []}})));
                    out.push(ev(
                        "response.output_item.done",
                        json!({"output_index": i, "item": item}),
                    ));
                }
                Some("message") => {
                    out.push(ev("response.output_item.added", json!({"output_index": i, "item": {"id": "msg_mock", "type": "message", "role": "assistant", "status": "in_progress", "content": []}})));
                    out.push(ev("response.content_part.added", json!({"item_id": "msg_mock", "output_index": i, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})));
                    for piece in &text_pieces {
                        out.push(ev("response.output_text.delta", json!({"item_id": "msg_mock", "output_index": i, "content_index": 0, "delta": piece})));
                    }
                    out.push(ev("response.output_text.done", json!({"item_id": "msg_mock", "output_index": i, "content_index": 0, "text": turn.text})));
                    out.push(ev("response.content_part.done", json!({"item_id": "msg_mock", "output_index": i, "content_index": 0, "part": item["content"][0]})));
                    out.push(ev(
                        "response.output_item.done",
                        json!({"output_index": i, "item": item}),
                    ));
                }
                _ => {
                    let c = &turn.calls[i + turn.calls.len() - items.len()];
                    let added = responses_call_item(c, "in_progress");
                    let id = added["id"].clone();
                    out.push(ev(
                        "response.output_item.added",
                        json!({"output_index": i, "item": added}),
                    ));
                    if item["type"] == "function_call" {
                        let (a, b) = halves(&c.args);
                        for part in [a, b] {
                            out.push(ev(
                                "response.function_call_arguments.delta",
                                json!({"item_id": id, "output_index": i, "delta": part}),
                            ));
                        }
                        out.push(ev(
                            "response.function_call_arguments.done",
                            json!({"item_id": id, "output_index": i, "arguments": c.args}),
                        ));
                    } else {
                        out.push(ev(
                            "response.custom_tool_call_input.delta",
                            json!({"item_id": id, "output_index": i, "delta": item["input"]}),
                        ));
                        out.push(ev(
                            "response.custom_tool_call_input.done",
                            json!({"item_id": id, "output_index": i, "input": item["input"]}),
                        ));
                    }
                    out.push(ev(
                        "response.output_item.done",
                        json!({"output_index": i, "item": item}),
                    ));
                }
            }
        }
        let usage = json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": chunks, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5 + chunks});
        out.push(ev(
            "response.completed",
            json!({"response": responses_object(request, "completed", items, usage)}),
        ));
        return out;
    }
    if path.ends_with("/messages") {
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        out.push(ev("message_start", json!({"type": "message_start", "message": {
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 0}}})));
        let mut index = 0;
        if let Some(t) = &turn.thinking {
            out.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
            out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": t}})));
            out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": "mock-signature"}})));
            out.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        }
        out.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
        for piece in &text_pieces {
            out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})));
        }
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        for c in &turn.calls {
            index += 1;
            out.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}})));
            let (a, b) = halves(&c.args);
            for part in [a, b] {
                out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": part}})));
            }
            out.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        let stop = if turn.calls.is_empty() {
            "end_turn"
        } else {
            "tool_use"
        };
        out.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": chunks}})));
        out.push(ev("message_stop", json!({"type": "message_stop"})));
    } else {
        let chat = path.ends_with("/chat/completions");
        let obj = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let chunk = |choice: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-mock", "object": obj, "created": 0, "model": model, "choices": [choice]})
            )
        };
        if let (true, Some(t)) = (chat, &turn.thinking) {
            out.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "reasoning_content": t}, "finish_reason": null})));
        }
        for piece in &text_pieces {
            out.push(chunk(if chat {
                json!({"index": 0, "delta": {"content": piece}, "finish_reason": null})
            } else {
                json!({"index": 0, "text": piece, "finish_reason": null})
            }));
        }
        for (i, c) in turn.calls.iter().enumerate().filter(|_| chat) {
            out.push(chunk(json!({"index": 0, "delta": {"tool_calls": [{"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}]}, "finish_reason": null})));
            let (a, b) = halves(&c.args);
            for part in [a, b] {
                out.push(chunk(json!({"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": part}}]}, "finish_reason": null})));
            }
        }
        let finish = if turn.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        let mut last = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]});
        if request["stream_options"]["include_usage"] == Value::Bool(true) {
            last["usage"] = json!({"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks});
        }
        out.push(format!("data: {last}\n\n"));
        out.push("data: [DONE]\n\n".to_string());
    }
    out
}

fn stream_response(
    path: &str,
    request: &Value,
    reply: &Reply,
    guard: AbortGuard,
) -> Response<MockBody> {
    let events = reply
        .frames
        .clone()
        .unwrap_or_else(|| stream_events(path, request, reply.chunks));
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let reply = reply.clone();
    tokio::spawn(async move {
        let last = events.len() - 1;
        for (i, ev) in events.into_iter().enumerate() {
            if reply.cut_after == Some(i) {
                let _ = tx
                    .send(Err(std::io::Error::other("mock: cut mid-stream")))
                    .await;
                guard.finish();
                return;
            }
            if i == last {
                if let Some(gate) = &reply.hold_last {
                    tokio::select! {
                        () = gate.notified() => {},
                        () = tx.closed() => return, // peer gone: guard counts the abort
                    }
                }
            }
            if i > 0 && !reply.pacing.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(reply.pacing) => {},
                    () = tx.closed() => return,
                }
            }
            if tx.send(Ok(Bytes::from(ev))).await.is_err() {
                return;
            }
        }
        guard.finish();
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp.headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    resp
}

/// A body fed by a channel; dropping it closes the channel, which the producer observes.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}
