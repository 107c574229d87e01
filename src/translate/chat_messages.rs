//! OpenAI Chat Completions client ⇄ Anthropic Messages upstream, non-streaming parts:
//! the request (Chat → Messages) and the JSON response and error (Messages → Chat).
//! Parse loosely (`serde_json::Value`), emit only what the target documents; fields with
//! no equivalent are dropped and reported, fields whose loss would change the answer's
//! shape (`n > 1`, audio, file ids) are refused with `param` set.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::caps::{self, Capabilities, StructuredOutput, ThinkingMode, ToolIds};
use super::{
    chat_usage_from_anthropic, finish_reason_from_anthropic, TargetInfo, TranslatedRequest,
    Unsupported, JSON_TOOL,
};
use crate::translate::openai_stream::SYNTHETIC_SIGNATURE_PREFIX;

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
    "response_format",
];

/// When the client names no `max_tokens` and the table knows no cap (Messages requires one).
const FALLBACK_MAX_TOKENS: u64 = 4_096;

/// Translates a Chat Completions body into a Messages body for `target`.
pub fn request(raw: &[u8], target: &TargetInfo) -> Result<TranslatedRequest, Unsupported> {
    let model = target.model;
    let caps = target.caps;
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
    let (system, mut messages) = messages(body.get("messages"), caps.tool_ids)?;
    let asked_thinking = thinking(&body, caps);
    if asked_thinking.is_none() && wants_thinking(&body) {
        dropped.push(if body.contains_key("reasoning_effort") {
            "reasoning_effort".into()
        } else {
            "thinking".into()
        });
    }
    let cap = caps.max_output_tokens;
    let asked = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    let max_tokens = match (asked, &asked_thinking) {
        (Some(n), _) => cap.map_or(n, |c| n.min(c)),
        (None, Some(Thinking::Budget(b))) => cap.map_or(b + 8_192, |c| (b + 8_192).min(c)),
        (None, _) => cap.unwrap_or(FALLBACK_MAX_TOKENS),
    };
    let mut thinking = asked_thinking.and_then(|t| t.fit(max_tokens));
    // Manual thinking needs the last assistant tool turn to open with its signed thinking;
    // when the history lost it (another provider answered that turn), think not this once.
    if matches!(thinking, Some(Thinking::Budget(_))) && !tool_turn_keeps_thinking(&messages) {
        thinking = None;
        dropped.push("reasoning_effort".into());
    }
    if thinking.is_none() {
        strip_thinking(&mut messages);
    }
    out.insert("max_tokens".into(), Value::from(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    let mut output_config = Map::new();
    match &thinking {
        Some(Thinking::Adaptive(effort)) => {
            out.insert("thinking".into(), json!({"type": "adaptive"}));
            output_config.insert("effort".into(), Value::from(*effort));
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
    let mut tools = tools(&body);
    let format = response_format(&body);
    let mut json_tool = false;
    match (format, caps.structured_output) {
        (None, _) => {}
        (Some(schema), StructuredOutput::Native) => {
            output_config.insert(
                "format".into(),
                json!({"type": "json_schema", "schema": anthropic_schema(schema)}),
            );
        }
        (Some(schema), StructuredOutput::Tool) => {
            tools.push(json!({
                "name": JSON_TOOL,
                "description": "Respond with the final answer by calling this tool; its input is the answer.",
                "input_schema": schema,
            }));
            json_tool = true;
        }
        (Some(_), StructuredOutput::None) => dropped.push("response_format".into()),
    }
    if !output_config.is_empty() {
        out.insert("output_config".into(), Value::Object(output_config));
    }
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
    let client_tools = body
        .get("tools")
        .is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()));
    if json_tool && !client_tools {
        // The answer must come as the tool call (forcing a tool is refused while thinking).
        let choice = if thinking.is_some() {
            json!({"type": "any"})
        } else {
            json!({"type": "tool", "name": JSON_TOOL})
        };
        out.insert("tool_choice".into(), choice);
    } else if has_tools {
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
        json_tool,
        responses: None,
    })
}

/// The JSON schema a `response_format` asks for, `None` for plain text.
fn response_format(body: &Map<String, Value>) -> Option<Value> {
    let f = body.get("response_format")?;
    match f["type"].as_str()? {
        "json_schema" => Some(match &f["json_schema"]["schema"] {
            s @ Value::Object(_) => s.clone(),
            _ => json!({"type": "object"}),
        }),
        "json_object" => Some(json!({"type": "object", "additionalProperties": true})),
        _ => None,
    }
}

/// JSON Schema keywords Anthropic's structured outputs refuse; they move into the
/// `description` so the model still reads them.
const UNSUPPORTED_SCHEMA_KEYWORDS: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
];

/// A schema Anthropic accepts: refused keywords moved into descriptions, recursively.
fn anthropic_schema(mut schema: Value) -> Value {
    fn walk(v: &mut Value, depth: usize) {
        if depth > 64 {
            return;
        }
        match v {
            Value::Object(o) => {
                let mut notes = Vec::new();
                for k in UNSUPPORTED_SCHEMA_KEYWORDS {
                    // Only where it is a keyword (a number or bool), not a property name.
                    if let Some(val) = o.get(*k).filter(|x| x.is_number() || x.is_boolean()) {
                        notes.push(format!("{k}: {val}"));
                        o.remove(*k);
                    }
                }
                if !notes.is_empty() {
                    let note = format!("({})", notes.join(", "));
                    let d = match o.get("description").and_then(Value::as_str) {
                        Some(d) => format!("{d} {note}"),
                        None => note,
                    };
                    o.insert("description".into(), Value::from(d));
                }
                for child in o.values_mut() {
                    walk(child, depth + 1);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, depth + 1)),
            _ => {}
        }
    }
    walk(&mut schema, 0);
    schema
}

