//! OpenAI Chat Completions chunks (upstream) → Anthropic Messages SSE (client): the Claude
//! Code path. Content blocks are strictly sequential with indexes 0, 1, 2 …; a delta is
//! only ever sent for a block that was started; one upstream tool call is one `tool_use`
//! block however its fragments arrive (arguments before the name are held; name and
//! arguments in one chunk both count). A new block stops the one before it, so fragments
//! a provider sends for an earlier call after a later one started are dropped (no real
//! provider seen interleaves them). The tail
//! (`message_delta` with stop reason and usage, `message_stop`) waits for both the finish
//! reason and the usage chunk, or for `[DONE]`. An upstream error, or an end without
//! a finish, gives `event: error` and no `message_stop`.

use bytes::{BufMut, BytesMut};

use super::sse::{EventMachine, EventReader};
use serde_json::{json, Value};

use super::messages_chat::{anthropic_usage, reasoning_text, stop_reason};

/// Marks signatures Keyway made up for thinking that came without one (strict SDK types
/// want a string); they are never sent to Anthropic.
pub const SYNTHETIC_SIGNATURE: &str = "kw1:unsigned";

/// The prefix of every signature Keyway makes up; such thinking never goes to Anthropic.
pub const SYNTHETIC_SIGNATURE_PREFIX: &str = "kw1:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text(usize),
    Thinking(usize),
}

#[derive(Debug, Default)]
struct Tool {
    id: Option<String>,
    name: Option<String>,
    /// Arguments seen before the name, held until the block can start.
    held: String,
    /// The block index once started; `closed` once stopped.
    block: Option<usize>,
    closed: bool,
}

pub struct OpenAiToAnthropic {
    events: EventReader,
    model: String,
    started: bool,
    next_block: usize,
    open: Open,
    tools: Vec<Tool>,
    finish: Option<String>,
    usage: Option<Value>,
    finished: bool,
}

