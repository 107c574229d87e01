//! OpenAI Responses clients (Codex, `client.responses`) on providers that speak Chat
//! Completions or Anthropic Messages.
//!
//! Requests are read into one internal Chat Completions shape that carries what Chat
//! itself cannot — Anthropic thinking signatures (as `reasoning_details`), custom and
//! namespaced tools (by name, with a map back) — and from there go to Chat targets
//! directly or through [`super::chat_messages`] to Messages targets. Signatures survive
//! because the internal shape keeps them (peers that hopped through plain Chat lost them);
//! one request model serves both targets, so their behaviour cannot drift apart.
//!
//! Answers come back as Responses objects and, streamed, as the full Responses event
//! sequence: `response.created` … `response.output_item.added` … deltas … `.done` …
//! `response.completed`, every event with a rising `sequence_number`. Reasoning Keyway
//! mints carries a `kw1.` envelope in `encrypted_content` (the thinking text and its
//! signature) that restores the thinking block when the client sends the item back.
//!
//! What needs OpenAI's stored state (`previous_response_id`, `conversation`, item
//! references, remote compaction) or its hosted tools is refused with 400 and `param`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::caps::{ReasoningReplay, StructuredOutput, ThinkingMode};
use super::sse::{EventMachine, EventReader};
use super::{TargetInfo, TranslatedRequest, Unsupported};
use crate::config::ProviderKind;

/// Prefix of the reasoning envelopes Keyway puts in `encrypted_content`.
pub const ENVELOPE_PREFIX: &str = "kw1.";

/// Prefix of response ids Keyway mints on translated routes (never stored anywhere).
pub const MINTED_PREFIX: &str = "resp_kw";

/// Where a function name sent upstream came from, to restore the client's item type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolOrigin {
    Function,
    /// A `custom` tool (free-form input, e.g. Codex's `apply_patch`).
    Custom,
    /// A function inside a `namespace` tool (Codex's MCP groups).
    Namespace {
        namespace: String,
        name: String,
    },
    /// The `local_shell` tool.
    LocalShell,
}

/// What the answer's translation needs from the request.
#[derive(Debug, Default)]
pub struct ResponsesContext {
    /// Upstream function name → the client's tool.
    tools: HashMap<String, ToolOrigin>,
    /// The client asked for `reasoning.encrypted_content`.
    pub encrypted: bool,
    /// Request fields echoed in the response object.
    echo: Map<String, Value>,
}

impl ResponsesContext {
    fn origin(&self, upstream_name: &str) -> ToolOrigin {
        self.tools
            .get(upstream_name)
            .cloned()
            .unwrap_or(ToolOrigin::Function)
    }
}

/// Request fields dropped on translated routes (stateful or OpenAI-only).
const DROPPED: &[&str] = &[
    "store",
    "truncation",
    "background",
    "metadata",
    "client_metadata",
    "prompt_cache_retention",
    "max_tool_calls",
    "service_tier",
    "top_logprobs",
    "stream_options",
];

const MAPPED: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "reasoning",
    "text",
    "stream",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "previous_response_id",
    "conversation",
    "prompt",
    "include",
];

/// Hosted tools only OpenAI runs.
const HOSTED_TOOLS: &[&str] = &[
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use_preview",
    "computer_use",
    "mcp",
    "shell",
    "apply_patch",
];

/// A Responses request for a Chat target (`for_messages = false`) or for the Messages
/// translator (`true`: the internal shape, with every field the Chat→Messages mapper
/// reads). Returns the Chat body, the dropped client fields, and the answer's context.
/// A Responses request in the internal Chat shape.
struct Mapped {
    chat: Map<String, Value>,
    dropped: Vec<String>,
    ctx: ResponsesContext,
    /// The client declared OpenAI's web search tool (Anthropic has its own).
    web_search: bool,
}

