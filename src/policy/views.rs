//! The read-only objects scripts see: `req`, `attempt`, `outcome` and `conn`. Each is a
//! cheap `Arc` handle; getters copy out small values.

use std::sync::{Arc, OnceLock};

use http::HeaderMap;
use rhai::{Dynamic, Engine, ImmutableString, INT};

use crate::config::{ApiKey, Connection};
use crate::format::ApiFormat;
use crate::keys::{KeyPool, Scopes};
use crate::outcome::Outcome;

/// What a policy knows about the client request.
#[derive(Debug)]
pub struct RequestInfo {
    pub model: String,
    pub format: ApiFormat,
    pub stream: bool,
    pub client: String,
    pub headers: HeaderMap,
    pub max_tokens: Option<u64>,
    /// Rough input size: body bytes / 4.
    pub input_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct RequestView(pub Arc<RequestInfo>);

/// The request as the policy entry points take it: the model, which the native hooks
/// read, and a [`RequestView`] built the first time a script needs one. With every hook
/// native (the shipped policy) no view is built, so the success path copies no names and
/// allocates nothing for it.
pub struct RequestSource<'a> {
    model: &'a str,
    make: Option<&'a (dyn Fn() -> RequestInfo + Sync)>,
    view: OnceLock<RequestView>,
}

impl<'a> RequestSource<'a> {
    /// A request for `model` whose view `make` builds when a script asks.
    pub fn lazy(model: &'a str, make: &'a (dyn Fn() -> RequestInfo + Sync)) -> Self {
        Self {
            model,
            make: Some(make),
            view: OnceLock::new(),
        }
    }

    /// The model the client asked for.
    pub fn model(&self) -> &str {
        match self.view.get() {
            Some(v) if self.make.is_none() => &v.0.model,
            _ => self.model,
        }
    }

    /// The view scripts get, built on first use.
    pub fn view(&self) -> &RequestView {
        self.view.get_or_init(|| {
            let make = self.make.expect("a ready source holds its view");
            RequestView(Arc::new(make()))
        })
    }
}

impl From<RequestView> for RequestSource<'static> {
    /// A source whose view already exists (tests, `keyway explain`).
    fn from(view: RequestView) -> Self {
        Self {
            model: "",
            make: None,
            view: OnceLock::from(view),
        }
    }
}

/// One attempt as the native hooks read it: where it goes and with which key, borrowed
/// from the request (no reference count is touched, nothing is allocated); the scope
/// names are formatted on first use (the success path of the default policy reads none of
/// them unless a failure streak exists). A scripted hook gets an owned [`AttemptInfo`].
#[derive(Debug)]
pub struct AttemptRef<'a> {
    pub number: u32,
    pub conn: &'a Arc<Connection>,
    /// Index of the key in `conn.keys`.
    key: usize,
    pub model: &'a str,
    key_model_scope: OnceLock<String>,
    model_scope: OnceLock<String>,
}

impl<'a> AttemptRef<'a> {
    /// Attempt `number` of a request, with key `key` (an index into `conn.keys`) of
    /// `conn`, asking for `model`.
    ///
    /// # Panics
    /// If `key` is not an index of `conn.keys` (selection only returns valid indexes).
    pub fn new(number: u32, conn: &'a Arc<Connection>, key: usize, model: &'a str) -> Self {
        assert!(key < conn.keys.len(), "key index out of range");
        Self {
            number,
            conn,
            key,
            model,
            key_model_scope: OnceLock::new(),
            model_scope: OnceLock::new(),
        }
    }

    pub fn key(&self) -> &ApiKey {
        &self.conn.keys[self.key]
    }

    pub fn key_scope(&self) -> &str {
        self.key().scope()
    }

    pub fn key_model_scope(&self) -> &str {
        self.key_model_scope
            .get_or_init(|| Scopes::key_model(self.conn, self.key(), self.model))
    }

    pub fn conn_scope(&self) -> &str {
        self.conn.scope()
    }

    pub fn model_scope(&self) -> &str {
        self.model_scope
            .get_or_init(|| Scopes::model(&self.conn.provider, self.model))
    }

    /// The attempt as scripts get it.
    pub fn view(&self) -> AttemptView {
        AttemptView(Arc::new(AttemptInfo {
            number: self.number,
            conn: self.conn.clone(),
            key: self.key,
            model: self.model.into(),
        }))
    }
}

/// One attempt, owned, as a scripted hook gets it (see [`AttemptRef`]).
#[derive(Debug)]
pub struct AttemptInfo {
    pub number: u32,
    pub conn: Arc<Connection>,
    key: usize,
    pub model: Arc<str>,
}

impl AttemptInfo {
    /// The borrowed form, which names the scopes.
    pub fn borrowed(&self) -> AttemptRef<'_> {
        AttemptRef::new(self.number, &self.conn, self.key, &self.model)
    }

    pub fn key(&self) -> &ApiKey {
        &self.conn.keys[self.key]
    }
}

#[derive(Debug, Clone)]
pub struct AttemptView(pub Arc<AttemptInfo>);

#[derive(Debug, Clone)]
pub struct OutcomeView(pub Arc<Outcome>);