impl OpenAiToAnthropic {
    /// `model`: the name the client asked for, echoed in `message_start`.
    pub fn new(model: &str) -> Self {
        Self {
            events: EventReader::default(),
            model: model.to_string(),
            started: false,
            next_block: 0,
            open: Open::None,
            tools: Vec::new(),
            finish: None,
            usage: None,
            finished: false,
        }
    }

    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        if data.is_empty() {
            return;
        }
        if data == b"[DONE]" {
            return self.tail(out);
        }
        // Most chunks carry only text for the open text block: read them into borrowed
        // fields and write the event directly; anything else takes the general path.
        if let (Open::Text(i), Ok(fast)) =
            (self.open, serde_json::from_slice::<FastChunk<'_>>(data))
        {
            if let Some(text) = fast.text_only() {
                if !text.is_empty() {
                    out.put_slice(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":");
                    out.put_slice(i.to_string().as_bytes());
                    out.put_slice(b",\"delta\":{\"type\":\"text_delta\",\"text\":");
                    let _ = serde_json::to_writer((&mut *out).writer(), text);
                    out.put_slice(b"}}\n\n");
                }
                return;
            }
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return self.fail("upstream sent a chunk that is not JSON", out);
        };
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = err["message"].as_str().unwrap_or("upstream stream error");
            return self.fail(message, out);
        }
        self.start(&chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return self.maybe_tail(out);
        };
        let delta = &choice["delta"];
        // One chunk may carry reasoning, text, tool calls and the finish: in that order.
        if let Some(r) = reasoning_text(delta) {
            self.append(true, r, out);
        }
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.append(false, t, out);
        }
        for call in delta["tool_calls"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            self.tool_fragment(call, out);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish.get_or_insert_with(|| f.to_string());
        }
        self.maybe_tail(out);
    }

    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let id = chunk["id"].as_str().unwrap_or("");
        let id = if id.starts_with("msg_") {
            id.to_string()
        } else {
            format!("msg_{id}")
        };
        emit(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        );
    }

    /// Appends `piece` to the open thinking (or text) block, first opening one, after
    /// stopping whatever else is open, when it is not already.
    fn append(&mut self, thinking: bool, piece: &str, out: &mut BytesMut) {
        let i = match (self.open, thinking) {
            (Open::Thinking(i), true) | (Open::Text(i), false) => i,
            _ => {
                self.close_open(out);
                self.close_tools(out);
                let i = self.block();
                let block = if thinking {
                    json!({"type": "thinking", "thinking": "", "signature": ""})
                } else {
                    json!({"type": "text", "text": ""})
                };
                emit(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i, "content_block": block}),
                );
                self.open = if thinking {
                    Open::Thinking(i)
                } else {
                    Open::Text(i)
                };
                i
            }
        };
        let delta = if thinking {
            json!({"type": "thinking_delta", "thinking": piece})
        } else {
            json!({"type": "text_delta", "text": piece})
        };
        emit(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": i, "delta": delta}),
        );
    }

    fn block(&mut self) -> usize {
        let i = self.next_block;
        self.next_block += 1;
        i
    }

    fn tool_fragment(&mut self, call: &Value, out: &mut BytesMut) {
        let k = call["index"].as_u64().unwrap_or(self.tools.len() as u64) as usize;
        if k > 1024 {
            return; // no real response has that many calls in one turn
        }
        if self.tools.len() <= k {
            self.tools.resize_with(k + 1, Tool::default);
        }
        if let Some(id) = call["id"].as_str().filter(|s| !s.is_empty()) {
            self.tools[k].id.get_or_insert_with(|| id.to_string());
        }
        if let Some(name) = call["function"]["name"].as_str().filter(|s| !s.is_empty()) {
            self.tools[k].name.get_or_insert_with(|| name.to_string());
        }
        let args = call["function"]["arguments"].as_str().unwrap_or("");
        if self.tools[k].block.is_none() {
            self.tools[k].held.push_str(args);
            let Some(name) = self.tools[k].name.clone() else {
                return; // held until the name arrives
            };
            // Blocks are strictly sequential: whatever is open stops first.
            self.close_open(out);
            self.close_tools(out);
            let i = self.block();
            let id = super::chat_messages::tool_id(
                self.tools[k]
                    .id
                    .as_deref()
                    .unwrap_or(&format!("toolu_kw_{k}")),
            );
            emit(
                out,
                "content_block_start",
                &json!({"type": "content_block_start", "index": i,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            );
            self.tools[k].block = Some(i);
            let held = std::mem::take(&mut self.tools[k].held);
            if !held.is_empty() {
                emit(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": held}}),
                );
            }
        } else if let (Some(i), false) = (self.tools[k].block, self.tools[k].closed) {
            if !args.is_empty() {
                emit(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
    }

    fn close_open(&mut self, out: &mut BytesMut) {
        match self.open {
            Open::None => {}
            Open::Text(i) => stop(out, i),
            Open::Thinking(i) => {
                emit(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "signature_delta", "signature": SYNTHETIC_SIGNATURE}}),
                );
                stop(out, i);
            }
        }
        self.open = Open::None;
    }

    fn close_tools(&mut self, out: &mut BytesMut) {
        let mut open: Vec<usize> = self
            .tools
            .iter_mut()
            .filter(|t| !t.closed)
            .filter_map(|t| {
                t.block.inspect(|_| {
                    t.closed = true;
                })
            })
            .collect();
        open.sort_unstable();
        for i in open {
            stop(out, i);
        }
    }

    /// The tail goes out once finish and usage are both known (usage comes after finish).
    fn maybe_tail(&mut self, out: &mut BytesMut) {
        if self.finish.is_some() && self.usage.is_some() {
            self.tail(out);
        }
    }

    fn tail(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        if self.finish.is_none() {
            return self.fail("upstream stream ended before its finish", out);
        }
        self.start(&json!({}), out);
        self.close_open(out);
        self.close_tools(out);
        let saw_tool = self.tools.iter().any(|t| t.block.is_some());
        let usage = self
            .usage
            .as_ref()
            .map(anthropic_usage)
            .unwrap_or_else(|| anthropic_usage(&Value::Null));
        emit(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish.as_deref(), saw_tool), "stop_sequence": null},
            "usage": usage}),
        );
        emit(out, "message_stop", &json!({"type": "message_stop"}));
        self.finished = true;
    }

    fn fail(&mut self, message: &str, out: &mut BytesMut) {
        self.close_open(out);
        self.close_tools(out);
        emit(
            out,
            "error",
            &json!({"type": "error",
            "error": {"type": "api_error", "message": message}}),
        );
        self.finished = true;
    }
}