fn to_chat(raw: &[u8], target: &TargetInfo, for_messages: bool) -> Result<Mapped, Unsupported> {
    let body: Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|e| Unsupported::new("", format!("request body is not a JSON object: {e}")))?;
    let caps = target.caps;
    let openai = target.kind == ProviderKind::OpenAi;
    let present = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    let stateless = "this route translates to another API and keeps no state: send the whole \
                     conversation in `input` (with `store: false`), or route the model to a provider \
                     that speaks the Responses API";
    if body
        .get("previous_response_id")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(Unsupported::new("previous_response_id", stateless));
    }
    if present("conversation") {
        return Err(Unsupported::new("conversation", stateless));
    }
    if present("prompt") {
        return Err(Unsupported::new(
            "prompt",
            "prompt templates are stored at OpenAI; send `instructions` and `input` instead",
        ));
    }
    let mut dropped: Vec<String> = Vec::new();
    for (k, v) in &body {
        if DROPPED.contains(&k.as_str()) {
            let off = v.is_null() || *v == Value::Bool(false) || k == "stream_options";
            if !off || (k == "store" && *v == Value::Bool(true)) {
                dropped.push(k.clone());
            }
        } else if !MAPPED.contains(&k.as_str()) {
            dropped.push(k.clone());
        }
    }
    // `reasoning.encrypted_content` is honoured (Keyway's envelope); other includes are not.
    if body
        .get("include")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|i| i != "reasoning.encrypted_content"))
    {
        dropped.push("include".into());
    }
    let mut ctx = ResponsesContext {
        encrypted: body
            .get("include")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|i| i == "reasoning.encrypted_content")),
        ..Default::default()
    };
    for k in [
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "max_output_tokens",
        "reasoning",
        "text",
        "user",
    ] {
        if let Some(v) = body.get(k) {
            ctx.echo.insert(k.into(), v.clone());
        }
    }

    // Tools first: history items name them.
    let mut tools = Vec::new();
    let mut web_search = false;
    for (i, t) in body
        .get("tools")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let kind = t["type"].as_str().unwrap_or("function");
        match kind {
            "function" => {
                if let Some(f) = function(t, t["name"].as_str(), openai) {
                    ctx.tools.insert(
                        f["function"]["name"].as_str().unwrap_or("").into(),
                        ToolOrigin::Function,
                    );
                    tools.push(f);
                }
            }
            "custom" => {
                let Some(name) = t["name"].as_str() else {
                    continue;
                };
                let mut description = t["description"].as_str().unwrap_or("").to_string();
                if !description.is_empty() {
                    description.push_str("\n\n");
                }
                description.push_str("Send the raw input text, verbatim, as the `input` string.");
                tools.push(json!({"type": "function", "function": {
                    "name": name,
                    "description": description,
                    "parameters": {"type": "object", "properties": {"input": {"type": "string"}},
                                   "required": ["input"], "additionalProperties": false},
                }}));
                ctx.tools.insert(name.into(), ToolOrigin::Custom);
            }
            "namespace" => {
                let ns = t["name"].as_str().unwrap_or("");
                for sub in t["tools"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    let Some(leaf) = sub["name"].as_str() else {
                        continue;
                    };
                    let flat = flat_name(ns, leaf);
                    if let Some(f) = function(sub, Some(&flat), openai) {
                        ctx.tools.insert(
                            flat,
                            ToolOrigin::Namespace {
                                namespace: ns.into(),
                                name: leaf.into(),
                            },
                        );
                        tools.push(f);
                    }
                }
            }
            "local_shell" => {
                tools.push(json!({"type": "function", "function": {
                    "name": "local_shell",
                    "description": "Run a command on the user's machine.",
                    "parameters": {"type": "object", "properties": {
                        "command": {"type": "array", "items": {"type": "string"}},
                        "workdir": {"type": "string"},
                        "timeout_ms": {"type": "integer"}},
                        "required": ["command"]},
                }}));
                ctx.tools
                    .insert("local_shell".into(), ToolOrigin::LocalShell);
            }
            "tool_search" => {
                let params = match &t["parameters"] {
                    p @ Value::Object(_) => p.clone(),
                    _ => json!({"type": "object", "properties": {"query": {"type": "string"}},
                                "required": ["query"]}),
                };
                tools.push(json!({"type": "function", "function": {
                    "name": "tool_search",
                    "description": t["description"].as_str().unwrap_or("Search the available tools."),
                    "parameters": params,
                }}));
                ctx.tools.insert("tool_search".into(), ToolOrigin::Function);
            }
            "web_search" | "web_search_preview" | "web_search_2025_08_26" => {
                if for_messages {
                    web_search = true; // Anthropic runs its own web search tool
                } else {
                    dropped.push(format!("tools[{i}] ({kind})"));
                }
            }
            other if HOSTED_TOOLS.contains(&other) => {
                return Err(Unsupported::new(
                    format!("tools[{i}].type"),
                    format!(
                        "`{other}` is a hosted tool only OpenAI runs; this model is served through \
                         another API. Route it to a provider that speaks the Responses API, or declare \
                         a function tool instead"
                    ),
                ));
            }
            other => {
                return Err(Unsupported::new(
                    format!("tools[{i}].type"),
                    format!("tool type `{other}` is not available on this route"),
                ))
            }
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), Value::from(target.model));
    let mut messages: Vec<Value> = Vec::new();
    let developer_ok = !for_messages && caps.developer_role;
    if let Some(s) = body.get("instructions").and_then(Value::as_str) {
        if !s.is_empty() {
            messages.push(
                json!({"role": if developer_ok { "developer" } else { "system" }, "content": s}),
            );
        }
    }
    let replay = !for_messages && caps.reasoning_replay == ReasoningReplay::ReasoningContent;
    input(
        body.get("input"),
        &mut messages,
        &ctx,
        developer_ok,
        replay,
        &mut dropped,
    )?;
    if !messages
        .iter()
        .any(|m| m["role"] == "user" || m["role"] == "assistant")
    {
        // Providers refuse a conversation without a turn.
        messages.push(json!({"role": "user", "content": "(empty input)"}));
    }
    out.insert("messages".into(), Value::Array(messages));

    if !tools.is_empty() {
        let allowed = allowed_tools(body.get("tool_choice"));
        if let Some(allowed) = &allowed {
            tools.retain(|t| {
                let n = t["function"]["name"].as_str().unwrap_or("");
                allowed.iter().any(|a| a == n)
            });
        }
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
            if let Some(tc) = tool_choice(body.get("tool_choice"), &ctx)? {
                out.insert("tool_choice".into(), tc);
            }
            if let Some(p) = body.get("parallel_tool_calls").filter(|v| v.is_boolean()) {
                out.insert("parallel_tool_calls".into(), p.clone());
            }
        }
    }
    if let Some(n) = body.get("max_output_tokens").and_then(Value::as_u64) {
        if for_messages {
            out.insert("max_completion_tokens".into(), Value::from(n));
        } else {
            caps.insert_max_tokens(&mut out, n);
        }
    }
    for f in ["temperature", "top_p"] {
        if let Some(v) = body.get(f).filter(|v| v.is_number()) {
            out.insert(f.into(), v.clone());
        }
    }
    if let Some(effort) = body
        .get("reasoning")
        .and_then(|r| r["effort"].as_str())
        .filter(|e| *e != "none")
    {
        if for_messages || caps.thinking == ThinkingMode::Effort {
            out.insert("reasoning_effort".into(), Value::from(effort));
        } else {
            dropped.push("reasoning".into());
        }
    }
    let text = body.get("text");
    if let Some(format) = text.map(|t| &t["format"]).filter(|f| f.is_object()) {
        let rf = match format["type"].as_str() {
            Some("json_schema") => Some(json!({"type": "json_schema", "json_schema": {
                "name": format["name"].as_str().unwrap_or("response"),
                "schema": format["schema"],
                "strict": format["strict"].as_bool().unwrap_or(false),
            }})),
            Some("json_object") => Some(json!({"type": "json_object"})),
            _ => None,
        };
        if let Some(rf) = rf {
            if for_messages || caps.structured_output == StructuredOutput::Native {
                out.insert("response_format".into(), rf);
            } else {
                dropped.push("text.format".into());
            }
        }
    }
    if let Some(v) = text
        .and_then(|t| t.get("verbosity"))
        .filter(|v| v.is_string())
    {
        if openai {
            out.insert("verbosity".into(), v.clone());
        } else {
            dropped.push("text.verbosity".into());
        }
    }
    for k in ["prompt_cache_key", "safety_identifier"] {
        if let Some(v) = body.get(k).filter(|v| v.is_string()) {
            if openai {
                out.insert(k.into(), v.clone());
            } else {
                dropped.push(k.into());
            }
        }
    }
    let user = body
        .get("user")
        .or_else(|| body.get("safety_identifier"))
        .and_then(Value::as_str);
    if let Some(u) = user.filter(|u| !u.is_empty() && u.len() <= 64) {
        out.insert("user".into(), Value::from(u));
    }
    if body.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
        // `response.completed` carries usage: ask for it.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Mapped {
        chat: out,
        dropped,
        ctx,
        web_search,
    })
}