/// A connection as `select_key` sees it, with what the native rotators need.
#[derive(Debug, Clone)]
pub struct ConnView {
    pub conn: Arc<Connection>,
    pub pool: Arc<KeyPool>,
    /// The model this attempt asks for (key+model locks apply to it).
    pub model: Arc<str>,
    /// Keys already tried in this request; rotators skip them.
    pub tried: Arc<[usize]>,
}

impl ConnView {
    pub fn as_ref(&self) -> ConnRef<'_> {
        ConnRef {
            conn: &self.conn,
            pool: &self.pool,
            model: &self.model,
            tried: &self.tried,
        }
    }
}

/// [`ConnView`] borrowed: what the policy entry points and the native rotators take. A
/// script gets an owned view made from it ([`ConnRef::to_view`]); the native path clones
/// no handle (these `Arc`s are shared by every serving thread, so each clone and drop
/// is a write to a cache line the other cores read) and allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct ConnRef<'a> {
    pub conn: &'a Arc<Connection>,
    pub pool: &'a Arc<KeyPool>,
    pub model: &'a str,
    pub tried: &'a [usize],
}

impl ConnRef<'_> {
    pub fn to_view(&self) -> ConnView {
        ConnView {
            conn: self.conn.clone(),
            pool: self.pool.clone(),
            model: Arc::from(self.model),
            tried: Arc::from(self.tried),
        }
    }
}

fn header(h: &HeaderMap, name: &str) -> Dynamic {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map_or(Dynamic::UNIT, |s| Dynamic::from(ImmutableString::from(s)))
}

fn opt_int(v: Option<u64>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |n| {
        Dynamic::from(n.min(INT::MAX as u64) as INT)
    })
}

pub fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<RequestView>("Request")
        .register_get("model", |r: &mut RequestView| r.0.model.clone())
        .register_get("endpoint", |r: &mut RequestView| {
            r.0.format.as_str().to_string()
        })
        .register_get("format", |r: &mut RequestView| {
            r.0.format.family().as_str().to_string()
        })
        .register_get("stream", |r: &mut RequestView| r.0.stream)
        .register_get("client", |r: &mut RequestView| r.0.client.clone())
        .register_get("max_tokens", |r: &mut RequestView| opt_int(r.0.max_tokens))
        .register_get("input_tokens", |r: &mut RequestView| {
            r.0.input_tokens as INT
        })
        .register_fn("header", |r: &mut RequestView, name: &str| {
            // Client credentials are never visible to scripts.
            if name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("x-api-key")
            {
                Dynamic::UNIT
            } else {
                header(&r.0.headers, name)
            }
        });
    engine
        .register_type_with_name::<AttemptView>("Attempt")
        .register_get("number", |a: &mut AttemptView| a.0.number as INT)
        .register_get("provider", |a: &mut AttemptView| a.0.conn.provider.clone())
        .register_get("connection", |a: &mut AttemptView| a.0.conn.id.clone())
        .register_get("model", |a: &mut AttemptView| a.0.model.to_string())
        .register_get("target", |a: &mut AttemptView| {
            format!("{}/{}", a.0.conn.provider, a.0.model)
        })
        .register_get("key", |a: &mut AttemptView| a.0.key().id.clone())
        .register_get("fingerprint", |a: &mut AttemptView| {
            a.0.key().secret.fingerprint().to_string()
        })
        .register_get("key_scope", |a: &mut AttemptView| {
            a.0.borrowed().key_scope().to_string()
        })
        .register_get("key_model_scope", |a: &mut AttemptView| {
            a.0.borrowed().key_model_scope().to_string()
        })
        .register_get("conn_scope", |a: &mut AttemptView| {
            a.0.borrowed().conn_scope().to_string()
        })
        .register_get("model_scope", |a: &mut AttemptView| {
            a.0.borrowed().model_scope().to_string()
        });
    engine
        .register_type_with_name::<OutcomeView>("Outcome")
        .register_get("class", |o: &mut OutcomeView| {
            o.0.class.as_str().to_string()
        })
        .register_get("status", |o: &mut OutcomeView| {
            o.0.status.map_or(0, INT::from)
        })
        .register_get("retry_after", |o: &mut OutcomeView| {
            o.0.retry_after_ms
                .map_or(Dynamic::UNIT, |ms| Dynamic::from_float(ms as f64 / 1000.0))
        })
        .register_get("daily", |o: &mut OutcomeView| o.0.daily)
        .register_get("remaining_requests", |o: &mut OutcomeView| {
            opt_int(o.0.remaining_requests)
        })
        .register_get("remaining_tokens", |o: &mut OutcomeView| {
            opt_int(o.0.remaining_tokens)
        })
        .register_get("message", |o: &mut OutcomeView| o.0.message.clone())
        .register_fn("header", |o: &mut OutcomeView, name: &str| {
            header(&o.0.headers, name)
        });
    engine
        .register_type_with_name::<ConnView>("Connection")
        .register_get("provider", |c: &mut ConnView| c.conn.provider.clone())
        .register_get("id", |c: &mut ConnView| c.conn.id.clone())
        .register_get("name", |c: &mut ConnView| c.conn.name())
        .register_get("model", |c: &mut ConnView| c.model.to_string())
        .register_get("keys", |c: &mut ConnView| {
            c.conn
                .keys
                .iter()
                .map(|k| Dynamic::from(k.id.clone()))
                .collect::<rhai::Array>()
        });
}
