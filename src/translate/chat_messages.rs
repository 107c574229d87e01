//! OpenAI Chat Completions client ⇄ Anthropic Messages upstream, non-streaming parts:
//! the request (Chat → Messages) and the JSON response and error (Messages → Chat).
//! Parse loosely (`serde_json::Value`), emit only what the target documents; fields with
//! no equivalent are dropped and reported, fields whose loss would change the answer's
//! shape (`n > 1`, audio, file ids) are refused with `param` set.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{
    chat_usage_from_anthropic, finish_reason_from_anthropic, TranslatedRequest, Unsupported,
};

/// Client fields with no Anthropic equivalent that are dropped (and reported).
const DROPPED: &[&str] = &[
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "service_tier",
    "store",
    "metadata",
    "prediction",
    "verbosity",
    "prompt_cache_key",
    "prompt_cache_retention",
    "response_format",
    "web_search_options",
    "safety_identifier",
];

/// Fields read by the mapping itself.
const MAPPED: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "user",
    "n",
    "modalities",
    "audio",
    "reasoning_effort",
    "thinking",
    "top_k",
];

/// The largest output a model accepts, and the default when the client names none.
/// Claude 4 models: 64k (Opus 4 and 4.1: 32k); Claude 3.x: 8k (3 Haiku, 3 Opus: 4k).
pub fn max_output_tokens(model: &str) -> u64 {
    let m = model.to_ascii_lowercase();
    if m.contains("opus-4-1") || m.contains("opus-4-0") || m.contains("opus-4-2") {
        32_000
    } else if m.contains("-4") || m.contains("claude-4") || m.contains("-5") {
        64_000
    } else if m.contains("3-5") || m.contains("3-7") {
        8_192
    } else {
        4_096
    }
}

/// Models that take only adaptive thinking (`budget_tokens` is a 400 there).
fn adaptive_only(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    ["opus-4-7", "opus-4-8", "-5-", "claude-5"]
        .iter()
        .any(|p| m.contains(p))
}