/// A Responses function tool (flat) → a Chat function tool named `name`.
fn function(t: &Value, name: Option<&str>, strict_ok: bool) -> Option<Value> {
    let name = name?;
    let mut f = json!({"name": name, "parameters": match &t["parameters"] {
        p @ Value::Object(_) => p.clone(),
        _ => json!({"type": "object", "properties": {}}),
    }});
    if let Some(d) = t["description"].as_str() {
        f["description"] = Value::from(d);
    }
    if strict_ok {
        if let Some(s) = t["strict"].as_bool() {
            f["strict"] = Value::from(s);
        }
    }
    Some(json!({"type": "function", "function": f}))
}

/// `namespace` + `leaf` as one function name: `ns__leaf`, at most 64 characters (longer
/// names keep their end and gain a short hash, deterministically).
pub fn flat_name(ns: &str, leaf: &str) -> String {
    let full = format!("{ns}__{leaf}");
    if full.len() <= 64 {
        return full;
    }
    let hash = crate::digest::short_hex(full.as_bytes(), 4);
    let keep: String = full
        .chars()
        .rev()
        .take(55)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{hash}_{keep}")
}

/// The function name a history item's call goes upstream under.
fn upstream_name(item: &Value) -> Option<String> {
    let name = item["name"].as_str().filter(|n| !n.is_empty())?;
    Some(match item["namespace"].as_str().filter(|n| !n.is_empty()) {
        Some(ns) => flat_name(ns, name),
        None => name.to_string(),
    })
}

/// `input` (a string or items) → Chat messages appended to `out`.
fn input(
    input: Option<&Value>,
    out: &mut Vec<Value>,
    ctx: &ResponsesContext,
    developer_ok: bool,
    replay: bool,
    dropped: &mut Vec<String>,
) -> Result<(), Unsupported> {
    let items = match input {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(Unsupported::new(
                "input",
                "input must be a string or an array",
            ))
        }
    };
    let _ = ctx;
    // Reasoning waiting for the assistant turn it belongs to.
    let mut pending_details: Vec<Value> = Vec::new();
    let mut pending_text = String::new();
    let mut builtin_items = false;
    for (i, item) in items.iter().enumerate() {
        let kind = item["type"]
            .as_str()
            .unwrap_or(if item.get("role").is_some() {
                "message"
            } else {
                ""
            });
        match kind {
            "message" => {
                let role = item["role"].as_str().unwrap_or("user");
                match role {
                    "assistant" => {
                        let mut text = String::new();
                        for_each_part(&item["content"], |p| {
                            if let Some(t) = p["text"].as_str().or_else(|| p["refusal"].as_str()) {
                                text.push_str(t);
                            }
                        });
                        let m = assistant(out, &mut pending_details, &mut pending_text, replay);
                        let existing = m["content"].as_str().unwrap_or("").to_string();
                        m["content"] = Value::from(existing + text.as_str());
                    }
                    "system" | "developer" => {
                        let mut text = String::new();
                        for_each_part(&item["content"], |p| {
                            if let Some(t) = p["text"].as_str() {
                                if !text.is_empty() {
                                    text.push('\n');
                                }
                                text.push_str(t);
                            }
                        });
                        let role = if role == "developer" && developer_ok {
                            "developer"
                        } else {
                            "system"
                        };
                        out.push(json!({"role": role, "content": text}));
                    }
                    _ => out.push(
                        json!({"role": "user", "content": user_content(&item["content"], i)?}),
                    ),
                }
            }
            "function_call" | "custom_tool_call" | "local_shell_call" => {
                let call_id = item["call_id"].as_str().filter(|s| !s.is_empty());
                let (name, arguments) = match kind {
                    "function_call" => (
                        upstream_name(item),
                        item["arguments"].as_str().unwrap_or("{}").to_string(),
                    ),
                    "custom_tool_call" => (
                        item["name"].as_str().map(str::to_string),
                        json!({"input": item["input"].as_str().unwrap_or("")}).to_string(),
                    ),
                    _ => (Some("local_shell".to_string()), item["action"].to_string()),
                };
                let (Some(call_id), Some(name)) = (call_id, name) else {
                    continue; // a call without id or name cannot be answered; skip it
                };
                let m = assistant(out, &mut pending_details, &mut pending_text, replay);
                if m["content"] == "" {
                    m["content"] = Value::Null;
                }
                let calls = m
                    .as_object_mut()
                    .map(|o| o.entry("tool_calls").or_insert_with(|| json!([])));
                if let Some(Value::Array(calls)) = calls {
                    calls.push(json!({"id": call_id, "type": "function",
                        "function": {"name": name, "arguments": arguments}}));
                }
            }
            "function_call_output" | "custom_tool_call_output" | "local_shell_call_output" => {
                let call_id = item["call_id"].as_str().unwrap_or("");
                let mut text = String::new();
                match &item["output"] {
                    Value::String(s) => text.push_str(s),
                    parts @ Value::Array(_) => for_each_part(parts, |p| {
                        if let Some(t) = p["text"].as_str() {
                            text.push_str(t);
                        }
                    }),
                    other if !other.is_null() => text.push_str(&other.to_string()),
                    _ => {}
                }
                if kind == "custom_tool_call_output" {
                    // Codex wraps custom tool output as `{"output": …}`.
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        if let Some(o) = v["output"].as_str() {
                            text = o.to_string();
                        }
                    }
                }
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": text}));
            }
            "reasoning" => {
                let enc = item["encrypted_content"].as_str().unwrap_or("");
                match open_envelope(enc) {
                    Some(env) => match env["p"].as_str() {
                        Some("anthropic") if env.get("d").is_some() => pending_details
                            .push(json!({"type": "reasoning.encrypted", "data": env["d"]})),
                        Some("anthropic") => pending_details.push(json!({"type": "reasoning.text",
                            "text": env["t"], "signature": env["s"]})),
                        _ => pending_text.push_str(env["t"].as_str().unwrap_or("")),
                    },
                    // OpenAI-minted reasoning only OpenAI can read: dropped here; its
                    // summary still serves targets that want their reasoning back.
                    None => {
                        if replay {
                            for s in item["summary"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                                pending_text.push_str(s["text"].as_str().unwrap_or(""));
                            }
                        }
                    }
                }
            }
            "item_reference" => {
                return Err(Unsupported::new(
                    format!("input[{i}]"),
                    "item references need OpenAI's stored items; send the item itself",
                ))
            }
            "compaction" | "compaction_trigger" | "compaction_summary" => {
                return Err(Unsupported::new(
                    format!("input[{i}]"),
                    "remote compaction is only available on providers that speak the Responses \
                     API; compact locally (Codex does when its provider is not named `openai`)",
                ))
            }
            _ => builtin_items = true, // hosted-tool history ran upstream earlier: skipped
        }
    }
    if builtin_items {
        dropped.push("input (hosted tool items)".into());
    }
    Ok(())
}

