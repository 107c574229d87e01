//! Hooks bound to natives at load: a hook whose whole body only delegates to one of
//! Keyway's native functions runs that function directly, with no Rhai call. Results are
//! identical by construction: Keyway's static modules cannot be shadowed (no `import`, no
//! module resolver) and scripts cannot override the views' getters, so the script could
//! only ever have done what the native does. The shipped `on_outcome` is recognised by its
//! normalized text (comments and whitespace aside, the same as the built-in policy's) and
//! runs as [`super::defaults::on_outcome`], which a test keeps in step with the script.
//!
//! `keyway explain` and `/admin/state` say which hooks run natively.

use rhai::AST;

use crate::keys::Rotation;

/// Which hooks run natively.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elided {
    /// `route(req) { routes::resolve(req.model) }`.
    pub route: bool,
    /// `select_key(req, conn) { keys::<rotator>(conn) }`.
    pub select_key: Option<Rotation>,
    /// `on_outcome` is the shipped default's.
    pub on_outcome: bool,
}

impl Elided {
    /// Finds the delegating hooks of `ast` (compiled from `text`); `builtin_on_outcome` is
    /// the normalized body of the shipped `on_outcome`. Bodies are compared as token text
    /// (comments and whitespace outside strings removed), so only an exact delegation
    /// qualifies; anything else runs as written.
    pub fn find(ast: &AST, text: &str, builtin_on_outcome: Option<&str>) -> Self {
        let mut out = Elided::default();
        for f in ast.iter_fn_def() {
            let params: Vec<&str> = f.params.iter().map(|p| p.as_str()).collect();
            let Some(body) = source_between(text, f.body.start_position(), f.body.end_position())
            else {
                continue;
            };
            let body = normalize(&body);
            match (f.name.as_str(), params.as_slice()) {
                ("route", [req]) => out.route = body == format!("{{routes::resolve({req}.model)}}"),
                ("select_key", [_, conn]) => {
                    out.select_key = Rotation::ALL
                        .into_iter()
                        .find(|r| body == format!("{{keys::{}({conn})}}", r.as_str()));
                }
                ("on_outcome", [_, _, _]) => {
                    out.on_outcome = builtin_on_outcome.is_some_and(|b| b == body);
                }
                _ => {}
            }
        }
        out
    }

    /// `(hook, what runs instead)` for each elided hook, for explain and `/admin/state`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.route {
            out.push(("route", "routes::resolve".to_string()));
        }
        if let Some(r) = self.select_key {
            out.push(("select_key", format!("keys::{}", r.as_str())));
        }
        if self.on_outcome {
            out.push(("on_outcome", "the shipped default, natively".to_string()));
        }
        out
    }
}

/// The text between two positions (lines and columns are 1-based).
fn source_between(text: &str, start: rhai::Position, end: rhai::Position) -> Option<String> {
    let offset = |p: rhai::Position| -> Option<usize> {
        let (line, col) = (p.line()?, p.position()?);
        let mut at = 0;
        for (i, l) in text.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                return Some(at + l.char_indices().nth(col - 1).map_or(l.len(), |(b, _)| b));
            }
            at += l.len();
        }
        None
    };
    let (a, b) = (offset(start)?, offset(end)?);
    text.get(a..=b.min(text.len().saturating_sub(1)))
        .map(str::to_string)
}

/// Text without comments and without whitespace outside string literals: two bodies that
/// normalize alike are the same program. (A mismatch only means the script runs.)
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' | '\'' => {
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            out.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
            }
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// The normalized body of `on_outcome` in the built-in policy.
pub fn builtin_on_outcome(engine: &rhai::Engine) -> Option<String> {
    let text = super::BUILTIN_POLICY;
    let ast = engine.compile(text).ok()?;
    let body = ast
        .iter_fn_def()
        .find(|f| f.name == "on_outcome")
        .and_then(|f| source_between(text, f.body.start_position(), f.body.end_position()));
    body.map(|s| normalize(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(text: &str) -> Elided {
        let mut engine = rhai::Engine::new();
        engine.set_max_expr_depths(0, 0);
        let ast = engine.compile(text).unwrap();
        let builtin = builtin_on_outcome(&engine);
        assert!(builtin.as_deref().is_some_and(|b| b.starts_with('{')));
        Elided::find(&ast, text, builtin.as_deref())
    }

    #[test]
    fn only_exact_delegations_are_bound_to_natives() {
        let shipped = find(super::super::BUILTIN_POLICY);
        assert_eq!(
            shipped,
            Elided {
                route: true,
                select_key: Some(Rotation::RoundRobin),
                on_outcome: true
            }
        );
        let renamed = find(
            "fn route(r) { /* all */ routes::resolve( r.model ) }\nfn select_key(q, c) {\n  keys::weighted(c) // weights\n}",
        );
        assert!(renamed.route);
        assert_eq!(renamed.select_key, Some(Rotation::Weighted));
        assert!(!renamed.on_outcome);
        // Anything more than the delegation runs as written.
        for text in [
            "fn route(req) { routes::resolve(req.model); }",
            "fn route(req) { routes::resolve(req.client) }",
            "fn route(req) { log::info(\"x\"); routes::resolve(req.model) }",
            "fn route(req) { let m = req.model; routes::resolve(m) }",
            "fn route(req) { if req.stream { routes::resolve(req.model) } else { [] } }",
        ] {
            assert!(!find(text).route, "{text}");
        }
        let edited =
            super::super::BUILTIN_POLICY.replace("60, \"rate_limited\"", "61, \"rate_limited\"");
        assert!(
            !find(&edited).on_outcome,
            "a changed default is a custom policy"
        );
        let spaced = super::super::BUILTIN_POLICY
            .replace("\"rate_limited\");", "\"rate_limited\" );  // same");
        assert!(
            find(&spaced).on_outcome,
            "comments and spacing do not matter"
        );
        let string_edit = super::super::BUILTIN_POLICY.replace("\"invalid\"", "\"in valid\"");
        assert!(!find(&string_edit).on_outcome, "spaces inside strings do");
    }
}
