//! Anthropic Messages client (Claude Code, the Anthropic SDKs) ⇄ OpenAI Chat Completions
//! upstream (`openai` and `openai-compatible` providers), non-streaming parts: the request
//! (Messages → Chat), the JSON response and the error (Chat → Messages).
//!
//! Tool results answering one assistant turn become `tool` messages placed right after
//! it, before any user text of the same turn (OpenAI-compatible servers refuse anything in
//! between). Claude Code's per-request billing line in `system` is removed: it changes on
//! every request and would defeat the provider's prefix cache. `cache_control` has no
//! equivalent and is dropped.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::caps::{self, Capabilities, ReasoningReplay, StructuredOutput, ThinkingMode};
use super::{TargetInfo, TranslatedRequest, Unsupported};
use crate::config::ProviderKind;

/// Client fields dropped (and reported) on this route.
const DROPPED: &[&str] = &[
    "top_k",
    "context_management",
    "container",
    "service_tier",
    "cache_control",
];

const MAPPED: &[&str] = &[
    "model",
    "system",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "metadata",
    "mcp_servers",
];

/// Claude Code's per-request system block (`x-anthropic-billing-header: cc_version=…`).
const BILLING_PREFIX: &str = "x-anthropic-billing-header:";

/// Translates a Messages body into a Chat Completions body for `target` (which max-tokens
/// field, reasoning control, structured output and history replay its capabilities say).
pub fn request(raw: &[u8], target: &TargetInfo) -> Result<TranslatedRequest, Unsupported> {
    let (model, kind, caps) = (target.model, target.kind, target.caps);
    let body: Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|e| Unsupported::new("", format!("request body is not a JSON object: {e}")))?;
    let mut dropped: Vec<String> = body
        .keys()
        .filter(|k| DROPPED.contains(&k.as_str()) || !MAPPED.contains(&k.as_str()))
        .cloned()
        .collect();
    if body
        .get("mcp_servers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(Unsupported::new(
            "mcp_servers",
            "remote MCP servers run only on Anthropic's API; declare the tools yourself",
        ));
    }
    let mut cache_control = false;
    let mut out = Map::new();
    out.insert("model".into(), Value::from(model));
    let mut messages = Vec::new();
    let system = system_text(body.get("system"), &mut cache_control);
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    convert_messages(
        body.get("messages"),
        &mut messages,
        &mut cache_control,
        caps,
    )?;
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = body.get("max_tokens").and_then(Value::as_u64) {
        caps.insert_max_tokens(&mut out, n);
    }
    for f in ["temperature", "top_p"] {
        if let Some(v) = body.get(f).filter(|v| v.is_number()) {
            out.insert(f.into(), v.clone());
        }
    }
    if let Some(stops) = body.get("stop_sequences").and_then(Value::as_array) {
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
    }
    if body.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
        // Anthropic streams always end with usage; ask the upstream for it.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let (tools, server_tools) = tools(body.get("tools"), &mut cache_control);
    if server_tools {
        dropped.push("tools (server tools)".into());
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(tc) = body.get("tool_choice") {
            let (choice, parallel_off) = tool_choice(tc);
            if let Some(c) = choice {
                out.insert("tool_choice".into(), c);
            }
            if parallel_off {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    match (reasoning_effort(&body), caps.thinking) {
        (Some(effort), ThinkingMode::Effort) => {
            out.insert("reasoning_effort".into(), Value::from(effort));
        }
        // Servers without a known reasoning control: the capability table says none.
        (Some(_), _) => dropped.push("thinking".into()),
        (None, _) => {}
    }
    if let Some(format) = body
        .get("output_config")
        .and_then(|c| c.get("format"))
        .filter(|f| f["type"] == "json_schema")
    {
        match caps.structured_output {
            StructuredOutput::Native => {
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {
                        "name": "structured_output", "schema": format["schema"], "strict": false}}),
                );
            }
            _ => dropped.push("output_config.format".into()),
        }
    }
    let user_id = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str);
    // A plain id passes as `user`; Claude Code's JSON blob (device and session ids) does
    // not: it is no user name, and strict servers cap the field's length.
    if let Some(user) = user_id.filter(|u| !u.is_empty() && u.len() <= 64 && !u.starts_with('{')) {
        out.insert("user".into(), Value::from(user));
    }
    if kind == ProviderKind::OpenAi {
        // One conversation keeps one cache key, so OpenAI's prefix cache finds it again.
        if let Some(session) = user_id.and_then(session_id) {
            out.insert("prompt_cache_key".into(), Value::from(session));
        }
    }
    if cache_control {
        dropped.push("cache_control".into());
    }
    dropped.sort();
    dropped.dedup();
    let body =
        serde_json::to_vec(&Value::Object(out)).map_err(|e| Unsupported::new("", e.to_string()))?;
    Ok(TranslatedRequest {
        body: Bytes::from(body),
        dropped,
        include_usage: true,
        json_tool: false,
        responses: None,
    })
}