/// The assistant message new assistant content goes into: the last message when it is an
/// assistant turn (consecutive items merge into one), else a new one, which takes the
/// reasoning waiting for it.
fn assistant<'a>(
    out: &'a mut Vec<Value>,
    details: &mut Vec<Value>,
    text: &mut String,
    replay: bool,
) -> &'a mut Value {
    let reuse = out.last().is_some_and(|m| m["role"] == "assistant")
        && details.is_empty()
        && text.is_empty();
    if !reuse {
        let mut m = json!({"role": "assistant", "content": ""});
        if !details.is_empty() {
            m["reasoning_details"] = Value::Array(std::mem::take(details));
        }
        if !text.is_empty() {
            let t = std::mem::take(text);
            if replay {
                m["reasoning_content"] = Value::from(t);
            }
        }
        out.push(m);
    }
    out.last_mut().expect("just pushed")
}

fn for_each_part(content: &Value, mut f: impl FnMut(&Value)) {
    match content {
        Value::String(s) => f(&json!({"type": "input_text", "text": s})),
        Value::Array(parts) => parts.iter().for_each(f),
        _ => {}
    }
}

/// A user message's content → Chat content (a string, or parts).
fn user_content(content: &Value, i: usize) -> Result<Value, Unsupported> {
    let parts = match content {
        Value::String(s) => return Ok(Value::from(s.as_str())),
        Value::Array(p) => p,
        _ => return Ok(Value::from("")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let at = || format!("input[{i}].content[{j}]");
        match p["type"].as_str() {
            Some("input_text") | Some("output_text") | Some("text") => {
                out.push(json!({"type": "text", "text": p["text"]}))
            }
            Some("input_image") => match p["image_url"].as_str() {
                Some(url) => {
                    let mut image = json!({"url": url});
                    if let Some(d) = p["detail"].as_str() {
                        image["detail"] = Value::from(d);
                    }
                    out.push(json!({"type": "image_url", "image_url": image}))
                }
                None => {
                    return Err(Unsupported::new(
                        at(),
                        "images by file_id live at OpenAI; send `image_url` (a URL or a data URL)",
                    ))
                }
            },
            Some("input_file") => match p["file_data"].as_str() {
                Some(data) => out.push(json!({"type": "file", "file": {"file_data": data,
                    "filename": p["filename"].as_str().unwrap_or("document.pdf")}})),
                None => {
                    return Err(Unsupported::new(
                        at(),
                        "files by file_id or file_url are not available on this route; send `file_data`",
                    ))
                }
            },
            Some("input_audio") => {
                return Err(Unsupported::new(at(), "audio input is not available on this route"))
            }
            _ => {}
        }
    }
    Ok(match out.as_slice() {
        [only] if only["type"] == "text" => only["text"].clone(),
        _ => Value::Array(out),
    })
}

/// `allowed_tools` names the tools the model may use this turn.
fn allowed_tools(choice: Option<&Value>) -> Option<Vec<String>> {
    let c = choice?;
    if c["type"] != "allowed_tools" {
        return None;
    }
    Some(
        c["tools"]
            .as_array()?
            .iter()
            .filter_map(|t| upstream_name(t).or_else(|| t["name"].as_str().map(str::to_string)))
            .collect(),
    )
}

/// Responses `tool_choice` → Chat `tool_choice`; hosted-tool choices are refused.
fn tool_choice(
    choice: Option<&Value>,
    _ctx: &ResponsesContext,
) -> Result<Option<Value>, Unsupported> {
    let Some(c) = choice else { return Ok(None) };
    Ok(match c {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => Some(c.clone()),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") | Some("custom") => upstream_name(c)
                .map(|n| json!({"type": "function", "function": {"name": n}})),
            Some("allowed_tools") => Some(Value::from(
                if o.get("mode").and_then(Value::as_str) == Some("required") { "required" } else { "auto" },
            )),
            Some(other) => {
                return Err(Unsupported::new(
                    "tool_choice",
                    format!("`{other}` is a hosted tool only OpenAI runs; it cannot be chosen on this route"),
                ))
            }
            None => None,
        },
        _ => None,
    })
}

/// Responses request → Chat Completions body.
pub fn request_chat(raw: &[u8], target: &TargetInfo) -> Result<TranslatedRequest, Unsupported> {
    let Mapped {
        chat: out,
        mut dropped,
        ctx,
        ..
    } = to_chat(raw, target, false)?;
    dropped.sort();
    dropped.dedup();
    let body =
        serde_json::to_vec(&Value::Object(out)).map_err(|e| Unsupported::new("", e.to_string()))?;
    Ok(TranslatedRequest {
        body: Bytes::from(body),
        dropped,
        include_usage: true,
        json_tool: false,
        responses: Some(Arc::new(ctx)),
    })
}

/// Responses request → Messages body, through the internal Chat shape.
pub fn request_messages(raw: &[u8], target: &TargetInfo) -> Result<TranslatedRequest, Unsupported> {
    let Mapped {
        chat: out,
        mut dropped,
        ctx,
        web_search,
    } = to_chat(raw, target, true)?;
    let internal =
        serde_json::to_vec(&Value::Object(out)).map_err(|e| Unsupported::new("", e.to_string()))?;
    let mut t = super::chat_messages::request(&internal, target).map_err(|mut e| {
        e.param = responses_param(&e.param).to_string();
        e
    })?;
    dropped.extend(t.dropped.iter().map(|d| responses_param(d).to_string()));
    if web_search {
        let mut v: Value =
            serde_json::from_slice(&t.body).map_err(|e| Unsupported::new("", e.to_string()))?;
        let tool = json!({"type": "web_search_20250305", "name": "web_search"});
        match v["tools"].as_array_mut() {
            Some(tools) => tools.push(tool),
            None => v["tools"] = json!([tool]),
        }
        t.body =
            Bytes::from(serde_json::to_vec(&v).map_err(|e| Unsupported::new("", e.to_string()))?);
    }
    dropped.sort();
    dropped.dedup();
    t.dropped = dropped;
    t.include_usage = true;
    t.responses = Some(Arc::new(ctx));
    Ok(t)
}