/// Translates a Chat Completions body into a Messages body for `model`.
pub fn request(raw: &[u8], model: &str) -> Result<TranslatedRequest, Unsupported> {
    let body: Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|e| Unsupported::new("", format!("request body is not a JSON object: {e}")))?;
    let mut dropped: Vec<String> = Vec::new();
    for key in body.keys() {
        if DROPPED.contains(&key.as_str()) {
            if !body[key].is_null() && body[key] != Value::Bool(false) {
                dropped.push(key.clone());
            }
        } else if !MAPPED.contains(&key.as_str()) {
            dropped.push(key.clone());
        }
    }
    if let Some(n) = body.get("n").and_then(Value::as_u64) {
        if n != 1 {
            return Err(Unsupported::new(
                "n",
                "n must be 1 on this route: the upstream model returns one choice",
            ));
        }
    }
    let wants_audio = body.get("audio").is_some_and(|v| !v.is_null())
        || body
            .get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|x| x == "audio"));
    if wants_audio {
        return Err(Unsupported::new(
            "modalities",
            "audio output is not available on this route",
        ));
    }

    let body_map_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .cloned();
    let mut out = Map::new();
    out.insert("model".into(), Value::from(model));
    let (system, messages) = messages(body.get("messages"))?;
    let thinking = thinking(&body, model);
    let cap = max_output_tokens(model);
    let asked = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    let max_tokens = match (asked, &thinking) {
        (Some(n), _) => n.min(cap),
        (None, Some(Thinking::Budget(b))) => (b + 8_192).min(cap),
        (None, _) => cap,
    };
    out.insert("max_tokens".into(), Value::from(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    let thinking = thinking.and_then(|t| t.fit(max_tokens));
    match &thinking {
        Some(Thinking::Adaptive(effort)) => {
            out.insert("thinking".into(), json!({"type": "adaptive"}));
            out.insert("output_config".into(), json!({"effort": effort}));
        }
        Some(Thinking::Budget(b)) => {
            out.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": b}),
            );
        }
        None => {}
    }
    if thinking.is_none() {
        // Anthropic rejects sampling parameters with thinking on.
        match (body.get("temperature"), body.get("top_p")) {
            (Some(t), _) if t.is_number() => {
                let t = t.as_f64().unwrap_or(1.0).clamp(0.0, 1.0);
                out.insert("temperature".into(), Value::from(t));
                if body.get("top_p").is_some_and(Value::is_number) {
                    dropped.push("top_p".into()); // newer Claude models refuse both
                }
            }
            (_, Some(p)) if p.is_number() => {
                out.insert("top_p".into(), p.clone());
            }
            _ => {}
        }
        if let Some(k) = body.get("top_k").filter(|v| v.is_number()) {
            out.insert("top_k".into(), k.clone());
        }
    } else {
        for f in ["temperature", "top_p", "top_k"] {
            if body.get(f).is_some_and(|v| !v.is_null()) {
                dropped.push(f.into());
            }
        }
    }
    let stops: Vec<Value> = match body.get("stop") {
        Some(Value::String(s)) => vec![Value::from(s.as_str())],
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let stops: Vec<Value> = stops
        .into_iter()
        .filter(|s| s.as_str().is_some_and(|s| !s.trim().is_empty()))
        .collect();
    if !stops.is_empty() {
        out.insert("stop_sequences".into(), Value::Array(stops));
    }
    if body.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
    }
    let tools = tools(&body);
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    } else if history_has_tools(&out) {
        // Anthropic refuses tool blocks in history when no tool is declared.
        out.insert(
            "tools".into(),
            json!([{"name": "_keyway_noop", "description": "Not available; never call it.",
                    "input_schema": {"type": "object", "properties": {}}}]),
        );
    }
    if has_tools {
        if let Some(choice) = tool_choice(&body, thinking.is_some()) {
            out.insert("tool_choice".into(), choice);
        }
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        // Anthropic refuses e-mail addresses and phone-like ids here.
        if !user.contains('@') && !user.is_empty() {
            out.insert("metadata".into(), json!({"user_id": user}));
        }
    }
    dropped.sort();
    dropped.dedup();
    let body =
        serde_json::to_vec(&Value::Object(out)).map_err(|e| Unsupported::new("", e.to_string()))?;
    Ok(TranslatedRequest {
        body: Bytes::from(body),
        dropped,
        include_usage: body_include_usage(&body_map_usage),
    })
}

fn body_include_usage(v: &Option<Value>) -> bool {
    v.as_ref() == Some(&Value::Bool(true))
}

