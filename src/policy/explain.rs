//! What the policy would do for a request right now, without sending anything: the
//! candidates in order, the key each would get, and the locks in force. Used by
//! `keyway explain`, policy fixtures and `/admin/explain`.

use std::sync::Arc;

use http::HeaderMap;
use serde::Serialize;

use super::{defaults, ConnRef, Policy, PolicyError, RequestInfo, RequestSource, RequestView};
use crate::config::Config;
use crate::format::ApiFormat;
use crate::keys::{KeyRegistry, Scopes};

/// A request to explain.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    pub model: String,
    pub client: String,
    pub format: ApiFormat,
    pub stream: bool,
    pub headers: HeaderMap,
}

impl ExplainRequest {
    pub fn view(&self) -> RequestView {
        RequestView(Arc::new(RequestInfo {
            model: self.model.clone(),
            format: self.format,
            stream: self.stream,
            client: self.client.clone(),
            headers: self.headers.clone(),
            max_tokens: None,
            input_tokens: 0,
        }))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CandidateReport {
    /// `provider/model`.
    pub target: String,
    /// Why this candidate would be skipped, if it would.
    pub skipped: Option<String>,
    /// `connection/key` that `select_key` picks, per connection in order.
    pub keys: Vec<String>,
    /// `identity`, or the translation the request would go through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// On a translated route: what the target model accepts, and which table entries said so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<crate::translate::caps::Resolved>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub model: String,
    pub policy: String,
    pub policy_hash: String,
    pub candidates: Vec<CandidateReport>,
    /// Hooks bound to a native function at load (no script call), and what runs instead.
    pub native_hooks: Vec<(&'static str, String)>,
    /// Active locks: scope, seconds left, reason.
    pub locks: Vec<(String, f64, String)>,
}

/// Runs `route` and, per candidate and connection, `select_key`; advances rotation state
/// like a real request would.
pub fn explain(
    policy: &Policy,
    config: &Config,
    keys: &KeyRegistry,
    req: &ExplainRequest,
) -> Result<Explanation, PolicyError> {
    let view = RequestSource::from(req.view());
    let quota = policy.quota();
    let candidates = policy.route(&view)?;
    let mut out = Vec::new();
    for c in &candidates {
        let model = c.spec.model_for(&req.model).to_string();
        let target = format!("{}/{model}", c.spec.provider);
        let Some(provider) = config.providers.iter().find(|p| p.id == c.spec.provider) else {
            out.push(CandidateReport {
                target,
                skipped: Some("unknown provider".into()),
                keys: vec![],
                via: None,
                capabilities: None,
            });
            continue;
        };
        let translation =
            match crate::translate::Translation::route(req.format, provider, c.spec.translate) {
                Ok(t) => t,
                Err(why) => {
                    out.push(CandidateReport {
                        target,
                        skipped: Some(format!("provider {why}")),
                        keys: vec![],
                        via: None,
                        capabilities: None,
                    });
                    continue;
                }
            };
        let via = Some(translation.map_or("identity", |t| t.label()));
        let capabilities = translation.map(|_| config.capabilities.resolve(provider, &model));
        if quota.is_locked(&Scopes::model(&provider.id, &model)) {
            out.push(CandidateReport {
                target,
                skipped: Some("model locked".into()),
                keys: vec![],
                via,
                capabilities,
            });
            continue;
        }
        let mut picks = Vec::new();
        for conn in provider
            .connections
            .iter()
            .filter(|k| c.connection.as_ref().is_none_or(|id| &k.id == id))
        {
            if quota.is_locked(conn.scope()) {
                picks.push(format!("{}: cooling down", conn.id));
                continue;
            }
            let pool = keys.pool(conn);
            let cv = ConnRef {
                conn,
                pool: &pool,
                model: &model,
                tried: &[],
            };
            let pick = match policy.select_key(&view, &cv) {
                Ok(p) => p,
                Err(PolicyError::Failed { .. }) => defaults::select_key(quota, &cv),
                Err(e) => return Err(e),
            };
            picks.push(match pick {
                Some(i) => format!("{}/{}", conn.id, conn.keys[i].id),
                None => format!("{}: no usable key", conn.id),
            });
        }
        out.push(CandidateReport {
            target,
            skipped: None,
            keys: picks,
            via,
            capabilities,
        });
    }
    let now = quota.now_ms();
    Ok(Explanation {
        model: req.model.clone(),
        policy: policy.source.to_string(),
        policy_hash: policy.hash.clone(),
        candidates: out,
        native_hooks: policy.native_hooks(),
        locks: quota
            .active_locks()
            .into_iter()
            .map(|(scope, l)| (scope, (l.until_ms - now) as f64 / 1000.0, l.reason))
            .collect(),
    })
}