/// A Chat field name in the client's (Responses) terms.
fn responses_param(chat: &str) -> &str {
    match chat {
        "reasoning_effort" => "reasoning",
        "response_format" => "text.format",
        "max_completion_tokens" | "max_tokens" => "max_output_tokens",
        "messages" => "input",
        other => other,
    }
}

// === Answers ===

/// `kw1.` + base64url(JSON): what a reasoning item needs to become thinking again.
fn envelope(v: &Value) -> String {
    let json = serde_json::to_vec(v).unwrap_or_default();
    format!(
        "{ENVELOPE_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    )
}

fn open_envelope(s: &str) -> Option<Value> {
    let b64 = s.strip_prefix(ENVELOPE_PREFIX)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Chat usage → Responses usage.
fn usage(u: &Value) -> Value {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let input = n(&u["prompt_tokens"]);
    let output = n(&u["completion_tokens"]);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": n(&u["prompt_tokens_details"]["cached_tokens"])},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n(&u["completion_tokens_details"]["reasoning_tokens"])},
        "total_tokens": n(&u["total_tokens"]).max(input + output),
    })
}

/// (status, incomplete_details) for a Chat finish reason.
fn status(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// The response object around `output`.
fn response_object(
    id: &str,
    created: u64,
    model: &str,
    ctx: &ResponsesContext,
    (status, incomplete): (&str, Value),
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let e = |k: &str, default: Value| ctx.echo.get(k).cloned().unwrap_or(default);
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": e("instructions", Value::Null),
        "max_output_tokens": e("max_output_tokens", Value::Null),
        "model": model,
        "output": output,
        "parallel_tool_calls": e("parallel_tool_calls", Value::Bool(true)),
        "previous_response_id": null,
        "reasoning": e("reasoning", json!({"effort": null, "summary": null})),
        "store": false,
        "temperature": e("temperature", Value::from(1.0)),
        "text": e("text", json!({"format": {"type": "text"}})),
        "tool_choice": e("tool_choice", Value::from("auto")),
        "tools": e("tools", json!([])),
        "top_p": e("top_p", Value::from(1.0)),
        "truncation": "disabled",
        "usage": usage,
        "user": e("user", Value::Null),
        "metadata": {},
    })
}

/// A finished tool call as the client's item type.
fn call_item(
    ctx: &ResponsesContext,
    item_id: &str,
    call_id: &str,
    name: &str,
    args: &str,
) -> Value {
    match ctx.origin(name) {
        ToolOrigin::Custom => {
            let input = serde_json::from_str::<Value>(args)
                .ok()
                .and_then(|v| v["input"].as_str().map(str::to_string))
                .unwrap_or_else(|| args.to_string());
            json!({"id": item_id, "type": "custom_tool_call", "status": "completed",
                   "call_id": call_id, "name": name, "input": input})
        }
        ToolOrigin::LocalShell => {
            let mut action = serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}));
            action["type"] = Value::from("exec");
            json!({"id": item_id, "type": "local_shell_call", "status": "completed",
                   "call_id": call_id, "action": action})
        }
        ToolOrigin::Namespace { namespace, name } => json!({"id": item_id, "type": "function_call",
            "status": "completed", "call_id": call_id, "namespace": namespace, "name": name,
            "arguments": args}),
        ToolOrigin::Function => {
            json!({"id": item_id, "type": "function_call", "status": "completed",
            "call_id": call_id, "name": name, "arguments": args})
        }
    }
}

/// A reasoning item: the text as summary, and the envelope when the client asked for
/// encrypted content.
fn reasoning_item(ctx: &ResponsesContext, id: &str, text: &str, env: Option<Value>) -> Value {
    let mut item = json!({"id": id, "type": "reasoning",
        "summary": if text.is_empty() { json!([]) } else { json!([{"type": "summary_text", "text": text}]) }});
    if ctx.encrypted {
        if let Some(env) = env {
            item["encrypted_content"] = Value::from(envelope(&env));
        }
    }
    item
}

/// The envelope for reasoning that came as Chat `reasoning_details` (Anthropic-signed
/// thinking relayed by the Messages translator) or plain `reasoning_content`.
fn detail_envelope(d: &Value) -> Value {
    match d["type"].as_str() {
        Some("reasoning.encrypted") => json!({"v": 1, "p": "anthropic", "d": d["data"]}),
        _ => json!({"v": 1, "p": "anthropic", "t": d["text"], "s": d["signature"]}),
    }
}

/// A `chat.completion` → a Responses object.
pub fn response_from_chat(
    raw: &[u8],
    created: u64,
    ctx: &ResponsesContext,
) -> Result<Bytes, serde_json::Error> {
    let c: Value = serde_json::from_slice(raw)?;
    let id = minted_id(c["id"].as_str().unwrap_or(""));
    let choice = &c["choices"][0];
    let m = &choice["message"];
    let mut output = Vec::new();
    let details = m["reasoning_details"].as_array().filter(|d| !d.is_empty());
    match details {
        Some(details) => {
            for (i, d) in details.iter().enumerate() {
                let text = d["text"].as_str().unwrap_or("");
                output.push(reasoning_item(
                    ctx,
                    &format!("rs_{id}_{i}"),
                    text,
                    Some(detail_envelope(d)),
                ));
            }
        }
        None => {
            if let Some(r) = super::messages_chat::reasoning_text(m) {
                let env = json!({"v": 1, "p": "chat", "t": r});
                output.push(reasoning_item(ctx, &format!("rs_{id}_0"), r, Some(env)));
            }
        }
    }
    let text = m["content"].as_str().unwrap_or("");
    if let Some(refusal) = m["refusal"].as_str().filter(|r| !r.is_empty()) {
        output.push(
            json!({"id": format!("msg_{id}"), "type": "message", "role": "assistant",
            "status": "completed", "content": [{"type": "refusal", "refusal": refusal}]}),
        );
    } else if !text.is_empty() {
        output.push(message_item(&format!("msg_{id}"), text));
    }
    for call in m["tool_calls"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let call_id = call["id"].as_str().unwrap_or("");
        output.push(call_item(
            ctx,
            &format!("fc_{call_id}"),
            call_id,
            call["function"]["name"].as_str().unwrap_or(""),
            call["function"]["arguments"].as_str().unwrap_or(""),
        ));
    }
    let (status, incomplete) = status(choice["finish_reason"].as_str());
    let model = c["model"].as_str().unwrap_or("");
    let obj = response_object(
        &id,
        created,
        model,
        ctx,
        (status, incomplete),
        output,
        usage(&c["usage"]),
    );
    serde_json::to_vec(&obj).map(Bytes::from)
}