enum Thinking {
    Adaptive(&'static str),
    Budget(u64),
}

impl Thinking {
    /// A budget must stay under `max_tokens` and be at least 1024, or thinking is off.
    fn fit(self, max_tokens: u64) -> Option<Self> {
        match self {
            Thinking::Budget(b) => {
                let b = b.min(max_tokens.saturating_sub(1));
                (b >= 1024).then_some(Thinking::Budget(b))
            }
            adaptive => Some(adaptive),
        }
    }
}

/// `reasoning_effort` (or an Anthropic-style `thinking` the client sent) → thinking.
fn thinking(body: &Map<String, Value>, model: &str) -> Option<Thinking> {
    if let Some(t) = body.get("thinking").filter(|t| t.is_object()) {
        return match t["type"].as_str() {
            Some("enabled") => t["budget_tokens"].as_u64().map(Thinking::Budget),
            Some("adaptive") => Some(Thinking::Adaptive("high")),
            _ => None,
        };
    }
    let effort = body.get("reasoning_effort")?.as_str()?;
    let (adaptive, budget) = match effort {
        "minimal" => ("low", 1_024),
        "low" => ("low", 2_048),
        "medium" => ("medium", 8_192),
        "high" => ("high", 24_576),
        "xhigh" | "max" => ("high", 32_000),
        _ => return None, // "none" and unknown values: no thinking
    };
    Some(if adaptive_only(model) {
        Thinking::Adaptive(adaptive)
    } else {
        Thinking::Budget(budget)
    })
}

/// Text of a system/developer message: a string or text parts.
fn system_blocks(content: &Value, out: &mut Vec<Value>) {
    match content {
        Value::String(s) if !s.trim().is_empty() => out.push(json!({"type": "text", "text": s})),
        Value::Array(parts) => {
            for p in parts {
                if let Some(t) = p["text"].as_str().filter(|t| !t.trim().is_empty()) {
                    let mut block = json!({"type": "text", "text": t});
                    if let Some(cc) = p.get("cache_control") {
                        block["cache_control"] = cc.clone();
                    }
                    out.push(block);
                }
            }
        }
        _ => {}
    }
}

/// A user message's content parts → Anthropic blocks.
fn user_blocks(content: &Value, at: usize) -> Result<Vec<Value>, Unsupported> {
    let mut out = Vec::new();
    match content {
        Value::String(s) if !s.trim().is_empty() => out.push(json!({"type": "text", "text": s})),
        Value::Array(parts) => {
            for (j, p) in parts.iter().enumerate() {
                let mut block = match p["type"].as_str() {
                    Some("text") => match p["text"].as_str() {
                        Some(t) if !t.trim().is_empty() => json!({"type": "text", "text": t}),
                        _ => continue,
                    },
                    Some("image_url") => {
                        let url = p["image_url"]["url"]
                            .as_str()
                            .or_else(|| p["image_url"].as_str())
                            .unwrap_or("");
                        image_block(url).ok_or_else(|| {
                            Unsupported::new(
                                format!("messages[{at}].content[{j}]"),
                                "image_url must be an http(s) URL or a base64 data URL",
                            )
                        })?
                    }
                    Some("file") => {
                        let data = p["file"]["file_data"].as_str().unwrap_or("");
                        match data_url(data) {
                            Some((media, b64)) => json!({"type": "document",
                                "source": {"type": "base64", "media_type": media, "data": b64}}),
                            None => {
                                return Err(Unsupported::new(
                                    format!("messages[{at}].content[{j}]"),
                                    "file parts must carry file_data as a data URL; file ids belong to another provider's store",
                                ))
                            }
                        }
                    }
                    other => {
                        return Err(Unsupported::new(
                            format!("messages[{at}].content[{j}]"),
                            format!(
                                "content part type {} is not available on this route",
                                other.unwrap_or("(missing)")
                            ),
                        ))
                    }
                };
                if let Some(cc) = p.get("cache_control") {
                    block["cache_control"] = cc.clone();
                }
                out.push(block);
            }
        }
        _ => {}
    }
    Ok(out)
}

fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (media, data) = rest.split_once(";base64,")?;
    Some((media, data))
}

fn image_block(url: &str) -> Option<Value> {
    if let Some((media, data)) = data_url(url) {
        return Some(json!({"type": "image",
            "source": {"type": "base64", "media_type": media, "data": data}}));
    }
    (url.starts_with("https://") || url.starts_with("http://"))
        .then(|| json!({"type": "image", "source": {"type": "url", "url": url}}))
}

/// Tool-call arguments → a tool_use input object (Anthropic requires an object).
fn tool_input(arguments: &Value) -> Value {
    match arguments {
        Value::String(s) if s.trim().is_empty() => json!({}),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({"_raw": s}),
        },
        Value::Object(_) => arguments.clone(),
        Value::Null => json!({}),
        other => json!({"_raw": other.to_string()}),
    }
}

