use super::*;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("keyway.toml"), text)
}

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8787"

[auth]
allow_unauthenticated = true

[[provider]]
id = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1/"
models = ["gpt-4o"]

[[provider.connection]]
id = "main"
keys = ["env:KEYWAY_TEST_CFG_KEY", { id = "second", key = "env:KEYWAY_TEST_CFG_KEY", weight = 3 }]
"#;

fn with_env() {
    std::env::set_var("KEYWAY_TEST_CFG_KEY", "sk-test-config-secret-000000000");
}

#[test]
fn parses_a_full_config_into_the_internal_shape() {
    with_env();
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8787".parse().unwrap());
    assert!(c.auth.allow_unauthenticated);
    let p = &c.providers[0];
    assert_eq!(p.kind, ProviderKind::OpenAi);
    assert_eq!(p.base_url.path(), "/v1");
    assert_eq!(
        p.base_url
            .join("/chat/completions", None)
            .unwrap()
            .to_string(),
        "https://api.openai.com/v1/chat/completions"
    );
    let keys = &p.connections[0].keys;
    assert_eq!(keys[0].id, "KEYWAY_TEST_CFG_KEY");
    assert_eq!((keys[1].id.as_str(), keys[1].weight), ("second", 3));
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.server.workers, limits::default_workers());
}

#[test]
fn serving_threads_are_bounded_and_located() {
    let with = |n: &str| MINIMAL.replace("listen = ", &format!("workers = {n}\nlisten = "));
    with_env();
    assert_eq!(parse_str(&with("3")).unwrap().server.workers, 3);
    let e = expect_err(&with("0"));
    assert!(e.starts_with("keyway.toml:3:"), "{e}");
    assert!(e.contains("workers must be between 1 and 1024"), "{e}");
}

fn expect_err(text: &str) -> String {
    with_env();
    parse_str(text).unwrap_err().to_string()
}

#[test]
fn unknown_fields_are_located() {
    let e = expect_err(&MINIMAL.replace("models =", "modles ="));
    assert!(e.starts_with("keyway.toml:12:1:"), "{e}");
    assert!(e.contains("modles"), "{e}");
}

#[test]
fn literal_secrets_are_refused_with_location() {
    let e = expect_err(&MINIMAL.replace("\"env:KEYWAY_TEST_CFG_KEY\", {", "\"sk-literal\", {"));
    assert!(e.starts_with("keyway.toml:16:9:"), "{e}");
    assert!(e.contains("env:NAME"), "{e}");
    assert!(!e.contains("sk-literal"), "{e}");
}

#[test]
fn missing_env_vars_name_the_variable() {
    let e =
        expect_err(&MINIMAL.replace("\"env:KEYWAY_TEST_CFG_KEY\", {", "\"env:KEYWAY_NOPE\", {"));
    assert!(e.contains("KEYWAY_NOPE") && e.contains("not set"), "{e}");
}

#[test]
fn bad_urls_and_duplicates_are_errors() {
    let e = expect_err(&MINIMAL.replace("https://api.openai.com/v1/", "ftp://x"));
    assert!(
        e.starts_with("keyway.toml:11:12:") && e.contains("http://"),
        "{e}"
    );
    let dup = format!(
        "{MINIMAL}\n{}",
        &MINIMAL[MINIMAL.find("[[provider]]").unwrap()..]
    );
    let e = expect_err(&dup);
    assert!(e.contains("duplicate provider id `openai`"), "{e}");
}

#[test]
fn auth_must_be_explicit() {
    let e = expect_err(&MINIMAL.replace("allow_unauthenticated = true", ""));
    assert!(e.contains("allow_unauthenticated = true"), "{e}");
}

mod properties {
    use super::super::parse;
    use proptest::prelude::*;
    use std::path::Path;

    const VALID: &str = r#"
[server]
listen = "127.0.0.1:8787"
max_header_bytes = 16384
[timeouts]
idle = "30s"
[auth]
allow_unauthenticated = true
[[provider]]
id = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
models = ["gpt-4o"]
[[provider.connection]]
id = "main"
keys = ["file:/nonexistent/key"]
"#;