/// The borrowed parse of a chunk, enough to tell a text-only one.
#[derive(serde::Deserialize)]
struct FastChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<FastChoice<'a>>,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct FastChoice<'a> {
    #[serde(borrow)]
    delta: FastDelta<'a>,
    #[serde(default)]
    finish_reason: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct FastDelta<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    reasoning_content: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    reasoning: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
}

impl FastChunk<'_> {
    /// The text, when text is all this chunk carries.
    fn text_only(&self) -> Option<&str> {
        let [c] = self.choices.as_slice() else {
            return None;
        };
        let d = &c.delta;
        let other = self.usage.is_some()
            || self.error.is_some()
            || c.finish_reason.is_some()
            || d.reasoning_content.is_some()
            || d.reasoning.is_some()
            || d.tool_calls.is_some();
        if other {
            return None;
        }
        d.content.as_deref()
    }
}

impl EventMachine for OpenAiToAnthropic {
    fn reader(&mut self) -> &mut EventReader {
        &mut self.events
    }
    fn is_done(&self) -> bool {
        self.finished
    }
    fn on_event(&mut self, data: &[u8], out: &mut BytesMut) {
        self.event(data, out);
    }
    /// A finish reason without `[DONE]` is still a whole answer; no finish is an error.
    fn on_end(&mut self, out: &mut BytesMut) {
        if self.finish.is_some() {
            self.tail(out);
        } else {
            self.fail("upstream stream ended before its finish", out);
        }
    }
    fn on_fail(&mut self, message: &str, out: &mut BytesMut) {
        self.fail(message, out);
    }
}

fn stop(out: &mut BytesMut, i: usize) {
    emit(
        out,
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": i}),
    );
}

fn emit(out: &mut BytesMut, event: &str, data: &Value) {
    super::sse::write_event(out, Some(event), data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn upstream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"r\"}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\",\"function\":{\"name\":\"g\"}}]}}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"[..]),
            Just(&b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n"[..]),
            Just(&b"data: {\"error\":{\"message\":\"boom\"}}\n\n"[..]),
            Just(&b"data: [DONE]\n\n"[..]),
            Just(&b"data: {nope\n\n"[..]),
            Just(&b": keep-alive\n\n"[..]),
        ];
        crate::translate::truncated_stream(piece)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever arrives and however it is cut: named events whose name is their type,
        /// blocks started before their deltas and strictly one after another, and exactly
        /// one terminal (`message_stop` or `error`), last. Chunking never changes a byte.
        #[test]
        fn any_upstream_gives_a_well_formed_anthropic_stream(
            input in upstream(),
            split in any::<prop::sample::Index>(),
        ) {
            let run = |cut: usize| {
                crate::translate::run_split(&mut OpenAiToAnthropic::new("m"), &input, cut)
            };
            let whole = run(input.len());
            prop_assert_eq!(&whole, &run(split.index(input.len() + 1)));
            let text = String::from_utf8(whole).unwrap();
            let mut open: Option<u64> = None;
            let mut next = 0u64;
            let mut terminals = 0;
            let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
            for (n, e) in events.iter().enumerate() {
                let (head, data) = e.split_once('\n').unwrap();
                let name = head.strip_prefix("event: ").unwrap();
                let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                prop_assert_eq!(v["type"].as_str(), Some(name));
                match name {
                    "content_block_start" => {
                        prop_assert_eq!(open, None);
                        prop_assert_eq!(v["index"].as_u64(), Some(next));
                        open = Some(next);
                        next += 1;
                    }
                    "content_block_delta" => prop_assert_eq!(v["index"].as_u64(), open),
                    "content_block_stop" => {
                        prop_assert_eq!(v["index"].as_u64(), open);
                        open = None;
                    }
                    "message_stop" | "error" => {
                        terminals += 1;
                        prop_assert_eq!(n, events.len() - 1, "terminal not last");
                        prop_assert_eq!(open, None, "a block left open");
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(terminals, 1);
        }
    }
}
