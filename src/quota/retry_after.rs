//! How long an upstream asked us to wait: `Retry-After` (seconds or HTTP date),
//! `x-ratelimit-reset-*` (OpenAI's Go-style durations such as `6m0s`, `1.5s`, `20ms`),
//! Anthropic's RFC 3339 `anthropic-ratelimit-*-reset`, and common body hints
//! ("try again in 20s", `"retryDelay": "36s"`).

use std::time::UNIX_EPOCH;

use http::HeaderMap;

/// The wait the upstream asked for, in milliseconds, from headers then body.
pub fn retry_after_ms(headers: &HeaderMap, body: &str, now_ms: u64) -> Option<u64> {
    from_headers(headers, now_ms).or_else(|| from_body(body))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn from_headers(headers: &HeaderMap, now_ms: u64) -> Option<u64> {
    if let Some(v) = header(headers, "retry-after-ms") {
        if let Ok(ms) = v.parse::<f64>() {
            return finite_ms(ms);
        }
    }
    if let Some(v) = header(headers, "retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            return finite_ms(secs * 1000.0);
        }
        if let Ok(t) = httpdate::parse_http_date(v) {
            let at = t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
            return Some(at.saturating_sub(now_ms));
        }
    }
    // OpenAI: reset of whichever limit is exhausted; if unclear, the later one.
    let reset =
        |kind: &str| header(headers, &format!("x-ratelimit-reset-{kind}")).and_then(go_duration_ms);
    let remaining = |kind: &str| {
        header(headers, &format!("x-ratelimit-remaining-{kind}"))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let openai = match (remaining("requests"), remaining("tokens")) {
        (Some(0), _) => reset("requests"),
        (_, Some(0)) => reset("tokens"),
        _ => reset("requests").max(reset("tokens")),
    };
    if openai.is_some() {
        return openai;
    }
    // Anthropic: RFC 3339 reset instants.
    [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ]
    .iter()
    .filter_map(|n| header(headers, n))
    .filter_map(|v| humantime::parse_rfc3339_weak(v.trim_end_matches('Z')).ok())
    .filter_map(|t| t.duration_since(UNIX_EPOCH).ok())
    .map(|d| (d.as_millis() as u64).saturating_sub(now_ms))
    .max()
}

fn finite_ms(ms: f64) -> Option<u64> {
    (ms.is_finite() && ms >= 0.0).then(|| ms.ceil() as u64)
}

/// Go duration syntax as OpenAI sends it: `1h2m3.5s`, `6m0s`, `20ms`, `0.5s`.
pub fn go_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" | "" => 1_000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    finite_ms(total)
}

/// "try again in 20s", "retry after 30 seconds", "Please retry in 1.5s", `"retryDelay": "36s"`.
fn from_body(body: &str) -> Option<u64> {
    let lower = body.to_ascii_lowercase();
    for marker in [
        "try again in",
        "retry after",
        "retry in",
        "\"retrydelay\":",
        "retry_after\":",
        "retry-after:",
    ] {
        let Some(pos) = lower.find(marker) else {
            continue;
        };
        let tail = lower[pos + marker.len()..].trim_start_matches([' ', '"', ':']);
        let num_end = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(tail.len());
        let Ok(value) = tail[..num_end].trim_end_matches('.').parse::<f64>() else {
            continue;
        };
        let unit = tail[num_end..].trim_start();
        let factor = if unit.starts_with("ms") || unit.starts_with("millisecond") {
            1.0
        } else if unit.starts_with("min") || (unit.starts_with('m') && !unit.starts_with("ms")) {
            60_000.0
        } else if unit.starts_with('h') {
            3_600_000.0
        } else {
            1_000.0
        };
        return finite_ms(value * factor);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn retry_after_seconds_and_http_dates() {
        assert_eq!(
            retry_after_ms(&h(&[("retry-after", "7")]), "", NOW),
            Some(7_000)
        );
        assert_eq!(
            retry_after_ms(&h(&[("retry-after", "1.5")]), "", NOW),
            Some(1_500)
        );
        assert_eq!(
            retry_after_ms(&h(&[("retry-after-ms", "250")]), "", NOW),
            Some(250)
        );
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(NOW + 90_000));
        assert_eq!(
            retry_after_ms(&h(&[("retry-after", &date)]), "", NOW),
            Some(90_000)
        );
        let past = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(NOW - 5_000));
        assert_eq!(
            retry_after_ms(&h(&[("retry-after", &past)]), "", NOW),
            Some(0)
        );
        assert_eq!(
            retry_after_ms(&h(&[("retry-after", "soon")]), "", NOW),
            None
        );
    }

    #[test]
    fn openai_reset_headers() {
        let hs = h(&[
            ("x-ratelimit-remaining-requests", "10"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "1.5s"),
        ]);
        assert_eq!(retry_after_ms(&hs, "", NOW), Some(1_500));
        let hs = h(&[
            ("x-ratelimit-reset-requests", "20ms"),
            ("x-ratelimit-reset-tokens", "1m2s"),
        ]);
        assert_eq!(retry_after_ms(&hs, "", NOW), Some(62_000));
        assert_eq!(go_duration_ms("1h2m3.5s"), Some(3_723_500));
        assert_eq!(go_duration_ms("abc"), None);
    }

    #[test]
    fn anthropic_reset_instants() {
        let at =
            humantime::format_rfc3339(UNIX_EPOCH + Duration::from_millis(NOW + 42_000)).to_string();
        let hs = h(&[("anthropic-ratelimit-requests-reset", &at)]);
        assert_eq!(retry_after_ms(&hs, "", NOW), Some(42_000));
    }

    #[test]
    fn body_hints() {
        let none = HeaderMap::new();
        let cases = [
            ("Rate limit reached. Please try again in 20s.", Some(20_000)),
            ("Please try again in 1.5s", Some(1_500)),
            ("try again in 120ms", Some(120)),
            ("Retry after 30 seconds", Some(30_000)),
            ("try again in 2 minutes", Some(120_000)),
            (
                r#"{"error":{"details":[{"retryDelay": "36s"}]}}"#,
                Some(36_000),
            ),
            ("quota exceeded", None),
        ];
        for (body, want) in cases {
            assert_eq!(retry_after_ms(&none, body, NOW), want, "{body}");
        }
    }
}