    fn assert_located(text: &str) -> Result<(), TestCaseError> {
        if let Err(e) = parse(Path::new("k.toml"), text) {
            // Every error names the file and a line and column inside the text.
            let loc = e.location.strip_prefix("k.toml:");
            prop_assert!(loc.is_some(), "{}", e);
            let mut nums = loc.unwrap().split(':').map(|n| n.parse::<usize>());
            let line = nums.next().and_then(Result::ok);
            prop_assert!(
                line.is_some_and(|l| l >= 1 && l <= text.lines().count().max(1) + 1),
                "{}",
                e
            );
            prop_assert!(
                nums.next().and_then(Result::ok).is_some_and(|c| c >= 1),
                "{}",
                e
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            assert_located(&text)?;
        }

        /// A valid config with bytes inserted, removed or replaced somewhere.
        #[test]
        fn mutated_configs_never_panic_and_errors_are_located(
            at in any::<prop::sample::Index>(),
            cut in 0usize..20,
            insert in "[\\[\\]=\"{},.a-z0-9 \\n#:-]{0,20}",
        ) {
            let mut text = VALID.to_string();
            let mut i = at.index(text.len());
            while !text.is_char_boundary(i) { i -= 1; }
            let mut end = (i + cut).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(i..end, &insert);
            assert_located(&text)?;
        }
    }
}

#[test]
fn formats_and_capabilities_are_validated_with_locations() {
    use crate::format::{ApiFormat, Family};
    with_env();
    let c = parse_str(&MINIMAL.replace(
        "models = [\"gpt-4o\"]",
        "models = [\"gpt-4o\"]\nformats = [\"chat\", \"messages\"]\ntranslate = false",
    ))
    .unwrap();
    let p = &c.providers[0];
    assert!(p.speaks(ApiFormat::AnthropicMessages) && p.speaks(ApiFormat::OpenAiChat));
    assert!(!p.formats.speaks(Family::Responses));
    assert!(!p.translate);
    let e = expect_err(&MINIMAL.replace(
        "models = [\"gpt-4o\"]",
        "models = [\"gpt-4o\"]\nformats = [\"chat\", \"anthropic\"]",
    ));
    assert!(e.starts_with("keyway.toml:13:20:"), "{e}");
    assert!(e.contains("unknown format `anthropic`"), "{e}");
    let cap = |body: &str| format!("{MINIMAL}\n[[capability]]\n{body}\n");
    let c = parse_str(&cap(
        "models = \"gpt-4o*\"\nmax_output_tokens = 1000\nthinking = \"effort\"",
    ))
    .unwrap();
    let r = c.capabilities.resolve(&c.providers[0], "gpt-4o-mini");
    assert_eq!(r.caps.max_output_tokens, Some(1000));
    assert_eq!(r.from[0], "gpt-4o* (keyway.toml:19)");
    let e = expect_err(&cap(
        "models = \"x\"\nprovider = \"nope\"\nmax_output_tokens = 1",
    ));
    assert!(e.contains("no provider `nope` is configured"), "{e}");
    let e = expect_err(&cap("models = \"x\""));
    assert!(e.contains("sets nothing"), "{e}");
    let e = expect_err(&cap("models = \"x\"\nthinking = \"deep\""));
    assert!(
        e.contains("keyway.toml:20") && e.contains("adaptive"),
        "{e}"
    );
}

#[test]
fn keys_become_sensitive_auth_headers_at_load() {
    with_env();
    let c = parse_str(MINIMAL).unwrap();
    let k = &c.providers[0].connections[0].keys[0];
    assert_eq!(k.auth.as_bytes(), b"Bearer sk-test-config-secret-000000000");
    assert!(k.auth.is_sensitive());
    assert!(
        !format!("{k:?}").contains("sk-test-config-secret"),
        "Debug never shows the key"
    );
    std::env::set_var("KEYWAY_TEST_CFG_BAD_KEY", "sk-bad\nkey");
    let e = expect_err(&MINIMAL.replace(
        "env:KEYWAY_TEST_CFG_KEY\", {",
        "env:KEYWAY_TEST_CFG_BAD_KEY\", {",
    ));
    assert!(e.contains("cannot carry"), "{e}");
    assert!(!e.contains("sk-bad"), "the error never shows the key: {e}");
}

#[test]
fn state_backends_are_validated_without_connecting() {
    with_env();
    assert!(matches!(
        parse_str(MINIMAL).unwrap().state,
        StateConfig::Memory
    ));
    std::env::set_var(
        "KEYWAY_TEST_REDIS_URL",
        "redis://:hunter2-redis-password@10.0.0.9:6380/2",
    );
    // Nothing listens there: `keyway check` must still pass.
    let text = format!(
        "{MINIMAL}\n[state]\nbackend = \"redis\"\nurl = \"env:KEYWAY_TEST_REDIS_URL\"\nnamespace = \"prod\"\nsync_interval = \"50ms\"\n"
    );
    let c = parse_str(&text).unwrap();
    let StateConfig::Redis(r) = &c.state else {
        panic!("redis backend")
    };
    assert_eq!(r.namespace, "prod");
    assert_eq!(r.sync_interval, Duration::from_millis(50));
    assert_eq!(r.timeout, Duration::from_millis(250));
    let shown = r.display_url();
    assert!(
        shown.starts_with("redis://10.0.0.9:6380/2 (credentials fp "),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!format!("{c:?}").contains("hunter2"));

    let state_at = text.lines().position(|l| l.starts_with("backend")).unwrap() + 1;
    let e = expect_err(&text.replace("backend = \"redis\"", "backend = \"etcd\""));
    assert!(e.starts_with(&format!("keyway.toml:{state_at}:")), "{e}");
    assert!(e.contains("\"memory\" or \"redis\""), "{e}");
    let e = expect_err(&text.replace("url = \"env:KEYWAY_TEST_REDIS_URL\"\n", ""));
    assert!(e.contains("needs `url"), "{e}");
    let e = expect_err(&text.replace("env:KEYWAY_TEST_REDIS_URL", "redis://localhost"));
    assert!(
        e.contains("env:NAME"),
        "a literal URL is refused like any secret: {e}"
    );
    let e = expect_err(&text.replace("\"50ms\"", "\"1ms\""));
    assert!(
        e.contains("sync_interval must be between 10ms and 5s"),
        "{e}"
    );
    let e = expect_err(&text.replace("backend = \"redis\"", "backend = \"memory\""));
    assert!(
        e.contains("`url` applies to `backend = \"redis\"` only"),
        "{e}"
    );
    let e = expect_err(&format!(
        "{MINIMAL}\n[state]\nbackend = \"memory\"\nrequired = true\n"
    ));
    assert!(
        e.contains("`required` applies to `backend = \"redis\"` only"),
        "{e}"
    );
    let required = parse_str(&format!("{text}required = true\n")).unwrap();
    assert!(matches!(
        required.state,
        StateConfig::Redis(RedisState { required: true, .. })
    ));
    std::env::set_var("KEYWAY_TEST_REDIS_URL", "http://:hunter2@nowhere");
    let e = expect_err(&text);
    assert!(
        e.contains("Redis URL is not usable") && !e.contains("hunter2"),
        "{e}"
    );
}

#[test]
fn joined_upstream_uris_are_the_same_with_and_without_the_cached_paths() {
    for base in [
        "https://api.openai.com/v1",
        "http://127.0.0.1:9/",
        "http://h:1",
    ] {
        let uri: Uri = base.parse().unwrap();
        let path = uri.path().trim_end_matches('/').to_string();
        let b = BaseUrl::new(
            uri.scheme().unwrap().clone(),
            uri.authority().unwrap().clone(),
            path.clone(),
            http::HeaderValue::from_str(uri.authority().unwrap().as_str()).unwrap(),
        );
        for f in crate::format::ApiFormat::ALL {
            let p = f.upstream_path();
            let origin = format!("{}://{}", uri.scheme().unwrap(), uri.authority().unwrap());
            assert_eq!(
                b.join(p, None).unwrap().to_string(),
                format!("{origin}{path}{p}")
            );
            assert_eq!(
                b.join(p, Some("beta=true")).unwrap().to_string(),
                format!("{origin}{path}{p}?beta=true")
            );
        }
        // A path no format uses is built, not looked up.
        assert_eq!(
            b.join("/models", None).unwrap().path(),
            format!("{path}/models")
        );
    }
}

#[test]
fn lock_scope_names_are_built_once_at_load_and_match_the_scope_format() {
    with_env();
    let c = parse_str(MINIMAL).unwrap();
    for p in &c.providers {
        for conn in &p.connections {
            assert_eq!(conn.scope(), crate::keys::Scopes::connection(conn));
            assert_eq!(conn.scope(), format!("conn:{}/{}", p.id, conn.id));
            for k in &conn.keys {
                assert_eq!(k.scope(), crate::keys::Scopes::key(conn, k));
                assert_eq!(k.scope(), format!("key:{}/{}/{}", p.id, conn.id, k.id));
            }
        }
    }
}
