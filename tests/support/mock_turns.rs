//! The turn the mock model plays. Like a real model it calls tools only when the client
//! offered some and the conversation does not end with their results: then it calls the
//! first two offered tools at once (one if only one was offered), with arguments built
//! from each tool's schema. It thinks first when asked to (Anthropic `thinking`, OpenAI
//! `reasoning_effort`). Otherwise it answers with text.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

/// Tool names the mock calls in preference when a client offers them (`--call-tools`): a
/// coding client offers dozens, and the mock should pick a harmless one (`Read`, not
/// `Agent`). Unset: the first two offered.
static PREFERRED: OnceLock<Vec<String>> = OnceLock::new();

/// Sets the preferred tools, once per process.
pub fn prefer_tools(names: Vec<String>) {
    let _ = PREFERRED.set(names);
}

/// The tools to call among those offered (name and schema, in offer order).
fn pick<T: Clone>(offered: &[(String, T)]) -> Vec<(String, T)> {
    if let Some(pref) = PREFERRED.get().filter(|p| !p.is_empty()) {
        let chosen: Vec<_> = offered
            .iter()
            .filter(|(n, _)| pref.contains(n))
            .take(2)
            .cloned()
            .collect();
        if !chosen.is_empty() {
            return chosen;
        }
    }
    offered.iter().take(2).cloned().collect()
}

pub struct Turn {
    pub thinking: Option<String>,
    pub text: String,
    pub calls: Vec<Call>,
}

pub struct Call {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub args: String,
}

/// Plans the reply to `request` on `path`; `text` is what a plain answer would say.
pub fn plan(path: &str, request: &Value, text: String) -> Turn {
    let anthropic = path.ends_with("/messages");
    if path.ends_with("/responses") {
        return plan_responses(request, text);
    }
    let thinking = if anthropic {
        matches!(
            request["thinking"]["type"].as_str(),
            Some("enabled" | "adaptive")
        )
    } else {
        request["reasoning_effort"]
            .as_str()
            .is_some_and(|e| e != "none")
    };
    let thinking = thinking.then(|| "Thinking it over.".to_string());
    let offered: Vec<(String, Value)> = request["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|t| {
            let (name, schema) = if anthropic {
                if t.get("type").is_some_and(|ty| ty != "custom") {
                    return None; // server tools run at Anthropic, not in the model's reply
                }
                (t["name"].as_str()?, &t["input_schema"])
            } else {
                (
                    t["function"]["name"].as_str()?,
                    &t["function"]["parameters"],
                )
            };
            Some((name.to_string(), schema.clone()))
        })
        .collect();
    let answered = last_is_tool_result(request, anthropic);
    if offered.is_empty() || answered {
        return Turn {
            thinking,
            text: if answered {
                format!("Done: {text}")
            } else {
                text
            },
            calls: Vec::new(),
        };
    }
    let prefix = if anthropic {
        "toolu_mock_"
    } else {
        "call_mock_"
    };
    let calls = pick(&offered)
        .iter()
        .enumerate()
        .map(|(i, (name, schema))| Call {
            id: format!("{prefix}{i}"),
            name: name.clone(),
            args: arguments(schema).to_string(),
        })
        .collect();
    Turn {
        thinking,
        text: "Let me check.".into(),
        calls,
    }
}

fn last_is_tool_result(request: &Value, anthropic: bool) -> bool {
    let Some(last) = request["messages"].as_array().and_then(|m| m.last()) else {
        return false;
    };
    if anthropic {
        last["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    } else {
        last["role"] == "tool"
    }
}

/// Arguments that satisfy a JSON schema's required properties (all properties when none
/// are marked required).
fn arguments(schema: &Value) -> Value {
    let props = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let required: Vec<String> = match schema["required"].as_array() {
        Some(r) => r
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        None => props.keys().cloned().collect(),
    };
    let mut out = Map::new();
    for name in required {
        let value = match props.get(&name).and_then(|p| p["type"].as_str()) {
            Some("integer" | "number") => json!(1),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => json!(format!("mock {name}")),
        };
        out.insert(name, value);
    }
    Value::Object(out)
}

/// The turn for a Responses request: function and custom tools, tool results as
/// `function_call_output` / `custom_tool_call_output` items.
fn plan_responses(request: &Value, text: String) -> Turn {
    let thinking = request["reasoning"]["effort"]
        .as_str()
        .is_some_and(|e| e != "none")
        .then(|| "Thinking it over.".to_string());
    let offered: Vec<(String, (Value, bool))> = request["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|t| match t["type"].as_str() {
            Some("function") => Some((
                t["name"].as_str()?.to_string(),
                (t["parameters"].clone(), false),
            )),
            Some("custom") => Some((t["name"].as_str()?.to_string(), (Value::Null, true))),
            _ => None,
        })
        .collect();
    let answered = request["input"]
        .as_array()
        .and_then(|i| i.last())
        .is_some_and(|l| {
            matches!(
                l["type"].as_str(),
                Some("function_call_output" | "custom_tool_call_output")
            )
        });
    if offered.is_empty() || answered {
        return Turn {
            thinking,
            text: if answered {
                format!("Done: {text}")
            } else {
                text
            },
            calls: Vec::new(),
        };
    }
    let calls = pick(&offered)
        .iter()
        .enumerate()
        .map(|(i, (name, (schema, custom)))| Call {
            id: format!("call_mock_{i}"),
            name: name.clone(),
            args: if *custom {
                // A custom tool's input is free text (the mock marks it to tell it apart).
                format!("custom:mock input for {name}")
            } else {
                arguments(schema).to_string()
            },
        })
        .collect();
    Turn {
        thinking,
        text: "Let me check.".into(),
        calls,
    }
}
