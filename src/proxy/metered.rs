//! The last layer of every response body: when the body ends (or the client drops it) the
//! request is finished — duration, stream and token metrics, in-flight gauges, and the one
//! structured log line per request. Token counts come from `usage` in JSON bodies and in
//! SSE events (OpenAI's final chunk, Anthropic's `message_start` / `message_delta`). The
//! gauges drop and the duration is taken at once; on a serving thread the rest waits until
//! the thread is about to go idle ([`Finished`]).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use memchr::memmem;
use pin_project_lite::pin_project;

use super::attempt::AttemptRecord;
use super::body::{BoxError, ProxyBody};
use crate::logfmt::Escaped;
use crate::metrics as m;

/// The status logged for a request whose client left before its response headers
/// (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

/// JSON bodies larger than this are not parsed for usage.
const JSON_SCAN_LIMIT: usize = 4 * 1024 * 1024;

/// How to look for token usage in a body.
#[derive(Debug)]
pub enum UsageScan {
    None,
    Json(JsonBuf),
    Sse,
}

/// A JSON body gathered for its `usage`: a body that arrives in one frame (most do) is
/// kept as that frame, shared rather than copied; frames are copied together only when
/// there are more.
#[derive(Debug, Default)]
pub struct JsonBuf {
    first: Option<bytes::Bytes>,
    joined: Vec<u8>,
}

impl JsonBuf {
    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.joined.len(), |f| f.len())
    }

    fn push(&mut self, data: &bytes::Bytes) {
        if self.first.is_none() && self.joined.is_empty() {
            self.first = Some(data.clone());
            return;
        }
        if let Some(first) = self.first.take() {
            self.joined.reserve(first.len() + data.len());
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(data);
    }

    fn as_slice(&self) -> &[u8] {
        self.first.as_deref().unwrap_or(&self.joined)
    }
}

/// Everything needed to finish a request once its body is done.
#[derive(Debug)]
pub struct Completion {
    pub id: super::RequestId,
    pub client: String,
    pub model: String,
    pub model_label: String,
    pub endpoint: &'static str,
    pub method: http::Method,
    /// Only the path is logged: a query string may carry a client's secrets.
    pub uri: http::Uri,
    pub status: u16,
    pub attempts: Vec<AttemptRecord>,
    pub started: Instant,
    /// Time until response headers were handed to the client.
    pub headers_after: Duration,
    /// The provider and (bounded) model label of the attempt that served, if any.
    pub served: Option<(String, String)>,
    pub stream: bool,
}

pin_project! {
    pub struct MeteredBody {
        #[pin]
        inner: ProxyBody,
        done: Option<Completion>,
        scan: UsageScan,
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }

    impl PinnedDrop for MeteredBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(c) = this.done.take() {
                // hyper may drop a body it knows is complete without polling it to the end.
                let complete = this.inner.is_end_stream();
                let scan = std::mem::replace(this.scan, UsageScan::None);
                finish(c, complete, scan, *this.prompt_tokens, *this.completion_tokens);
            }
        }
    }
}