fn message_item(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// A response id for a translated answer, from the upstream's (ASCII letters, digits,
/// `_` and `-` kept).
fn minted_id(upstream: &str) -> String {
    let clean: String = upstream
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(48)
        .collect();
    format!("{MINTED_PREFIX}{clean}")
}

/// An upstream error → OpenAI's error shape (Responses clients read it), with the status.
pub fn error_from_messages(raw: &[u8], status: u16) -> (u16, Bytes) {
    super::chat_messages::error(raw, status)
}

// === Streams ===

/// An open output item.
enum Open {
    Reasoning {
        text: String,
        details: Vec<Value>,
    },
    Message {
        text: String,
    },
    Call {
        chat_index: u64,
        call_id: String,
        name: String,
        args: String,
        announced: bool,
    },
}

/// Chat Completions SSE (upstream, or the Messages translator's output) → Responses events.
pub struct ChatToResponses {
    events: EventReader,
    ctx: Arc<ResponsesContext>,
    created: u64,
    seq: u64,
    id: String,
    model: String,
    started: bool,
    open: Option<(usize, Open)>,
    output: Vec<Value>,
    finish: Option<String>,
    usage: Value,
    finished: bool,
}

impl ChatToResponses {
    pub fn new(created: u64, ctx: Arc<ResponsesContext>, client_model: &str) -> Self {
        Self {
            events: EventReader::default(),
            ctx,
            created,
            seq: 0,
            id: String::new(),
            model: client_model.to_string(),
            started: false,
            open: None,
            output: Vec::new(),
            finish: None,
            usage: usage(&Value::Null),
            finished: false,
        }
    }

    fn emit(&mut self, out: &mut BytesMut, kind: &str, mut payload: Value) {
        payload["type"] = Value::from(kind);
        payload["sequence_number"] = Value::from(self.seq);
        self.seq += 1;
        super::sse::write_event(out, Some(kind), &payload);
    }

    fn snapshot(&self, status: &str, incomplete: Value, output: Vec<Value>) -> Value {
        response_object(
            &self.id,
            self.created,
            &self.model,
            &self.ctx,
            (status, incomplete),
            output,
            self.usage.clone(),
        )
    }

    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = minted_id(chunk["id"].as_str().unwrap_or(""));
        if let Some(m) = chunk["model"].as_str().filter(|m| !m.is_empty()) {
            self.model = m.to_string();
        }
        let r = self.snapshot("in_progress", Value::Null, Vec::new());
        self.emit(out, "response.created", json!({"response": r}));
        let r = self.snapshot("in_progress", Value::Null, Vec::new());
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn item_id(&self, index: usize, prefix: &str) -> String {
        format!("{prefix}_{}_{index}", self.id)
    }

    /// Opens a new output item of the given kind (closing whatever is open).
    fn open(&mut self, kind: Open, out: &mut BytesMut) {
        self.close(out);
        let index = self.output.len();
        match &kind {
            Open::Reasoning { .. } => {
                let id = self.item_id(index, "rs");
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index,
                    "item": {"id": id, "type": "reasoning", "summary": []}}),
                );
                self.emit(out, "response.reasoning_summary_part.added", json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}));
            }
            Open::Message { .. } => {
                let id = self.item_id(index, "msg");
                self.emit(out, "response.output_item.added", json!({"output_index": index,
                    "item": {"id": id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}}));
                self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
            }
            Open::Call { .. } => {}
        }
        self.output.push(Value::Null); // its slot; filled when it closes
        self.open = Some((index, kind));
    }

    /// Announces a call once its name is known (some servers send the id first).
    fn announce(&mut self, out: &mut BytesMut) {
        let Some((
            index,
            Open::Call {
                call_id,
                name,
                args,
                announced,
                ..
            },
        )) = &mut self.open
        else {
            return;
        };
        if *announced || name.is_empty() {
            return;
        }
        *announced = true;
        let (index, call_id, name, args) =
            (*index, call_id.clone(), name.clone(), std::mem::take(args));
        let id = format!("fc_{call_id}");
        let mut item = call_item(&self.ctx, &id, &call_id, &name, "");
        item["status"] = Value::from("in_progress");
        let custom = matches!(
            self.ctx.origin(&name),
            ToolOrigin::Custom | ToolOrigin::LocalShell
        );
        if custom {
            item["input"] = Value::from("");
        }
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        if let Some((_, Open::Call { args: a, .. })) = &mut self.open {
            *a = args.clone();
        }
        if !args.is_empty() && !custom {
            self.emit(
                out,
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": args}),
            );
        }
    }

    fn close(&mut self, out: &mut BytesMut) {
        let Some((index, kind)) = self.open.take() else {
            return;
        };
        let item = match kind {
            Open::Reasoning { text, details } => {
                let id = self.item_id(index, "rs");
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "text": text}),
                );
                self.emit(out, "response.reasoning_summary_part.done", json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": text}}));
                let env = match details.last() {
                    Some(d) => detail_envelope(
                        &json!({"type": d["type"], "text": text, "signature": d["signature"], "data": d["data"]}),
                    ),
                    None => json!({"v": 1, "p": "chat", "t": text}),
                };
                reasoning_item(&self.ctx, &id, &text, Some(env))
            }
            Open::Message { text } => {
                let id = self.item_id(index, "msg");
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
                message_item(&id, &text)
            }
            Open::Call {
                call_id,
                name,
                args,
                announced,
                ..
            } => {
                if !announced {
                    // Never named: nothing the client could run.
                    self.output.truncate(index);
                    return;
                }
                let id = format!("fc_{call_id}");
                let item = call_item(&self.ctx, &id, &call_id, &name, &args);
                match item["type"].as_str() {
                    Some("custom_tool_call") => {
                        let input = item["input"].clone();
                        self.emit(
                            out,
                            "response.custom_tool_call_input.delta",
                            json!({"item_id": id, "output_index": index, "delta": input}),
                        );
                        self.emit(
                            out,
                            "response.custom_tool_call_input.done",
                            json!({"item_id": id, "output_index": index, "input": input}),
                        );
                    }
                    Some("function_call") => {
                        self.emit(
                            out,
                            "response.function_call_arguments.done",
                            json!({"item_id": id, "output_index": index, "arguments": args}),
                        );
                    }
                    _ => {}
                }
                item
            }
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.output[index] = item;
    }

    fn chunk(&mut self, c: &Value, out: &mut BytesMut) {
        if let Some(e) = c.get("error").filter(|e| !e.is_null()) {
            let message = e["message"]
                .as_str()
                .unwrap_or("upstream stream error")
                .to_string();
            let code = e["code"].as_str().unwrap_or("server_error").to_string();
            return self.failed(&code, &message, out);
        }
        self.start(c, out);
        if let Some(u) = c.get("usage").filter(|u| u.is_object()) {
            self.usage = usage(u);
        }
        let Some(choice) = c["choices"].get(0) else {
            return;
        };
        let d = &choice["delta"];
        let reasoning = d["reasoning_content"]
            .as_str()
            .or_else(|| d["reasoning"].as_str())
            .filter(|s| !s.is_empty());
        let details = d["reasoning_details"].as_array().filter(|a| !a.is_empty());
        if reasoning.is_some() || details.is_some() {
            if !matches!(self.open, Some((_, Open::Reasoning { .. }))) {
                self.open(
                    Open::Reasoning {
                        text: String::new(),
                        details: Vec::new(),
                    },
                    out,
                );
            }
            if let Some(t) = reasoning {
                let index = self.open.as_ref().map_or(0, |(i, _)| *i);
                let id = self.item_id(index, "rs");
                if let Some((_, Open::Reasoning { text, .. })) = &mut self.open {
                    text.push_str(t);
                }
                self.emit(
                    out,
                    "response.reasoning_summary_text.delta",
                    json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "delta": t}),
                );
            }
            if let (Some(ds), Some((_, Open::Reasoning { details, .. }))) =
                (details, &mut self.open)
            {
                details.extend(ds.iter().cloned());
            }
        }
        if let Some(t) = d["content"].as_str().filter(|s| !s.is_empty()) {
            if !matches!(self.open, Some((_, Open::Message { .. }))) {
                self.open(
                    Open::Message {
                        text: String::new(),
                    },
                    out,
                );
            }
            let index = self.open.as_ref().map_or(0, |(i, _)| *i);
            let id = self.item_id(index, "msg");
            if let Some((_, Open::Message { text })) = &mut self.open {
                text.push_str(t);
            }
            self.emit(
                out,
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index,
                "content_index": 0, "delta": t, "logprobs": []}),
            );
        }
        for tc in d["tool_calls"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let chat_index = tc["index"].as_u64().unwrap_or(0);
            let same = matches!(&self.open, Some((_, Open::Call { chat_index: i, .. })) if *i == chat_index);
            if !same {
                let call_id = tc["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{chat_index}"), str::to_string);
                self.open(
                    Open::Call {
                        chat_index,
                        call_id,
                        name: String::new(),
                        args: String::new(),
                        announced: false,
                    },
                    out,
                );
            }
            if let Some((_, Open::Call { name, call_id, .. })) = &mut self.open {
                if let Some(n) = tc["function"]["name"].as_str().filter(|n| !n.is_empty()) {
                    if name.is_empty() {
                        *name = n.to_string();
                    }
                }
                if let Some(id) = tc["id"].as_str().filter(|i| !i.is_empty()) {
                    if call_id.starts_with("call_") && same {
                        *call_id = id.to_string();
                    }
                }
            }
            let fragment = tc["function"]["arguments"].as_str().unwrap_or("");
            let announced = matches!(
                &self.open,
                Some((
                    _,
                    Open::Call {
                        announced: true,
                        ..
                    }
                ))
            );
            if let Some((
                index,
                Open::Call {
                    args,
                    call_id,
                    name,
                    ..
                },
            )) = &mut self.open
            {
                args.push_str(fragment);
                if announced && !fragment.is_empty() {
                    let custom = matches!(
                        self.ctx.origin(name),
                        ToolOrigin::Custom | ToolOrigin::LocalShell
                    );
                    let (index, id) = (*index, format!("fc_{call_id}"));
                    if !custom {
                        self.emit(
                            out,
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": index, "delta": fragment}),
                        );
                    }
                }
            }
            if !announced {
                self.announce(out);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
    }

    fn complete(&mut self, out: &mut BytesMut) {
        self.close(out);
        let (status, incomplete) = status(self.finish.as_deref());
        let output = std::mem::take(&mut self.output);
        let r = self.snapshot(status, incomplete, output);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": r}));
        self.finished = true;
    }

    fn failed(&mut self, code: &str, message: &str, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        if !self.started {
            self.start(&Value::Null, out);
        }
        let output: Vec<Value> = self
            .output
            .iter()
            .filter(|v| !v.is_null())
            .cloned()
            .collect();
        let mut r = self.snapshot("failed", Value::Null, output);
        r["error"] = json!({"code": code, "message": message});
        self.emit(out, "response.failed", json!({"response": r}));
        self.finished = true;
    }
}

