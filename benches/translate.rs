//! Format translation cost: a typical ~4 KB chat request with 5 tools, each way, and one
//! streamed chunk through each stream state machine. Identity routes never run any of it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use keyway::config::ProviderKind;
use keyway::translate::caps::CapabilityTable;
use keyway::translate::{TargetInfo, TranslatedRequest, Translation};
use serde_json::json;

fn tools_openai() -> serde_json::Value {
    json!((0..5)
        .map(|i| json!({"type": "function", "function": {
        "name": format!("tool_{i}"),
        "description": "Looks something up. ".repeat(6),
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "what to look up"},
            "limit": {"type": "integer"}}, "required": ["query"]}}}))
        .collect::<Vec<_>>())
}

fn chat_request() -> Vec<u8> {
    let filler = "Some context for the model to consider. ".repeat(12);
    serde_json::to_vec(&json!({
        "model": "claude-sonnet-4-5", "stream": true, "max_tokens": 1024, "temperature": 0.3,
        "tools": tools_openai(),
        "messages": [
            {"role": "system", "content": filler},
            {"role": "user", "content": filler},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "tool_0", "arguments": "{\"query\":\"a\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "tool_1", "arguments": "{\"query\":\"b\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": filler},
            {"role": "tool", "tool_call_id": "call_2", "content": "short"},
            {"role": "user", "content": "and now?"}]
    }))
    .unwrap()
}

fn messages_request() -> Vec<u8> {
    let filler = "Some context for the model to consider. ".repeat(12);
    let tools: Vec<_> = (0..5).map(|i| json!({"name": format!("tool_{i}"),
        "description": "Looks something up. ".repeat(6),
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}))
        .collect();
    serde_json::to_vec(&json!({
        "model": "deepseek-chat", "stream": true, "max_tokens": 1024,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=2;"},
                   {"type": "text", "text": filler, "cache_control": {"type": "ephemeral"}}],
        "tools": tools,
        "messages": [
            {"role": "user", "content": filler},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "tool_0", "input": {"query": "a"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": filler},
                {"type": "text", "text": "and now?"}]}]
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let chat = chat_request();
    let messages = messages_request();
    eprintln!(
        "request sizes: chat {} B, messages {} B",
        chat.len(),
        messages.len()
    );
    // Per request: the capability lookup and the body mapping, as the attempt loop does.
    let table = CapabilityTable::default();
    let translate = |tr: Translation, body: &[u8], model: &str, kind: ProviderKind| {
        let caps = table.resolve_for("p", kind, model);
        let info = TargetInfo {
            model,
            kind,
            caps: &caps.caps,
        };
        tr.request(body, &info).unwrap()
    };
    c.bench_function("translate/request chat->messages (5 tools)", |b| {
        b.iter(|| {
            translate(
                Translation::ChatToMessages,
                black_box(&chat),
                "claude-sonnet-4-5",
                ProviderKind::Anthropic,
            )
        })
    });
    c.bench_function("translate/request messages->chat (5 tools)", |b| {
        b.iter(|| {
            translate(
                Translation::MessagesToChat,
                black_box(&messages),
                "deepseek-chat",
                ProviderKind::OpenAiCompatible,
            )
        })
    });
    let streamed = TranslatedRequest {
        include_usage: true,
        ..Default::default()
    };
    let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    let delta = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello there, \"}}\n\n";
    c.bench_function("translate/stream chunk anthropic->chat", |b| {
        let mut m = Translation::ChatToMessages.stream(0, &streamed, "c");
        m.push(start);
        b.iter(|| m.push(black_box(delta)))
    });
    let chunk = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there, \"},\"finish_reason\":null}]}\n\n";
    c.bench_function("translate/stream chunk chat->anthropic", |b| {
        let mut m = Translation::MessagesToChat.stream(0, &streamed, "c");
        m.push(chunk);
        b.iter(|| m.push(black_box(chunk)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