impl MeteredBody {
    pub fn new(inner: ProxyBody, completion: Completion, scan: UsageScan) -> Self {
        let h = m::request();
        h.in_flight.increment(1.0);
        if completion.stream {
            h.open_streams.increment(1.0);
        }
        Self {
            inner,
            done: Some(completion),
            scan,
            prompt_tokens: None,
            completion_tokens: None,
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    match this.scan {
                        UsageScan::None => {}
                        UsageScan::Json(buf) => {
                            if buf.len() + data.len() <= JSON_SCAN_LIMIT {
                                buf.push(data);
                            } else {
                                *this.scan = UsageScan::None;
                            }
                        }
                        UsageScan::Sse => {
                            scan_sse(data, this.prompt_tokens, this.completion_tokens)
                        }
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(c) = this.done.take() {
                    let scan = std::mem::replace(this.scan, UsageScan::None);
                    finish(c, true, scan, *this.prompt_tokens, *this.completion_tokens);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(c) = this.done.take() {
                    let scan = std::mem::replace(this.scan, UsageScan::None);
                    finish(c, false, scan, *this.prompt_tokens, *this.completion_tokens);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The four counts Keyway reads from a `usage` object; serde skips everything else
/// without building it.
#[derive(serde::Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

/// Parses a buffered JSON body's `usage`, once.
fn take_json_usage(scan: &mut UsageScan, prompt: &mut Option<u64>, completion: &mut Option<u64>) {
    #[derive(serde::Deserialize)]
    struct UsageOnly {
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct AnyUsage {
        usage: Option<serde_json::Value>,
    }
    let UsageScan::Json(buf) = std::mem::replace(scan, UsageScan::None) else {
        return;
    };
    let buf = buf.as_slice();
    let usage = match usage_from_tail(buf) {
        Some(u) => Some(u),
        None => match serde_json::from_slice::<UsageOnly>(buf) {
            Ok(UsageOnly { usage }) => usage,
            // An odd shape (a count that is not an integer): read what is readable.
            Err(_) => {
                if let Ok(AnyUsage { usage: Some(u) }) = serde_json::from_slice::<AnyUsage>(buf) {
                    read_usage(&u, prompt, completion);
                }
                None
            }
        },
    };
    if let Some(u) = usage {
        if let Some(p) = u.prompt_tokens.or(u.input_tokens) {
            *prompt = Some(p);
        }
        if let Some(c) = u.completion_tokens.or(u.output_tokens) {
            *completion = Some(c);
        }
    }
}

/// The root object's `usage` member, found from the end of the body without parsing what
/// comes before it. Providers put `usage` last or nearly so (OpenAI: before
/// `system_fingerprint`; Anthropic: last), so this reads a few dozen bytes where a full
/// parse reads them all. It answers only when it can prove the member belongs to the root:
/// everything after the `usage` value must be further members and the root's closing
/// brace. Anything else (no match, an escaped quote, a nested `usage`, a count that is not
/// an integer) returns `None`, and the caller parses the whole body.
fn usage_from_tail(buf: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    static FINDER: std::sync::LazyLock<memmem::FinderRev<'static>> =
        std::sync::LazyLock::new(|| memmem::FinderRev::new(KEY));
    let at = FINDER.rfind(buf)?;
    // An odd run of backslashes before the quote escapes it: that is string content.
    let backslashes = buf[..at].iter().rev().take_while(|&&b| b == b'\\').count();
    if backslashes % 2 == 1 {
        return None;
    }
    let rest = skip_ws(&buf[at + KEY.len()..]);
    let rest = skip_ws(rest.strip_prefix(b":")?);
    let (usage, mut rest) = next_value::<Usage>(rest)?;
    loop {
        rest = skip_ws(rest);
        match rest.split_first()? {
            (b'}', tail) => return skip_ws(tail).is_empty().then_some(usage),
            (b',', tail) => {
                let tail = skip_ws(tail);
                if tail.first() != Some(&b'"') {
                    return None;
                }
                let (_, tail) = next_value::<serde::de::IgnoredAny>(tail)?;
                let tail = skip_ws(tail).strip_prefix(b":")?;
                let (_, tail) = next_value::<serde::de::IgnoredAny>(skip_ws(tail))?;
                rest = tail;
            }
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    &b[n..]
}

/// One JSON value from the front of `b`, and what follows it.
fn next_value<'a, T: serde::Deserialize<'a>>(b: &'a [u8]) -> Option<(T, &'a [u8])> {
    let mut values = serde_json::Deserializer::from_slice(b).into_iter::<T>();
    let v = values.next()?.ok()?;
    Some((v, &b[values.byte_offset()..]))
}

/// Reads `usage` in either dialect; later values win (Anthropic's deltas are cumulative).
fn read_usage(usage: &serde_json::Value, prompt: &mut Option<u64>, completion: &mut Option<u64>) {
    if let Some(p) = usage["prompt_tokens"]
        .as_u64()
        .or(usage["input_tokens"].as_u64())
    {
        *prompt = Some(p);
    }
    if let Some(c) = usage["completion_tokens"]
        .as_u64()
        .or(usage["output_tokens"].as_u64())
    {
        *completion = Some(c);
    }
}

/// Looks at the whole SSE events in `data` that mention usage.
fn scan_sse(data: &[u8], prompt: &mut Option<u64>, completion: &mut Option<u64>) {
    if memmem::find(data, b"\"usage\"").is_none() {
        return;
    }
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let Some(json) = line.strip_prefix("data:") else {
            continue;
        };
        if !json.contains("\"usage\"") {
            continue;
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) {
            read_usage(&v["usage"], prompt, completion);
            read_usage(&v["message"]["usage"], prompt, completion);
            read_usage(&v["response"]["usage"], prompt, completion); // Responses events
        }
    }
}

/// Per-thread caches of labelled metric handles: a request's counters are found with two
/// string lookups instead of a registry lookup that builds and hashes a label set (and
/// allocates its strings) each time. Label values are bounded (model names are the
/// config's or `other`), so the caches are too.
mod handles {
    use std::cell::RefCell;

    use metrics::Counter;

    use crate::metrics as m;
    use crate::FastMap;

    type Requests = FastMap<String, Vec<(&'static str, u16, Counter)>>;
    type Tokens = FastMap<String, FastMap<String, Vec<(&'static str, Counter)>>>;

    thread_local! {
        static REQUESTS: RefCell<Requests> = RefCell::new(FastMap::default());
        static TOKENS: RefCell<Tokens> = RefCell::new(FastMap::default());
    }

    /// Counts one request (the handle is used in place: cloning it would write its
    /// reference count, shared by every serving thread).
    pub fn count_request(endpoint: &'static str, model: &str, status: u16) {
        REQUESTS.with_borrow_mut(|cache| {
            if let Some(c) = cache
                .get(model)
                .and_then(|v| v.iter().find(|(e, s, _)| *e == endpoint && *s == status))
            {
                return c.2.increment(1);
            }
            let status_text = status.to_string();
            let c = m::counter(
                m::REQUESTS,
                &[
                    ("endpoint", endpoint),
                    ("model", model),
                    ("status", &status_text),
                ],
            );
            c.increment(1);
            cache
                .entry(model.to_string())
                .or_default()
                .push((endpoint, status, c));
        })
    }

    /// Adds a response's token counts, each `(kind, n)` (one lookup for all of them).
    pub fn count_tokens(provider: &str, model: &str, counts: [(&'static str, Option<u64>); 2]) {
        let add = |kinds: &mut Vec<(&'static str, Counter)>| {
            for (kind, n) in counts {
                let Some(n) = n else { continue };
                match kinds.iter().find(|(k, _)| *k == kind) {
                    Some((_, c)) => c.increment(n),
                    None => {
                        let c = m::counter(
                            m::TOKENS,
                            &[("provider", provider), ("model", model), ("kind", kind)],
                        );
                        c.increment(n);
                        kinds.push((kind, c));
                    }
                }
            }
        };
        TOKENS.with_borrow_mut(|cache| {
            if let Some(kinds) = cache.get_mut(provider).and_then(|p| p.get_mut(model)) {
                return add(kinds);
            }
            add(cache
                .entry(provider.to_string())
                .or_default()
                .entry(model.to_string())
                .or_default());
        })
    }
}

/// A response body ended or was dropped: release its gauges at once; its usage scan,
/// metrics and log line follow (see [`Finished`]).
fn finish(
    c: Completion,
    complete: bool,
    scan: UsageScan,
    prompt: Option<u64>,
    completion: Option<u64>,
) {
    let h = m::request();
    h.in_flight.decrement(1.0);
    if c.stream {
        h.open_streams.decrement(1.0);
    }
    let total = c.started.elapsed();
    let finished = Finished {
        c,
        complete,
        total,
        scan,
        prompt,
        completion,
    };
    DEFERRED.with_borrow(|queue| match queue {
        Some(queue) => {
            let mut queue = lock(queue);
            queue.push(finished);
            if queue.len() >= DEFER_AT_MOST {
                queue.drain(..).for_each(Finished::run);
            }
        }
        None => finished.run(),
    });
}

/// A finished request's remaining work: the scan of a JSON body for `usage`, its metrics
/// and its log line. hyper drops a response's body before it flushes the response, so on
/// a serving thread this work waits until the thread is about to go idle ([`run_deferred`],
/// from the runtime's park hook), off the client's critical path; at most
/// [`DEFER_AT_MOST`] wait at once, and a `/metrics` scrape runs every thread's first
/// ([`run_all_deferred`]), so what it shows is never behind. The duration is taken when
/// the body ends, not when this runs.
struct Finished {
    c: Completion,
    complete: bool,
    total: Duration,
    scan: UsageScan,
    prompt: Option<u64>,
    completion: Option<u64>,
}

impl Finished {
    fn run(mut self) {
        take_json_usage(&mut self.scan, &mut self.prompt, &mut self.completion);
        record(
            self.c,
            self.complete,
            self.total,
            self.prompt,
            self.completion,
        );
    }
}

/// Finished requests a serving thread holds back at most before it does their work inline.
const DEFER_AT_MOST: usize = 64;

type Queue = Arc<Mutex<Vec<Finished>>>;

/// Every deferring thread's queue, for [`run_all_deferred`].
static QUEUES: Mutex<Vec<Queue>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's queue, if it defers (see [`defer_on_this_thread`]).
    static DEFERRED: RefCell<Option<Queue>> = const { RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// From now on, this thread defers finished requests' work until [`run_deferred`]. Only
/// for a thread whose runtime calls [`run_deferred`] before it parks and
/// [`stop_deferring`] when it ends.
pub fn defer_on_this_thread() {
    let queue = Queue::default();
    lock(&QUEUES).push(queue.clone());
    DEFERRED.set(Some(queue));
}

/// Does the work this thread deferred (call when it is about to go idle).
pub fn run_deferred() {
    DEFERRED.with_borrow(|queue| {
        if let Some(queue) = queue {
            lock(queue).drain(..).for_each(Finished::run);
        }
    });
}

/// Does every thread's deferred work (before a metrics scrape).
pub fn run_all_deferred() {
    let queues = lock(&QUEUES).clone();
    for queue in queues {
        lock(&queue).drain(..).for_each(Finished::run);
    }
}

/// This thread stops deferring, after doing what it deferred (its runtime has ended).
pub fn stop_deferring() {
    if let Some(queue) = DEFERRED.take() {
        lock(&queue).drain(..).for_each(Finished::run);
        lock(&QUEUES).retain(|q| !Arc::ptr_eq(q, &queue));
    }
}

/// Metrics and the one log line of a finished request that took `total`.
pub fn record(
    c: Completion,
    complete: bool,
    total: Duration,
    prompt: Option<u64>,
    completion: Option<u64>,
) {
    let h = m::request();
    handles::count_request(c.endpoint, &c.model_label, c.status);
    let endpoint = m::ENDPOINTS
        .iter()
        .position(|e| *e == c.endpoint)
        .unwrap_or(m::ENDPOINTS.len() - 1);
    h.duration[endpoint].record(total.as_secs_f64());
    if let Some((provider, model)) = &c.served {
        if c.stream {
            metrics::histogram!(m::STREAM_DURATION, "provider" => provider.clone())
                .record(total.saturating_sub(c.headers_after).as_secs_f64());
        }
        if prompt.is_some() || completion.is_some() {
            handles::count_tokens(
                provider,
                model,
                [("prompt", prompt), ("completion", completion)],
            );
        }
    }
    if !tracing::enabled!(target: "keyway::request", tracing::Level::INFO) {
        return;
    }
    let mut attempts = String::new();
    for (i, a) in c.attempts.iter().enumerate() {
        if i > 0 {
            attempts.push_str(", ");
        }
        let _ = write!(attempts, "{} {}", a.target, a.connection);
        if let (Some(k), Some(fp)) = (&a.key_id, &a.fingerprint) {
            let _ = write!(attempts, "/{k}({fp})");
        }
        match (&a.skipped, a.status, a.class) {
            (Some(why), _, _) => {
                let _ = write!(attempts, " skipped: {why}");
            }
            (_, Some(s), Some(class)) => {
                let _ = write!(attempts, " {s} {class} {}ms", a.millis);
            }
            (_, None, Some(class)) => {
                let _ = write!(attempts, " {class} {}ms", a.millis);
            }
            _ => {}
        }
        if let Some(t) = a.translation {
            let _ = write!(attempts, " via {t}");
        }
    }
    tracing::info!(
        target: "keyway::request",
        request_id = %c.id,
        client = %c.client,
        method = %c.method,
        path = %Escaped(c.uri.path()),
        model = %Escaped(&c.model),
        endpoint = c.endpoint,
        status = c.status,
        attempts = %attempts,
        stream = c.stream,
        completed = complete,
        ttfb_ms = c.headers_after.as_secs_f64() * 1000.0,
        total_ms = total.as_secs_f64() * 1000.0,
        prompt_tokens = prompt,
        completion_tokens = completion,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Completion {
        Completion {
            id: super::super::RequestId::new(),
            client: "c".into(),
            model: "m".into(),
            model_label: "m".into(),
            endpoint: "chat",
            method: http::Method::POST,
            uri: http::Uri::from_static("/v1/chat/completions"),
            status: 200,
            attempts: Vec::new(),
            started: Instant::now(),
            headers_after: Duration::ZERO,
            served: None,
            stream: false,
        }
    }

    fn done() {
        finish(completion(), true, UsageScan::None, None, None);
    }

    fn queued() -> usize {
        DEFERRED.with_borrow(|q| q.as_ref().map_or(0, |q| lock(q).len()))
    }

    #[test]
    fn a_serving_thread_defers_finished_requests_until_idle_a_scrape_or_the_bound() {
        std::thread::spawn(|| {
            done();
            assert_eq!(queued(), 0, "a thread that does not defer records at once");
            defer_on_this_thread();
            done();
            assert_eq!(queued(), 1);
            run_deferred();
            assert_eq!(queued(), 0, "going idle");
            for _ in 1..DEFER_AT_MOST {
                done();
            }
            assert_eq!(queued(), DEFER_AT_MOST - 1);
            done();
            assert_eq!(queued(), 0, "the bound");
            done();
            // A scrape, from any thread.
            std::thread::spawn(run_all_deferred).join().unwrap();
            assert_eq!(queued(), 0, "a scrape");
            done();
            let queue = DEFERRED.with_borrow(|q| q.clone()).unwrap();
            stop_deferring();
            assert_eq!(lock(&queue).len(), 0, "the thread's end");
            assert!(!lock(&QUEUES).iter().any(|q| Arc::ptr_eq(q, &queue)));
        })
        .join()
        .unwrap();
    }

    /// The counts `take_json_usage` reads from a whole JSON body.
    fn usage(body: &str) -> (Option<u64>, Option<u64>) {
        let (mut p, mut c) = (None, None);
        // Whole, and split into frames at every byte: the same answer either way.
        let mut whole = JsonBuf::default();
        whole.push(&bytes::Bytes::copy_from_slice(body.as_bytes()));
        let mut scan = UsageScan::Json(whole);
        take_json_usage(&mut scan, &mut p, &mut c);
        for at in 1..body.len() {
            let mut split = JsonBuf::default();
            split.push(&bytes::Bytes::copy_from_slice(&body.as_bytes()[..at]));
            split.push(&bytes::Bytes::copy_from_slice(&body.as_bytes()[at..]));
            assert_eq!(split.as_slice(), body.as_bytes());
            let (mut sp, mut sc) = (None, None);
            take_json_usage(&mut UsageScan::Json(split), &mut sp, &mut sc);
            assert_eq!((sp, sc), (p, c), "split at {at}");
        }
        let mut three = JsonBuf::default();
        for part in [
            &body[..body.len() / 3],
            &body[body.len() / 3..body.len() / 2],
            &body[body.len() / 2..],
        ] {
            three.push(&bytes::Bytes::copy_from_slice(part.as_bytes()));
        }
        assert_eq!(three.as_slice(), body.as_bytes());
        (p, c)
    }

    #[test]
    fn usage_from_json_bodies_in_either_dialect_and_odd_shapes() {
        assert_eq!(
            usage(
                r#"{"id":"x","usage":{"prompt_tokens":13,"completion_tokens":7,"total_tokens":20,"prompt_tokens_details":{"cached_tokens":0}}}"#
            ),
            (Some(13), Some(7))
        );
        assert_eq!(
            usage(
                r#"{"content":[],"usage":{"input_tokens":5,"output_tokens":9,"cache_read_input_tokens":0}}"#
            ),
            (Some(5), Some(9))
        );
        // A count that is not an integer spoils only itself.
        assert_eq!(
            usage(r#"{"usage":{"prompt_tokens":13.5,"completion_tokens":7}}"#),
            (None, Some(7))
        );
        assert_eq!(usage(r#"{"usage":null}"#), (None, None));
        assert_eq!(usage("not json"), (None, None));
    }

    #[test]
    fn usage_is_read_from_the_tail_only_when_it_is_the_roots() {
        let tail = |body: &str| {
            usage_from_tail(body.as_bytes()).map(|u| {
                (
                    u.prompt_tokens.or(u.input_tokens),
                    u.completion_tokens.or(u.output_tokens),
                )
            })
        };
        // The common shapes are answered from the tail.
        assert_eq!(
            tail(r#"{"id":"x","choices":[],"usage":{"prompt_tokens":13,"completion_tokens":7}}"#),
            Some((Some(13), Some(7)))
        );
        assert_eq!(
            tail(
                "{\"usage\" : {\"prompt_tokens\":1,\"completion_tokens\":2} ,\n \"system_fingerprint\":\"fp\", \"x\":[1,{\"a\":null}] }\n"
            ),
            Some((Some(1), Some(2)))
        );
        assert_eq!(
            tail(
                r#"{"content":[{"type":"tool_use","input":{"usage":{"input_tokens":99}}}],"usage":{"input_tokens":5,"output_tokens":9}}"#
            ),
            Some((Some(5), Some(9)))
        );
        // Not provably the root's: the whole body is parsed instead.
        for body in [
            // a nested `usage` after the root's
            r#"{"usage":{"prompt_tokens":1},"choices":[{"usage":{"prompt_tokens":2}}]}"#,
            r#"{"a":{"usage":{"prompt_tokens":2}}}"#,
            r#"[{"usage":{"prompt_tokens":2}}]"#,
            // an escaped quote: a key whose text ends in `"usage`
            r#"{"usage":{"prompt_tokens":1},"say \"usage":{"prompt_tokens":2}}"#,
            // `usage` as a string value
            r#"{"usage":{"prompt_tokens":1},"object":"usage"}"#,
            r#"{"usage":null}"#,
            r#"{"usage":{"prompt_tokens":13.5}}"#,
            r#"{"usage":{"prompt_tokens":1}} trailing"#,
            r#"{"usage":{"prompt_tokens":1},}"#,
        ] {
            assert_eq!(tail(body), None, "{body}");
        }
    }

    #[test]
    fn the_tail_and_the_whole_parse_agree() {
        assert_eq!(
            usage(r#"{"usage":{"prompt_tokens":1},"choices":[{"usage":{"prompt_tokens":2}}]}"#),
            (Some(1), None)
        );
        assert_eq!(
            usage(r#"{"usage":{"prompt_tokens":1},"say \"usage":{"prompt_tokens":2}}"#),
            (Some(1), None)
        );
        assert_eq!(
            usage(r#"{"a":{"usage":{"prompt_tokens":2}}}"#),
            (None, None)
        );
    }

    #[test]
    fn usage_from_openai_and_anthropic_streams() {
        let (mut p, mut c) = (None, None);
        scan_sse(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34}}\n\ndata: [DONE]\n\n", &mut p, &mut c);
        assert_eq!((p, c), (Some(12), Some(34)));
        let (mut p, mut c) = (None, None);
        scan_sse(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n", &mut p, &mut c);
        scan_sse(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n", &mut p, &mut c);
        assert_eq!((p, c), (Some(25), Some(15)));
    }
}