/// Anthropic tool ids: `^[A-Za-z0-9_-]{1,64}$`. Applied identically to `tool_use.id` and
/// `tool_result.tool_use_id`, so pairs stay paired.
pub fn tool_id(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == id && !id.is_empty() && id.len() <= 64 {
        return clean;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep: String = clean.chars().take(55).collect();
    format!("{keep}_{hash}")
}

/// Chat messages → (Anthropic `system` blocks, Anthropic messages), per the ordering rules:
/// system/developer hoisted; consecutive same-role turns merged; tool results answering
/// one assistant turn gathered into one user turn, results first.
fn messages(messages: Option<&Value>) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let list = messages
        .and_then(Value::as_array)
        .ok_or_else(|| Unsupported::new("messages", "messages must be an array"))?;
    let mut system = Vec::new();
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    // Tool results waiting for the user turn they open (results first, then user text).
    let push = |out: &mut Vec<(String, Vec<Value>)>, role: &str, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        match out.last_mut() {
            Some((r, existing)) if r == role => existing.extend(blocks),
            _ => out.push((role.to_string(), blocks)),
        }
    };
    for (i, m) in list.iter().enumerate() {
        let content = &m["content"];
        match m["role"].as_str() {
            Some("system") | Some("developer") => system_blocks(content, &mut system),
            Some("user") => {
                let blocks = user_blocks(content, i)?;
                push(&mut out, "user", blocks);
            }
            Some("assistant") => {
                let mut blocks = Vec::new();
                match content {
                    Value::String(s) if !s.trim().is_empty() => {
                        blocks.push(json!({"type": "text", "text": s}))
                    }
                    Value::Array(parts) => {
                        for p in parts {
                            let text = p["text"].as_str().or_else(|| p["refusal"].as_str());
                            if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
                                blocks.push(json!({"type": "text", "text": t}));
                            }
                        }
                    }
                    _ => {}
                }
                let calls = m["tool_calls"].as_array().cloned().unwrap_or_default();
                let legacy = m["function_call"]
                    .is_object()
                    .then(|| json!({"id": format!("call_{i}"), "function": m["function_call"]}));
                for call in calls.iter().chain(legacy.iter()) {
                    let name = call["function"]["name"].as_str().unwrap_or("");
                    if name.is_empty() {
                        continue;
                    }
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": tool_id(call["id"].as_str().unwrap_or("")),
                        "name": name,
                        "input": tool_input(&call["function"]["arguments"]),
                    }));
                }
                push(&mut out, "assistant", blocks);
            }
            Some("tool") | Some("function") => {
                let id = m["tool_call_id"]
                    .as_str()
                    .or_else(|| m["name"].as_str())
                    .unwrap_or("");
                let result = match content {
                    Value::String(s) => Value::from(s.as_str()),
                    Value::Array(parts) => Value::Array(
                        parts
                            .iter()
                            .filter_map(|p| p["text"].as_str())
                            .map(|t| json!({"type": "text", "text": t}))
                            .collect(),
                    ),
                    _ => Value::from(""),
                };
                let block =
                    json!({"type": "tool_result", "tool_use_id": tool_id(id), "content": result});
                // Results go first in the user turn that follows the assistant's calls.
                match out.last_mut() {
                    Some((r, existing)) if r == "user" => {
                        let at = existing
                            .iter()
                            .position(|b| b["type"] != "tool_result")
                            .unwrap_or(existing.len());
                        existing.insert(at, block);
                    }
                    _ => out.push(("user".into(), vec![block])),
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
    let messages = out
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

fn history_has_tools(out: &Map<String, Value>) -> bool {
    out["messages"].as_array().is_some_and(|ms| {
        ms.iter().any(|m| {
            m["content"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|b| b["type"] == "tool_use" || b["type"] == "tool_result")
            })
        })
    })
}