impl EventMachine for ChatToResponses {
    fn reader(&mut self) -> &mut EventReader {
        &mut self.events
    }
    fn is_done(&self) -> bool {
        self.finished
    }
    fn on_event(&mut self, data: &[u8], out: &mut BytesMut) {
        let data = data.trim_ascii();
        if data.is_empty() {
            return;
        }
        if data == b"[DONE]" {
            return match self.finish {
                Some(_) => self.complete(out),
                None => self.failed(
                    "stream_interrupted",
                    "upstream stream ended without a finish reason",
                    out,
                ),
            };
        }
        match serde_json::from_slice::<Value>(data) {
            Ok(c) => self.chunk(&c, out),
            Err(_) => self.failed(
                "server_error",
                "upstream sent an event that is not JSON",
                out,
            ),
        }
    }
    /// No `[DONE]`: complete when the upstream said how it finished, else fail.
    fn on_end(&mut self, out: &mut BytesMut) {
        match self.finish {
            Some(_) => self.complete(out),
            None => self.failed(
                "stream_interrupted",
                "upstream stream ended before it finished",
                out,
            ),
        }
    }
    fn on_fail(&mut self, message: &str, out: &mut BytesMut) {
        self.failed("stream_interrupted", message, out);
    }
}

/// Two stream translators in a row: Anthropic SSE → Chat chunks → Responses events.
pub struct Chain {
    pub first: Box<dyn super::StreamTranslator>,
    pub second: Box<dyn super::StreamTranslator>,
}