/// The session id in Claude Code's `metadata.user_id`: a JSON string with `session_id`
/// (current versions) or `…_session_<uuid>` (older ones).
fn session_id(user_id: &str) -> Option<String> {
    if user_id.starts_with('{') {
        let v: Value = serde_json::from_str(user_id).ok()?;
        return v["session_id"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 64)
            .map(str::to_string);
    }
    let (_, s) = user_id.rsplit_once("_session_")?;
    (!s.is_empty() && s.len() <= 64).then(|| s.to_string())
}

/// `thinking` / `output_config.effort` → an OpenAI reasoning effort.
fn reasoning_effort(body: &Map<String, Value>) -> Option<&'static str> {
    let thinking = body.get("thinking")?;
    match thinking["type"].as_str() {
        Some("enabled") => Some(match thinking["budget_tokens"].as_u64().unwrap_or(0) {
            0..=2_048 => "low",
            2_049..=8_192 => "medium",
            _ => "high",
        }),
        Some("adaptive") => Some(
            match body.get("output_config").and_then(|c| c["effort"].as_str()) {
                Some("low") => "low",
                Some("medium") => "medium",
                _ => "high",
            },
        ),
        _ => None,
    }
}

fn system_text(system: Option<&Value>, cache_control: &mut bool) -> String {
    match system {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .inspect(|b| *cache_control |= b.get("cache_control").is_some())
            .filter_map(|b| b["text"].as_str())
            .filter(|t| !t.trim_start().starts_with(BILLING_PREFIX))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// An Anthropic image or document block → an OpenAI content part.
fn media_part(block: &Value, at: &str) -> Result<Value, Unsupported> {
    let src = &block["source"];
    let url = match src["type"].as_str() {
        Some("base64") => format!(
            "data:{};base64,{}",
            src["media_type"]
                .as_str()
                .unwrap_or("application/octet-stream"),
            src["data"].as_str().unwrap_or("")
        ),
        Some("url") => src["url"].as_str().unwrap_or("").to_string(),
        _ => {
            return Err(Unsupported::new(
                at,
                "only base64 and URL sources are available on this route",
            ))
        }
    };
    Ok(if block["type"] == "document" {
        json!({"type": "file", "file": {"file_data": url, "filename": "document.pdf"}})
    } else {
        json!({"type": "image_url", "image_url": {"url": url}})
    })
}

fn convert_messages(
    messages: Option<&Value>,
    out: &mut Vec<Value>,
    cache_control: &mut bool,
    caps: &Capabilities,
) -> Result<(), Unsupported> {
    let id = |v: &Value| Value::from(caps::tool_id(v.as_str().unwrap_or(""), caps.tool_ids));
    let list = messages
        .and_then(Value::as_array)
        .ok_or_else(|| Unsupported::new("messages", "messages must be an array"))?;
    for (i, m) in list.iter().enumerate() {
        let blocks: Vec<Value> = match &m["content"] {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(a) => a.clone(),
            _ => Vec::new(),
        };
        for b in &blocks {
            *cache_control |= b.get("cache_control").is_some();
        }
        match m["role"].as_str() {
            Some("assistant") => {
                let mut text = String::new();
                let mut reasoning = String::new();
                let mut calls = Vec::new();
                for b in &blocks {
                    match b["type"].as_str() {
                        Some("text") => text.push_str(b["text"].as_str().unwrap_or("")),
                        Some("thinking") => {
                            reasoning.push_str(b["thinking"].as_str().unwrap_or(""))
                        }
                        Some("tool_use") => calls.push(json!({
                            "id": id(&b["id"]),
                            "type": "function",
                            "function": {"name": b["name"], "arguments": b["input"].to_string()},
                        })),
                        _ => {}
                    }
                }
                let mut msg = json!({"role": "assistant",
                    "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::from(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                // Thinking goes back only to targets that require their own reasoning.
                if caps.reasoning_replay == ReasoningReplay::ReasoningContent
                    && !reasoning.is_empty()
                {
                    msg["reasoning_content"] = Value::from(reasoning);
                }
                out.push(msg);
            }
            Some("user") => {
                let mut parts = Vec::new();
                let mut tool_images = Vec::new();
                for (j, b) in blocks.iter().enumerate() {
                    let at = format!("messages[{i}].content[{j}]");
                    match b["type"].as_str() {
                        Some("tool_result") => {
                            let mut text = String::new();
                            match &b["content"] {
                                Value::String(s) => text.push_str(s),
                                Value::Array(items) => {
                                    for item in items {
                                        match item["type"].as_str() {
                                            Some("text") => {
                                                if !text.is_empty() {
                                                    text.push('\n');
                                                }
                                                text.push_str(item["text"].as_str().unwrap_or(""));
                                            }
                                            Some("image") | Some("document") => {
                                                tool_images.push(media_part(item, &at)?)
                                            }
                                            _ => {}
                                        }
                                    }
                                }
                                _ => {}
                            }
                            if b["is_error"] == Value::Bool(true) {
                                text = format!("Error: {text}");
                            }
                            out.push(json!({"role": "tool", "tool_call_id": id(&b["tool_use_id"]), "content": text}));
                        }
                        Some("text") => {
                            parts.push(json!({"type": "text", "text": b["text"]}));
                        }
                        Some("image") | Some("document") => parts.push(media_part(b, &at)?),
                        _ => {} // server-tool history and the like: already resolved upstream
                    }
                }
                // Images cannot live in a tool message: they follow as user content.
                tool_images.extend(parts);
                if !tool_images.is_empty() {
                    let content = match tool_images.as_slice() {
                        [only] if only["type"] == "text" => only["text"].clone(),
                        _ => Value::Array(tool_images),
                    };
                    out.push(json!({"role": "user", "content": content}));
                }
            }
            // Mid-conversation system text (Claude Code sends it): a system message here.
            Some("system") => {
                let text: Vec<&str> = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
                if !text.is_empty() {
                    out.push(json!({"role": "system", "content": text.join("\n")}));
                }
            }
            other => {
                return Err(Unsupported::new(
                    format!("messages[{i}].role"),
                    format!("unknown role {}", other.unwrap_or("(missing)")),
                ))
            }
        }
    }
    Ok(())
}

/// Client tools → functions (schemas verbatim); server tools (typed, not `custom`) are
/// dropped, since only Anthropic runs them. The bool says whether any were.
fn tools(tools: Option<&Value>, cache_control: &mut bool) -> (Vec<Value>, bool) {
    let mut server = false;
    let mut out = Vec::new();
    for t in tools
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        *cache_control |= t.get("cache_control").is_some();
        match t["type"].as_str() {
            None | Some("custom") => {}
            Some(_) => {
                server = true;
                continue;
            }
        }
        let Some(name) = t["name"].as_str() else {
            continue;
        };
        let mut f = json!({"name": name, "parameters": match &t["input_schema"] {
            Value::Object(_) => t["input_schema"].clone(),
            _ => json!({"type": "object", "properties": {}}),
        }});
        if let Some(d) = t["description"].as_str() {
            f["description"] = Value::from(d);
        }
        out.push(json!({"type": "function", "function": f}));
    }
    (out, server)
}

/// Anthropic `tool_choice` → (OpenAI `tool_choice`, parallel calls off).
fn tool_choice(tc: &Value) -> (Option<Value>, bool) {
    let parallel_off = tc["disable_parallel_tool_use"] == Value::Bool(true);
    let choice = match tc["type"].as_str() {
        Some("auto") => Some(Value::from("auto")),
        Some("any") => Some(Value::from("required")),
        Some("none") => Some(Value::from("none")),
        Some("tool") => tc["name"]
            .as_str()
            .map(|n| json!({"type": "function", "function": {"name": n}})),
        _ => None,
    };
    (choice, parallel_off)
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`: `length` wins, then tool calls (some
/// servers say `stop` with tool calls), then the stated reason.
pub fn stop_reason(finish: Option<&str>, saw_tool: bool) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        _ if saw_tool => "tool_use",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI usage → Anthropic usage (cache reads taken out of the input count).
pub fn anthropic_usage(u: &Value) -> Value {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let prompt = n(&u["prompt_tokens"]).max(n(&u["input_tokens"]));
    let read =
        n(&u["prompt_tokens_details"]["cached_tokens"]).max(n(&u["cache_read_input_tokens"]));
    let creation = n(&u["prompt_tokens_details"]["cache_write_tokens"])
        .max(n(&u["cache_creation_input_tokens"]));
    json!({
        "input_tokens": prompt.saturating_sub(read + creation),
        "output_tokens": n(&u["completion_tokens"]).max(n(&u["output_tokens"])),
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": creation,
    })
}

/// The reasoning text a compatible server sent, under any of the names in use.
pub fn reasoning_text(m: &Value) -> Option<&str> {
    m["reasoning_content"]
        .as_str()
        .or_else(|| m["reasoning"].as_str())
        .filter(|s| !s.is_empty())
}

/// A `chat.completion` → an Anthropic message.
pub fn response(raw: &[u8]) -> Result<Bytes, serde_json::Error> {
    let c: Value = serde_json::from_slice(raw)?;
    let choice = &c["choices"][0];
    let m = &choice["message"];
    let mut content = Vec::new();
    if let Some(r) = reasoning_text(m) {
        content.push(json!({"type": "thinking", "thinking": r,
            "signature": super::openai_stream::SYNTHETIC_SIGNATURE}));
    }
    let text = [m["content"].as_str(), m["refusal"].as_str()]
        .into_iter()
        .flatten()
        .collect::<String>();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = m["tool_calls"].as_array().cloned().unwrap_or_default();
    for call in &calls {
        let args = call["function"]["arguments"].as_str().unwrap_or("");
        let input = match serde_json::from_str::<Value>(args) {
            Ok(v @ Value::Object(_)) => v,
            _ if args.trim().is_empty() => json!({}),
            _ => json!({"_raw": args}),
        };
        content.push(json!({"type": "tool_use",
            "id": super::chat_messages::tool_id(call["id"].as_str().unwrap_or("")),
            "name": call["function"]["name"], "input": input}));
    }
    let out = json!({
        "id": c["id"],
        "type": "message",
        "role": "assistant",
        "model": c["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str(), !calls.is_empty()),
        "stop_sequence": null,
        "usage": anthropic_usage(&c["usage"]),
    });
    serde_json::to_vec(&out).map(Bytes::from)
}

/// An OpenAI error body → Anthropic's error shape, with Anthropic's type for the status.
pub fn error(raw: &[u8], status: u16) -> (u16, Bytes) {
    let parsed: Option<Value> = serde_json::from_slice(raw).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&raw[..raw.len().min(512)]).into_owned());
    let kind = match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, Bytes::from(body.to_string()))
}