/// `tools[].function` (and legacy `functions`) → Anthropic tools; schemas verbatim.
fn tools(body: &Map<String, Value>) -> Vec<Value> {
    let functions = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter(|t| t["type"] == "function" || t.get("function").is_some())
                .map(|t| &t["function"])
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let legacy = body
        .get("functions")
        .and_then(Value::as_array)
        .map(|fs| fs.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    functions
        .into_iter()
        .chain(legacy)
        .filter_map(|f| {
            let name = f["name"].as_str()?;
            let mut tool = json!({
                "name": name,
                "input_schema": match &f["parameters"] {
                    Value::Object(_) => f["parameters"].clone(),
                    _ => json!({"type": "object", "properties": {}}),
                },
            });
            if let Some(d) = f["description"].as_str() {
                tool["description"] = Value::from(d);
            }
            Some(tool)
        })
        .collect()
}

/// `tool_choice` and `parallel_tool_calls` → Anthropic `tool_choice`.
fn tool_choice(body: &Map<String, Value>, thinking: bool) -> Option<Value> {
    let parallel_off = body.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let choice = body
        .get("tool_choice")
        .or_else(|| body.get("function_call"));
    let mut mapped = match choice {
        None | Some(Value::Null) => json!({"type": "auto"}),
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Some(json!({"type": "none"})),
            "required" | "any" => json!({"type": "any"}),
            _ => json!({"type": "auto"}),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f["name"].as_str())
                .or_else(|| o.get("name").and_then(Value::as_str));
            match name {
                Some(n) => json!({"type": "tool", "name": n}),
                None => json!({"type": "any"}),
            }
        }
        Some(_) => json!({"type": "auto"}),
    };
    if thinking && mapped["type"] != "auto" {
        // Anthropic refuses forced tool use while thinking.
        mapped = json!({"type": "auto"});
    }
    if parallel_off {
        mapped["disable_parallel_tool_use"] = Value::Bool(true);
    } else if choice.is_none() {
        return None; // Anthropic's default is auto
    }
    Some(mapped)
}

/// An Anthropic message → an OpenAI `chat.completion`.
pub fn response(raw: &[u8], created: u64) -> Result<Bytes, serde_json::Error> {
    let msg: Value = serde_json::from_slice(raw)?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut details = Vec::new();
    let mut calls = Vec::new();
    for block in msg["content"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("thinking") => {
                let t = block["thinking"].as_str().unwrap_or("");
                reasoning.push_str(t);
                details.push(json!({"type": "reasoning.text", "text": t,
                    "signature": block["signature"].as_str().unwrap_or("")}));
            }
            Some("redacted_thinking") => {
                details.push(json!({"type": "reasoning.encrypted", "data": block["data"]}))
            }
            Some("tool_use") => calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {} // server tools already ran upstream; nothing for the client to do
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::from(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !details.is_empty() {
        message["reasoning_content"] = Value::from(reasoning);
        message["reasoning_details"] = Value::Array(details);
    }
    let u = &msg["usage"];
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let out = json!({
        "id": msg["id"],
        "object": "chat.completion",
        "created": created,
        "model": msg["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason_from_anthropic(msg["stop_reason"].as_str()),
        }],
        "usage": chat_usage_from_anthropic(n("input_tokens"), n("output_tokens"),
            n("cache_read_input_tokens"), n("cache_creation_input_tokens")),
    });
    serde_json::to_vec(&out).map(Bytes::from)
}

/// An Anthropic error body → OpenAI's error shape (the status is the caller's to keep;
/// 529 becomes 503, which OpenAI clients know).
pub fn error(raw: &[u8], status: u16) -> (u16, Bytes) {
    let parsed: Option<Value> = serde_json::from_slice(raw).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&raw[..raw.len().min(512)]).into_owned());
    let (status, kind, code) = match status {
        401 => (401, "authentication_error", "invalid_api_key"),
        402 => (429, "insufficient_quota", "insufficient_quota"),
        403 => (403, "permission_error", "permission_denied"),
        404 => (404, "invalid_request_error", "model_not_found"),
        429 => (429, "rate_limit_error", "rate_limit_exceeded"),
        529 => (503, "server_error", "overloaded"),
        s if s >= 500 => (s, "server_error", "server_error"),
        s => (s, "invalid_request_error", "invalid_request_error"),
    };
    let body = json!({"error": {
        "message": message,
        "type": kind,
        "param": null,
        "code": code,
    }});
    (status, Bytes::from(body.to_string()))
}