impl super::StreamTranslator for Chain {
    fn push(&mut self, data: &[u8]) -> Bytes {
        let mid = self.first.push(data);
        if mid.is_empty() {
            return Bytes::new();
        }
        self.second.push(&mid)
    }
    fn finish(&mut self) -> Bytes {
        let mid = self.first.finish();
        let mut out = BytesMut::new();
        out.extend_from_slice(&self.second.push(&mid));
        out.extend_from_slice(&self.second.finish());
        out.freeze()
    }
    fn is_finished(&self) -> bool {
        self.second.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::StreamTranslator;
    use proptest::prelude::*;

    fn ctx() -> Arc<ResponsesContext> {
        let mut c = ResponsesContext {
            encrypted: true,
            ..Default::default()
        };
        c.tools.insert("patch".into(), ToolOrigin::Custom);
        c.tools.insert(
            "ns__leaf".into(),
            ToolOrigin::Namespace {
                namespace: "ns".into(),
                name: "leaf".into(),
            },
        );
        Arc::new(c)
    }

    fn chat_upstream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"r\"}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_details\":[{\"type\":\"reasoning.text\",\"text\":\"\",\"signature\":\"S\"}]}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"patch\",\"arguments\":\"{\\\"input\\\":\"}}]}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"x\\\"}\"}}]}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\"}]}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"name\":\"ns__leaf\",\"arguments\":\"{}\"}}]}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n"[..]),
            Just(&b"data: {\"error\":{\"message\":\"boom\"}}\n\n"[..]),
            Just(&b"data: [DONE]\n\n"[..]),
            Just(&b"data: {nope\n\n"[..]),
            Just(&b": keep-alive\n\n"[..]),
        ];
        crate::translate::truncated_stream(piece)
    }

    fn anthropic_upstream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\n"[..]),
            Just(&b"data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n"[..]),
            Just(&b"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"t\"}}\n\n"[..]),
            Just(&b"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"S\"}}\n\n"[..]),
            Just(&b"data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"[..]),
            Just(&b"data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n"[..]),
            Just(&b"data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"patch\"}}\n\n"[..]),
            Just(&b"data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"input\\\":1}\"}}\n\n"[..]),
            Just(&b"data: {\"type\":\"content_block_stop\",\"index\":2}\n\n"[..]),
            Just(&b"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":4}}\n\n"[..]),
            Just(&b"data: {\"type\":\"message_stop\"}\n\n"[..]),
            Just(&b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n"[..]),
            Just(&b"data: {nope\n\n"[..]),
        ];
        crate::translate::truncated_stream(piece)
    }

    fn machine(anthropic: bool) -> Box<dyn StreamTranslator> {
        let second = Box::new(ChatToResponses::new(7, ctx(), "client-model"));
        if anthropic {
            Box::new(Chain {
                first: Box::new(crate::translate::anthropic_stream::AnthropicToChat::new(
                    7, true, false,
                )),
                second,
            })
        } else {
            second
        }
    }

    /// Named events whose name is their type, dense sequence numbers, items opened and
    /// closed one at a time with rising output indexes, exactly one terminal event, last.
    fn check(text: &str) -> Result<(), TestCaseError> {
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        let mut open: Option<u64> = None;
        let mut next = 0u64;
        let mut terminals = 0;
        for (n, e) in events.iter().enumerate() {
            let (head, data) = e.split_once('\n').unwrap();
            let name = head.strip_prefix("event: ").unwrap();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            prop_assert_eq!(v["type"].as_str(), Some(name));
            prop_assert_eq!(v["sequence_number"].as_u64(), Some(n as u64));
            match name {
                "response.output_item.added" => {
                    prop_assert_eq!(open, None);
                    prop_assert_eq!(v["output_index"].as_u64(), Some(next));
                    open = Some(next);
                    next += 1;
                }
                "response.output_item.done" => {
                    prop_assert_eq!(v["output_index"].as_u64(), open);
                    open = None;
                }
                "response.completed" | "response.incomplete" | "response.failed" => {
                    terminals += 1;
                    prop_assert_eq!(n, events.len() - 1, "terminal not last");
                    if name != "response.failed" {
                        prop_assert_eq!(open, None, "an item left open");
                        let output = v["response"]["output"].as_array().unwrap();
                        prop_assert_eq!(output.len() as u64, next);
                    }
                }
                _ => {
                    if let Some(i) = v["output_index"].as_u64() {
                        prop_assert_eq!(Some(i), open);
                    }
                }
            }
        }
        prop_assert_eq!(terminals, 1);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        #[test]
        fn any_chat_upstream_gives_a_well_formed_responses_stream(
            input in chat_upstream(),
            split in any::<prop::sample::Index>(),
        ) {
            let whole = crate::translate::run_split(&mut *machine(false), &input, input.len());
            let cut = split.index(input.len() + 1);
            prop_assert_eq!(&whole, &crate::translate::run_split(&mut *machine(false), &input, cut));
            check(&String::from_utf8(whole).unwrap())?;
        }

        #[test]
        fn any_anthropic_upstream_gives_a_well_formed_responses_stream(
            input in anthropic_upstream(),
            split in any::<prop::sample::Index>(),
        ) {
            let whole = crate::translate::run_split(&mut *machine(true), &input, input.len());
            let cut = split.index(input.len() + 1);
            prop_assert_eq!(&whole, &crate::translate::run_split(&mut *machine(true), &input, cut));
            check(&String::from_utf8(whole).unwrap())?;
        }
    }

    #[test]
    fn envelopes_round_trip_and_names_stay_short() {
        let env = json!({"v": 1, "p": "anthropic", "t": "plan", "s": "SIG"});
        assert_eq!(open_envelope(&envelope(&env)), Some(env));
        assert_eq!(open_envelope("gAAAA-openai"), None);
        assert_eq!(
            flat_name("mcp__gh", "create_issue"),
            "mcp__gh__create_issue"
        );
        let long = flat_name(&"n".repeat(40), &"leaf".repeat(10));
        assert!(long.len() <= 64, "{long}");
        assert_eq!(long, flat_name(&"n".repeat(40), &"leaf".repeat(10)));
    }
}
