//! Anthropic Messages SSE (upstream) → OpenAI Chat Completions chunks (client), event by
//! event. Tool calls get dense OpenAI indexes (0, 1, 2 … over tool calls only, never the
//! Anthropic block index); thinking goes to `reasoning_content`, never `content`; usage
//! is accumulated (cache tokens counted into `prompt_tokens`) and sent as the final
//! `choices: []` chunk when the client asked for it; the stream ends with `[DONE]`. An
//! upstream `error` event, or an end before `message_stop`, ends the client's stream with
//! an error chunk and never with a finish chunk that claims success.
//!
//! Driven as a [`super::StreamTranslator`]: upstream bytes in (any chunking), client bytes
//! out.

use bytes::{BufMut, BytesMut};

use super::sse::{EventMachine, EventReader};
use serde_json::{json, Value};

use super::{chat_usage_from_anthropic, finish_reason_from_anthropic};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call and its OpenAI index; `args` once any argument bytes were sent.
    Tool {
        index: usize,
        args: bool,
    },
    /// The structured-output tool: its input is the answer's content.
    JsonAnswer,
    /// Server tools and anything unknown: ignored.
    Other,
}

/// The state of one translated stream.
pub struct AnthropicToChat {
    events: EventReader,
    /// The start of every chunk (id, created, model) once known.
    prefix: Option<String>,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Structured output is emulated with [`super::JSON_TOOL`].
    json_tool: bool,
    /// The answer came as the structured-output tool's input.
    json_answered: bool,
    role_sent: bool,
    blocks: Vec<Block>,
    next_tool: usize,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
    stop_reason: Option<String>,
    finished: bool,
}