/// The client asked for reasoning in any of the ways it can.
fn wants_thinking(body: &Map<String, Value>) -> bool {
    body.get("reasoning_effort")
        .and_then(Value::as_str)
        .is_some_and(|e| e != "none")
        || body
            .get("thinking")
            .is_some_and(|t| t["type"] == "enabled" || t["type"] == "adaptive")
}

/// True unless the last assistant turn that calls tools lacks a leading thinking block.
fn tool_turn_keeps_thinking(messages: &[Value]) -> bool {
    let last_tool_turn = messages.iter().rev().find(|m| {
        m["role"] == "assistant"
            && m["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_use"))
    });
    match last_tool_turn {
        None => true,
        Some(m) => m["content"][0]["type"]
            .as_str()
            .is_some_and(|t| t == "thinking" || t == "redacted_thinking"),
    }
}

/// Removes replayed thinking from history (thinking is off for this request).
fn strip_thinking(messages: &mut [Value]) {
    for m in messages.iter_mut().filter(|m| m["role"] == "assistant") {
        if let Some(blocks) = m["content"].as_array_mut() {
            blocks.retain(|b| b["type"] != "thinking" && b["type"] != "redacted_thinking");
        }
    }
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

/// `reasoning_effort` (or an Anthropic-style `thinking` the client sent) → thinking, in
/// the mode the target takes.
fn thinking(body: &Map<String, Value>, caps: &Capabilities) -> Option<Thinking> {
    let adaptive = match caps.thinking {
        ThinkingMode::Adaptive => true,
        ThinkingMode::Manual => false,
        ThinkingMode::Effort | ThinkingMode::None => return None,
    };
    if let Some(t) = body.get("thinking").filter(|t| t.is_object()) {
        return match (t["type"].as_str(), adaptive) {
            (Some("enabled"), false) => t["budget_tokens"].as_u64().map(Thinking::Budget),
            (Some("enabled"), true) => Some(Thinking::Adaptive(
                match t["budget_tokens"].as_u64().unwrap_or(0) {
                    0..=2_048 => "low",
                    2_049..=8_192 => "medium",
                    _ => "high",
                },
            )),
            (Some("adaptive"), true) => Some(Thinking::Adaptive("high")),
            (Some("adaptive"), false) => Some(Thinking::Budget(24_576)),
            _ => None,
        };
    }
    let effort = body.get("reasoning_effort")?.as_str()?;
    let (effort_level, budget) = match effort {
        "minimal" => ("low", 1_024),
        "low" => ("low", 2_048),
        "medium" => ("medium", 8_192),
        "high" => ("high", 24_576),
        "xhigh" | "max" => ("high", 32_000),
        _ => return None, // "none" and unknown values: no thinking
    };
    Some(if adaptive {
        Thinking::Adaptive(effort_level)
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
    caps::tool_id(id, ToolIds::Anthropic).into_owned()
}

/// The thinking an assistant message carries back (`reasoning_details`, or LiteLLM's
/// `thinking_blocks`) as Anthropic blocks. Only blocks Anthropic signed survive: a
/// signature Keyway made up (`kw1:`) or none at all would be refused.
fn replayed_thinking(m: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let details = m["reasoning_details"]
        .as_array()
        .or_else(|| m["thinking_blocks"].as_array());
    for d in details.map(Vec::as_slice).unwrap_or(&[]) {
        match d["type"].as_str() {
            Some("reasoning.text") | Some("thinking") => {
                let sig = d["signature"].as_str().unwrap_or("");
                if sig.is_empty() || sig.starts_with(SYNTHETIC_SIGNATURE_PREFIX) {
                    continue;
                }
                let text = d["text"].as_str().or_else(|| d["thinking"].as_str());
                out.push(
                    json!({"type": "thinking", "thinking": text.unwrap_or(""), "signature": sig}),
                );
            }
            Some("reasoning.encrypted") | Some("redacted_thinking") => {
                if let Some(data) = d["data"].as_str().filter(|s| !s.is_empty()) {
                    out.push(json!({"type": "redacted_thinking", "data": data}));
                }
            }
            _ => {}
        }
    }
    out
}

/// Chat messages → (Anthropic `system` blocks, Anthropic messages), per the ordering rules:
/// system/developer hoisted; consecutive same-role turns merged; tool results answering
/// one assistant turn gathered into one user turn, results first.
fn messages(
    messages: Option<&Value>,
    ids: ToolIds,
) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
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
                let mut blocks = replayed_thinking(m);
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
                        "id": caps::tool_id(call["id"].as_str().unwrap_or(""), ids),
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
                let block = json!({"type": "tool_result", "tool_use_id": caps::tool_id(id, ids), "content": result});
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

/// An Anthropic message → an OpenAI `chat.completion`. With `json_tool`, the input of the
/// structured-output tool is the answer's content (and the answer ends with `stop`).
pub fn response(raw: &[u8], created: u64, json_tool: bool) -> Result<Bytes, serde_json::Error> {
    let msg: Value = serde_json::from_slice(raw)?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut details = Vec::new();
    let mut calls = Vec::new();
    let mut structured = false;
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
            Some("tool_use") if json_tool && block["name"] == JSON_TOOL => {
                text.push_str(&block["input"].to_string());
                structured = true;
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
    let has_calls = !calls.is_empty();
    if has_calls {
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
            "finish_reason": match (structured && !has_calls, msg["stop_reason"].as_str()) {
                (true, Some("tool_use")) => "stop",
                (_, reason) => finish_reason_from_anthropic(reason),
            },
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
