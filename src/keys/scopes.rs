//! Names of lock scopes. A scope string names what a lock or streak covers:
//! `key:<provider>/<connection>/<key>`, the same plus `@<model>` for key+model,
//! `conn:<provider>/<connection>`, and `model:<provider>/<model>`.

use crate::config::{ApiKey, Connection};

/// Builds scope names.
pub struct Scopes;

impl Scopes {
    pub fn key(conn: &Connection, key: &ApiKey) -> String {
        format!("key:{}/{}/{}", conn.provider, conn.id, key.id)
    }

    pub fn key_model(conn: &Connection, key: &ApiKey, model: &str) -> String {
        format!("key:{}/{}/{}@{}", conn.provider, conn.id, key.id, model)
    }

    pub fn connection(conn: &Connection) -> String {
        format!("conn:{}/{}", conn.provider, conn.id)
    }

    pub fn model(provider: &str, model: &str) -> String {
        format!("model:{provider}/{model}")
    }
}
