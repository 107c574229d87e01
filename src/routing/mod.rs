//! Routing: which provider/model targets may serve a requested model name.
//!
//! Resolution order: `provider/model` for a configured provider passes straight through;
//! then the policy's route table (exact aliases, then wildcard patterns ranked by
//! specificity); then the providers whose config `models` list the name, in config order.

mod pattern;
mod table;

use std::sync::Arc;

use crate::config::Provider;
use crate::format::ApiFormat;

pub use pattern::Pattern;
pub use table::{RouteTable, TargetSpec};

/// One place a request may be sent: a provider and the model name to ask it for.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// The model name sent upstream (may differ from the requested name).
    pub model: String,
    /// Restricts the attempt to one connection of the provider.
    pub connection: Option<String>,
    /// Set when the provider does not speak the client's format and a translator does.
    pub translation: Option<crate::translate::Translation>,
}

impl Target {
    /// `provider/model`, as shown in traces and error bodies.
    pub fn label(&self) -> String {
        // Not `format!`: this runs per attempt, and the formatter costs more than the copy.
        let mut s = String::with_capacity(self.provider.id.len() + 1 + self.model.len());
        s.push_str(&self.provider.id);
        s.push('/');
        s.push_str(&self.model);
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// 404: no provider serves this model name.
    #[error("model `{0}` is not served here; ask for `provider/model` or a model listed in the config (GET /v1/models)")]
    UnknownModel(String),
    /// 400: the model exists, but only on providers that neither speak the request's
    /// format nor may be reached by translation.
    #[error("model `{model}` is served by provider `{provider}`, which {why}")]
    FormatMismatch {
        model: String,
        provider: String,
        why: String,
    },
}

/// A candidate as a policy names it: a target spec plus an optional connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub spec: TargetSpec,
    pub connection: Option<String>,
}

/// The native route resolution: route table plus the config's providers.
#[derive(Debug, Default)]
pub struct Router {
    table: RouteTable,
    providers: Vec<Arc<Provider>>,
    /// Model names the config or route table name: the only ones used as metric labels.
    known: crate::FastSet<String>,
}

impl Router {
    pub fn new(table: RouteTable, providers: Vec<Arc<Provider>>) -> Self {
        let mut known: crate::FastSet<String> = table.names().map(str::to_string).collect();
        known.extend(providers.iter().flat_map(|p| p.models.iter().cloned()));
        Self {
            table,
            providers,
            known,
        }
    }

    /// `model` if the config or route table names it, else `other`: metric labels stay
    /// bounded whatever clients send.
    pub fn model_label<'a>(&self, model: &'a str) -> &'a str {
        if self.known.contains(model) {
            return model;
        }
        if let Some((p, m)) = model.split_once('/') {
            if self.known.contains(m) && self.provider(p).is_some() {
                return model;
            }
        }
        "other"
    }

    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// The ordered fallback chain for `model`, as `provider/model` strings' specs.
    pub fn resolve(&self, model: &str) -> Vec<TargetSpec> {
        if let Some((prefix, rest)) = model.split_once('/') {
            if !rest.is_empty() && self.provider(prefix).is_some() {
                return vec![TargetSpec {
                    provider: prefix.to_string(),
                    model: Some(rest.to_string()),
                    translate: true,
                }];
            }
        }
        if let Some((_, chain)) = self.table.lookup(model) {
            return chain.to_vec();
        }
        self.providers
            .iter()
            .filter(|p| p.models.iter().any(|m| m == model))
            .map(|p| TargetSpec {
                provider: p.id.clone(),
                model: None,
                translate: true,
            })
            .collect()
    }

    /// Turns candidates into targets that speak `format`, dropping unknown providers.
    pub fn targets(
        &self,
        candidates: &[Candidate],
        format: ApiFormat,
        requested: &str,
    ) -> Result<Vec<Target>, RouteError> {
        let mut first_mismatch = None;
        let mut out = Vec::with_capacity(candidates.len());
        for c in candidates {
            let Some(provider) = self.provider(&c.spec.provider) else {
                tracing::warn!(provider = %c.spec.provider, "policy named an unknown provider; skipped");
                continue;
            };
            // Identity when the provider speaks the format; a translator when one exists
            // and neither the provider nor the route forbids it.
            let translation =
                match crate::translate::Translation::route(format, provider, c.spec.translate) {
                    Ok(t) => t,
                    Err(why) => {
                        first_mismatch.get_or_insert_with(|| RouteError::FormatMismatch {
                            model: requested.to_string(),
                            provider: provider.id.clone(),
                            why,
                        });
                        continue;
                    }
                };
            out.push(Target {
                provider: provider.clone(),
                model: c.spec.model_for(requested).to_string(),
                connection: c.connection.clone(),
                translation,
            });
        }
        if out.is_empty() {
            return Err(
                first_mismatch.unwrap_or_else(|| RouteError::UnknownModel(requested.to_string()))
            );
        }
        Ok(out)
    }
}
