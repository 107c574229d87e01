//! Routing: which provider/model targets may serve a requested model name. This is the
//! native default; the policy engine calls into the same resolution.

use std::sync::Arc;

use crate::config::{Provider, ProviderKind};
use crate::format::ApiFormat;

/// One place a request may be sent: a provider and the model name to ask it for.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// The model name sent upstream (may differ from the requested name).
    pub model: String,
}

impl Target {
    /// `provider/model`, as shown in traces and error bodies.
    pub fn label(&self) -> String {
        format!("{}/{}", self.provider.id, self.model)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// 404: no provider serves this model name.
    #[error("model `{0}` is not served here; ask for `provider/model` or a model listed in the config (GET /v1/models)")]
    UnknownModel(String),
    /// 400: the model exists, but only on providers that do not speak the request's format.
    #[error("model `{model}` is served by provider `{provider}` ({kind}), which does not accept {format} requests")]
    FormatMismatch {
        model: String,
        provider: String,
        kind: ProviderKind,
        format: ApiFormat,
    },
}

/// Resolves `model` to targets in preference order: `provider/model` picks that provider;
/// a bare name goes to the providers that list it, in config order.
pub fn resolve(
    providers: &[Arc<Provider>],
    format: ApiFormat,
    model: &str,
) -> Result<Vec<Target>, RouteError> {
    let mut found: Vec<Target> = Vec::new();
    if let Some((prefix, rest)) = model.split_once('/') {
        if let Some(p) = providers.iter().find(|p| p.id == prefix) {
            if !rest.is_empty() {
                found.push(Target {
                    provider: p.clone(),
                    model: rest.to_string(),
                });
            }
        }
    }
    if found.is_empty() {
        found.extend(
            providers
                .iter()
                .filter(|p| p.models.iter().any(|m| m == model))
                .map(|p| Target {
                    provider: p.clone(),
                    model: model.to_string(),
                }),
        );
    }
    let Some(first) = found.first() else {
        return Err(RouteError::UnknownModel(model.to_string()));
    };
    let mismatch = RouteError::FormatMismatch {
        model: model.to_string(),
        provider: first.provider.id.clone(),
        kind: first.provider.kind,
        format,
    };
    found.retain(|t| format.spoken_by(t.provider.kind));
    if found.is_empty() {
        return Err(mismatch);
    }
    Ok(found)
}