impl AnthropicToChat {
    /// `include_usage`: the client sent `stream_options.include_usage: true`;
    /// `json_tool`: structured output is emulated with [`super::JSON_TOOL`].
    pub fn new(created: u64, include_usage: bool, json_tool: bool) -> Self {
        Self {
            events: EventReader::default(),
            prefix: None,
            id: String::new(),
            model: String::new(),
            created,
            include_usage,
            json_tool,
            json_answered: false,
            role_sent: false,
            blocks: Vec::new(),
            next_tool: 0,
            input: 0,
            output: 0,
            cache_read: 0,
            cache_creation: 0,
            stop_reason: None,
            finished: false,
        }
    }

    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        if data.is_empty() {
            return; // comments, pings without data
        }
        // Most events are deltas: read them into borrowed fields, not a whole `Value`.
        if let Ok(fast) = serde_json::from_slice::<FastDelta<'_>>(data) {
            if fast.kind == "content_block_delta" {
                let d = &fast.delta;
                let delta = Delta {
                    kind: &d.kind,
                    text: d.text.as_deref(),
                    thinking: d.thinking.as_deref(),
                    signature: d.signature.as_deref(),
                    partial_json: d.partial_json.as_deref(),
                };
                return self.delta(fast.index, &delta, out);
            }
        }
        let Ok(ev) = serde_json::from_slice::<Value>(data) else {
            return self.fail("upstream sent an event that is not JSON", out);
        };
        match ev["type"].as_str().unwrap_or("") {
            "message_start" => {
                let m = &ev["message"];
                self.id = m["id"].as_str().unwrap_or("").to_string();
                self.model = m["model"].as_str().unwrap_or("").to_string();
                self.prefix = None;
                self.usage(&m["usage"]);
                self.role(out);
            }
            "content_block_start" => {
                let b = &ev["content_block"];
                let block = match b["type"].as_str() {
                    Some("text") => Block::Text,
                    Some("thinking") => Block::Thinking,
                    Some("tool_use") if self.json_tool && b["name"] == super::JSON_TOOL => {
                        self.json_answered = true;
                        Block::JsonAnswer
                    }
                    Some("tool_use") => {
                        let index = self.next_tool;
                        self.next_tool += 1;
                        self.role(out);
                        self.chunk(
                            out,
                            json!({"tool_calls": [{"index": index, "id": b["id"], "type": "function",
                                "function": {"name": b["name"], "arguments": ""}}]}),
                            None,
                        );
                        Block::Tool { index, args: false }
                    }
                    _ => Block::Other,
                };
                let at = ev["index"].as_u64().unwrap_or(self.blocks.len() as u64) as usize;
                if self.blocks.len() <= at {
                    self.blocks.resize(at + 1, Block::Other);
                }
                self.blocks[at] = block;
                if let (Block::Text, Some(t)) = (block, b["text"].as_str()) {
                    if !t.is_empty() {
                        self.chunk(out, json!({"content": t}), None);
                    }
                }
            }
            "content_block_delta" => {
                let d = &ev["delta"];
                let delta = Delta {
                    kind: d["type"].as_str().unwrap_or(""),
                    text: d["text"].as_str(),
                    thinking: d["thinking"].as_str(),
                    signature: d["signature"].as_str(),
                    partial_json: d["partial_json"].as_str(),
                };
                self.delta(ev["index"].as_u64().unwrap_or(0) as usize, &delta, out);
            }
            "content_block_stop" => {
                let at = ev["index"].as_u64().unwrap_or(0) as usize;
                if let Some(Block::Tool { index, args: false }) = self.blocks.get(at).copied() {
                    // A call without arguments still needs valid JSON for them.
                    self.chunk(
                        out,
                        json!({"tool_calls": [{"index": index, "function": {"arguments": "{}"}}]}),
                        None,
                    );
                    self.blocks[at] = Block::Tool { index, args: true };
                }
            }
            "message_delta" => {
                if let Some(r) = ev["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(r.to_string());
                }
                self.usage(&ev["usage"]);
            }
            "message_stop" => {
                self.role(out);
                let finish = match self.stop_reason.as_deref() {
                    Some("tool_use") if self.json_answered && self.next_tool == 0 => "stop",
                    reason => finish_reason_from_anthropic(reason),
                };
                self.chunk(out, json!({}), Some(finish));
                if self.include_usage {
                    let usage = chat_usage_from_anthropic(
                        self.input,
                        self.output,
                        self.cache_read,
                        self.cache_creation,
                    );
                    let chunk = json!({"id": self.id, "object": "chat.completion.chunk",
                        "created": self.created, "model": self.model, "choices": [], "usage": usage});
                    sse(out, &chunk);
                }
                out.put_slice(b"data: [DONE]\n\n");
                self.finished = true;
            }
            "error" => {
                let message = ev["error"]["message"]
                    .as_str()
                    .unwrap_or("upstream stream error")
                    .to_string();
                let kind = ev["error"]["type"].as_str().unwrap_or("api_error");
                self.error(out, &message, kind);
            }
            _ => {} // ping and future event types
        }
    }

    /// One `content_block_delta`, for the block at Anthropic index `at`.
    fn delta(&mut self, at: usize, d: &Delta<'_>, out: &mut BytesMut) {
        match (self.blocks.get(at).copied(), d.kind) {
            (Some(Block::Text), "text_delta") => {
                if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                    self.role(out);
                    self.string_delta(out, "content", t);
                }
            }
            (Some(Block::Thinking), "thinking_delta") => {
                if let Some(t) = d.thinking.filter(|t| !t.is_empty()) {
                    self.role(out);
                    self.string_delta(out, "reasoning_content", t);
                }
            }
            (Some(Block::Thinking), "signature_delta") => {
                if let Some(s) = d.signature {
                    self.chunk(
                        out,
                        json!({"reasoning_details": [{"type": "reasoning.text", "text": "", "signature": s}]}),
                        None,
                    );
                }
            }
            (Some(Block::JsonAnswer), "input_json_delta") => {
                if let Some(p) = d.partial_json.filter(|p| !p.is_empty()) {
                    self.role(out);
                    self.string_delta(out, "content", p);
                }
            }
            (Some(Block::Tool { index, .. }), "input_json_delta") => {
                if let Some(p) = d.partial_json.filter(|p| !p.is_empty()) {
                    self.blocks[at] = Block::Tool { index, args: true };
                    self.chunk(
                        out,
                        json!({"tool_calls": [{"index": index, "function": {"arguments": p}}]}),
                        None,
                    );
                }
            }
            _ => {}
        }
    }

    /// A chunk whose delta is one string field, written without building a `Value`
    /// (the same bytes [`chunk`](Self::chunk) would write).
    fn string_delta(&mut self, out: &mut BytesMut, field: &str, value: &str) {
        if self.prefix.is_none() {
            let mut p = String::from("{\"id\":");
            p.push_str(&Value::from(self.id.as_str()).to_string());
            p.push_str(",\"object\":\"chat.completion.chunk\",\"created\":");
            p.push_str(&self.created.to_string());
            p.push_str(",\"model\":");
            p.push_str(&Value::from(self.model.as_str()).to_string());
            p.push_str(",\"choices\":[{\"index\":0,\"delta\":");
            self.prefix = Some(p);
        }
        out.put_slice(b"data: ");
        out.put_slice(self.prefix.as_deref().unwrap_or("").as_bytes());
        out.put_slice(b"{\"");
        out.put_slice(field.as_bytes());
        out.put_slice(b"\":");
        let _ = serde_json::to_writer((&mut *out).writer(), value);
        out.put_slice(b"},\"logprobs\":null,\"finish_reason\":null}]");
        if self.include_usage {
            out.put_slice(b",\"usage\":null");
        }
        out.put_slice(b"}\n\n");
    }

    /// Usage fields present in `u` overwrite what is known (`output_tokens` is cumulative).
    fn usage(&mut self, u: &Value) {
        let set = |field: &mut u64, key: &str| {
            if let Some(v) = u[key].as_u64() {
                *field = v;
            }
        };
        set(&mut self.input, "input_tokens");
        set(&mut self.output, "output_tokens");
        set(&mut self.cache_read, "cache_read_input_tokens");
        set(&mut self.cache_creation, "cache_creation_input_tokens");
    }

    fn role(&mut self, out: &mut BytesMut) {
        if !self.role_sent {
            self.role_sent = true;
            self.chunk(out, json!({"role": "assistant", "content": ""}), None);
        }
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        sse(out, &chunk);
    }

    fn fail(&mut self, message: &str, out: &mut BytesMut) {
        self.error(out, message, "api_error");
    }

    fn error(&mut self, out: &mut BytesMut, message: &str, kind: &str) {
        let code = match kind {
            "overloaded_error" => "overloaded",
            "rate_limit_error" => "rate_limit_exceeded",
            _ => "stream_interrupted",
        };
        sse(
            out,
            &json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}}),
        );
        out.put_slice(b"data: [DONE]\n\n");
        self.finished = true;
    }
}

impl EventMachine for AnthropicToChat {
    fn reader(&mut self) -> &mut EventReader {
        &mut self.events
    }
    fn is_done(&self) -> bool {
        self.finished
    }
    fn on_event(&mut self, data: &[u8], out: &mut BytesMut) {
        self.event(data, out);
    }
    /// `message_stop` never came: the client gets an error, not a success.
    fn on_end(&mut self, out: &mut BytesMut) {
        self.fail("upstream stream ended before message_stop", out);
    }
    fn on_fail(&mut self, message: &str, out: &mut BytesMut) {
        self.fail(message, out);
    }
}

/// A `content_block_delta` as the machine needs it, from a borrowed or a `Value` parse.
struct Delta<'a> {
    kind: &'a str,
    text: Option<&'a str>,
    thinking: Option<&'a str>,
    signature: Option<&'a str>,
    partial_json: Option<&'a str>,
}

/// The borrowed parse of a delta event (strings with escapes are decoded into `Cow`s).
#[derive(serde::Deserialize)]
struct FastDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    index: usize,
    #[serde(borrow)]
    delta: FastInner<'a>,
}

#[derive(serde::Deserialize)]
struct FastInner<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<std::borrow::Cow<'a, str>>,
}

fn sse(out: &mut BytesMut, v: &Value) {
    super::sse::write_event(out, None, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::StreamTranslator;
    use proptest::prelude::*;

    /// Pieces of real Anthropic events, junk, and framing, in any order.
    fn upstream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\n"[..]),
            Just(&b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"[..]),
            Just(&b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n"[..]),
            Just(&b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n"[..]),
            Just(&b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n"[..]),
            Just(&b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":9,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n"[..]),
            Just(&b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n"[..]),
            Just(&b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n"[..]),
            Just(&b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"[..]),
            Just(&b"event: ping\ndata: {\"type\":\"ping\"}\n\n"[..]),
            Just(&b"data: {not json\n\n"[..]),
            Just(&b"\r\n\r\n"[..]),
            Just(&b": comment\n"[..]),
        ];
        (
            prop::collection::vec(piece, 0..20),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<bool>(),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(pieces, junk, add_junk, cut)| {
                let mut bytes = pieces.concat();
                if add_junk {
                    bytes.extend_from_slice(&junk);
                }
                let keep = cut.index(bytes.len() + 1);
                bytes.truncate(keep); // streams break anywhere
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever arrives, and however it is cut, the client gets well-formed chunks and
        /// exactly one terminal `[DONE]`, last; chunking never changes a byte.
        #[test]
        fn any_upstream_ends_in_one_well_formed_terminal(
            input in upstream(),
            split in any::<prop::sample::Index>(),
            include_usage in any::<bool>(),
        ) {
            let run = |cut: usize| {
                let mut m = AnthropicToChat::new(1, include_usage, false);
                let mut out = m.push(&input[..cut]).to_vec();
                out.extend_from_slice(&m.push(&input[cut..]));
                out.extend_from_slice(&m.finish());
                prop_assert!(m.is_finished());
                Ok(out)
            };
            let whole = run(input.len())?;
            let split = run(split.index(input.len() + 1))?;
            prop_assert_eq!(&whole, &split);
            let text = String::from_utf8(whole).expect("client bytes are UTF-8");
            let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
            prop_assert_eq!(events.last().copied(), Some("data: [DONE]"));
            prop_assert_eq!(events.iter().filter(|e| **e == "data: [DONE]").count(), 1);
            for e in &events[..events.len() - 1] {
                let data = e.strip_prefix("data: ").expect("only data lines");
                prop_assert!(serde_json::from_str::<Value>(data).is_ok(), "{}", data);
            }
        }
    }
}
