//! Response bodies. [`RelayBody`] passes an upstream body through frame by frame with an
//! idle timeout between chunks. For SSE it forwards whole events only, so that when the
//! upstream breaks mid-stream the client gets a clean terminal event in its own dialect
//! instead of half an event.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::upstream::UpstreamBody;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use memchr::memmem;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::error::error_json;
use crate::deadline::LazyTimer;
use crate::format::Dialect;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response Keyway sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why a relayed body ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("upstream `{provider}` sent nothing for {idle:?}")]
    Idle { provider: String, idle: Duration },
    #[error("upstream `{provider}` stream broke: {reason}")]
    Broken { provider: String, reason: String },
    #[error("upstream `{provider}` sent an event larger than {limit} bytes (server.max_sse_event_bytes)")]
    EventTooLarge { provider: String, limit: usize },
}

impl RelayError {
    fn label(&self) -> &'static str {
        match self {
            RelayError::Idle { .. } => "idle",
            RelayError::Broken { .. } => "broken",
            RelayError::EventTooLarge { .. } => "event_too_large",
        }
    }
}

pin_project! {
    /// An upstream body relayed to the client.
    pub struct RelayBody {
        #[pin]
        inner: UpstreamBody,
        idle: Duration,
        // When the current wait for the upstream began (`None`: not waiting since the last
        // frame), and the timer that bounds it: made on the first wait and moved only when
        // it fires early, so a frame costs no timer update and a body that never waits (a
        // buffered JSON answer) no timer at all.
        waiting_since: Option<Instant>,
        sleep: LazyTimer,
        provider: String,
        sse: Option<SseFraming>,
        // The first data frame, read before the response was committed.
        first: Option<Bytes>,
        done: bool,
    }
}

impl RelayBody {
    /// Relays `inner`, sending `first` (already read from it) first. `sse` frame-aligns an
    /// event stream and terminates it in the client's dialect.
    pub fn with_first(
        inner: UpstreamBody,
        first: Option<Bytes>,
        provider: String,
        idle: Duration,
        sse: Option<SseFraming>,
    ) -> Self {
        Self {
            first,
            inner,
            idle,
            waiting_since: None,
            sleep: None,
            provider,
            sse,
            done: false,
        }
    }
}

/// Whether the upstream, pending now, has been silent for `idle` since the wait began (the
/// first call of a wait notes its start).
fn idle_elapsed(
    sleep: &mut LazyTimer,
    waiting_since: &mut Option<Instant>,
    idle: Duration,
    cx: &mut Context<'_>,
) -> bool {
    let deadline = *waiting_since.get_or_insert_with(Instant::now) + idle;
    crate::deadline::passed(sleep, deadline, cx)
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let mut failure = None;
        if let Some(first) = this.first.take() {
            match this
                .sse
                .as_mut()
                .map_or(Ok(first.clone()), |sse| sse.push(first))
            {
                Ok(out) if out.is_empty() => {}
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Err(limit) => {
                    failure = Some(RelayError::EventTooLarge {
                        provider: this.provider.clone(),
                        limit,
                    })
                }
            }
        }
        loop {
            if let Some(failure) = failure.take() {
                *this.done = true;
                metrics::counter!(crate::metrics::STREAMS_CUT, "reason" => failure.label())
                    .increment(1);
                tracing::warn!(error = %failure, "upstream body ended early");
                return match this.sse.as_mut() {
                    Some(sse) => {
                        sse.pending.clear();
                        Poll::Ready(Some(Ok(Frame::data(sse.terminal(&failure)))))
                    }
                    None => Poll::Ready(Some(Err(failure.into()))),
                };
            }
            failure = Some(match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.waiting_since = None;
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    let out = match this.sse.as_mut() {
                        Some(sse) => match sse.push(frame) {
                            Ok(out) => out,
                            Err(limit) => {
                                failure = Some(RelayError::EventTooLarge {
                                    provider: this.provider.clone(),
                                    limit,
                                });
                                continue;
                            }
                        },
                        None => frame,
                    };
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(None) => {
                    *this.done = true;
                    // An upstream that ends without a final blank line: pass the rest as sent.
                    let rest = this.sse.as_mut().map(|s| s.pending.split().freeze());
                    return match rest {
                        Some(rest) if !rest.is_empty() => Poll::Ready(Some(Ok(Frame::data(rest)))),
                        _ => Poll::Ready(None),
                    };
                }
                Poll::Ready(Some(Err(e))) => RelayError::Broken {
                    provider: this.provider.clone(),
                    reason: e.to_string(),
                },
                Poll::Pending => {
                    if !idle_elapsed(this.sleep, this.waiting_since, *this.idle, cx) {
                        return Poll::Pending;
                    }
                    RelayError::Idle {
                        provider: this.provider.clone(),
                        idle: *this.idle,
                    }
                }
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        // hyper's h1 writer stops polling once Content-Length bytes are out, so the end is
        // also "nothing buffered here and nothing left upstream".
        self.done
            || (self.first.is_none()
                && self.sse.as_ref().is_none_or(|s| s.pending.is_empty())
                && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse.is_some() {
            return SizeHint::default();
        }
        let inner = self.inner.size_hint();
        let first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + first);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}

pin_project! {
    /// A relayed upstream stream translated into the client's format, event by event.
    pub struct TranslatedBody {
        #[pin]
        inner: RelayBody,
        machine: Box<dyn crate::translate::StreamTranslator>,
        done: bool,
    }
}

impl TranslatedBody {
    pub fn new(inner: RelayBody, machine: Box<dyn crate::translate::StreamTranslator>) -> Self {
        Self {
            inner,
            machine,
            done: false,
        }
    }
}

impl Body for TranslatedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            let out = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.machine.push(&data),
                    Err(_trailers) => continue,
                },
                // The relay ends streams it cuts with an event in the upstream's dialect,
                // which the machine has translated; a plain end is checked by `finish`.
                None | Some(Err(_)) => {
                    *this.done = true;
                    this.machine.finish()
                }
            };
            if this.machine.is_finished() {
                *this.done = true;
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Holds back a trailing partial event so only whole events are forwarded. Each byte is
/// scanned for an event end once (a separator split across frames is found through a
/// three-byte overlap), and the held-back event is capped.
pub struct SseFraming {
    pending: BytesMut,
    dialect: Dialect,
    max_event: usize,
    /// Bytes searched for event ends so far (tests check this stays linear).
    scanned: u64,
}

impl SseFraming {
    pub fn new(dialect: Dialect, max_event: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            dialect,
            max_event,
            scanned: 0,
        }
    }

    /// The complete events available now (possibly empty), or `Err(limit)` when the event
    /// being held back has grown past the limit.
    fn push(&mut self, data: Bytes) -> Result<Bytes, usize> {
        if self.pending.is_empty() {
            self.scanned += data.len() as u64;
            let cut = last_event_end(&data).unwrap_or(0);
            if cut == data.len() {
                return Ok(data); // the common case: whole events, forwarded without copying
            }
            if data.len() - cut > self.max_event {
                return Err(self.max_event);
            }
            self.pending.extend_from_slice(&data[cut..]);
            return Ok(data.slice(..cut));
        }
        // Only the new bytes, plus the held-back tail a separator could start in.
        let from = self.pending.len().saturating_sub(3);
        self.pending.extend_from_slice(&data);
        self.scanned += (self.pending.len() - from) as u64;
        match last_event_end(&self.pending[from..]) {
            Some(end) => {
                let out = self.pending.split_to(from + end).freeze();
                if self.pending.len() > self.max_event {
                    return Err(self.max_event);
                }
                Ok(out)
            }
            None if self.pending.len() > self.max_event => Err(self.max_event),
            None => Ok(Bytes::new()),
        }
    }

    /// The final event(s) telling the client the stream failed, in its dialect.
    fn terminal(&self, failure: &RelayError) -> Bytes {
        let status = http::StatusCode::BAD_GATEWAY;
        let body = error_json(
            self.dialect,
            status,
            "stream_interrupted",
            &failure.to_string(),
        );
        Bytes::from(match self.dialect {
            Dialect::OpenAi => format!("data: {body}\n\ndata: [DONE]\n\n"),
            Dialect::Anthropic => format!("event: error\ndata: {body}\n\n"),
            // Responses clients (Codex) wait for a terminal response event.
            Dialect::Responses => {
                let failed = serde_json::json!({"type": "response.failed", "sequence_number": 0,
                    "response": {"object": "response", "status": "failed", "output": [],
                        "error": {"code": "stream_interrupted", "message": failure.to_string()}}});
                format!("event: response.failed\ndata: {failed}\n\n")
            }
        })
    }
}

/// The end of the last complete event in `buf`: the byte after its blank line.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    [&b"\n\n"[..], b"\r\r", b"\r\n\r\n"]
        .iter()
        .filter_map(|pat| memmem::rfind(buf, pat).map(|i| i + pat.len()))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing() -> SseFraming {
        SseFraming::new(Dialect::OpenAi, 1 << 20)
    }

    impl SseFraming {
        fn push_ok(&mut self, data: Bytes) -> Bytes {
            self.push(data).expect("under the limit")
        }
    }

    #[test]
    fn one_huge_event_in_small_frames_is_scanned_once() {
        let mut f = SseFraming::new(Dialect::OpenAi, 64 << 20);
        let frame = Bytes::from(vec![b'x'; 4096]);
        let frames = 4096; // 16 MiB without a blank line: quadratic scanning would be ~32 TB
        assert_eq!(f.push_ok(Bytes::from_static(b"data: ")).len(), 0);
        for _ in 0..frames {
            assert!(f.push_ok(frame.clone()).is_empty());
        }
        let out = f.push_ok(Bytes::from_static(b"\n\n"));
        assert_eq!(out.len(), 6 + 4096 * frames + 2);
        let input = (6 + 4096 * frames + 2) as u64;
        assert!(
            f.scanned <= input + 3 * (frames as u64 + 2),
            "scanned {}",
            f.scanned
        );
    }

    #[test]
    fn an_event_past_the_limit_is_refused() {
        let mut f = SseFraming::new(Dialect::OpenAi, 1024);
        assert_eq!(
            f.push_ok(Bytes::from_static(b"data: 1\n\ndata: ")).as_ref(),
            b"data: 1\n\n"
        );
        assert!(f.push(Bytes::from(vec![b'x'; 1000])).is_ok());
        assert_eq!(f.push(Bytes::from(vec![b'x'; 100])), Err(1024));
        // A single frame holding an oversized partial event is refused at once.
        let mut f = SseFraming::new(Dialect::OpenAi, 1024);
        assert_eq!(f.push(Bytes::from(vec![b'x'; 2000])), Err(1024));
    }

    #[test]
    fn whole_events_pass_unchanged() {
        let mut f = framing();
        let b = Bytes::from_static(b"data: 1\n\ndata: 2\n\n");
        assert_eq!(f.push_ok(b.clone()), b);
    }

    #[test]
    fn partial_events_are_held_until_complete() {
        let mut f = framing();
        assert_eq!(
            f.push_ok(Bytes::from_static(b"data: 1\n\ndata: ")).as_ref(),
            &b"data: 1\n\n"[..]
        );
        assert_eq!(f.push_ok(Bytes::from_static(b"2\n")).as_ref(), &b""[..]);
        assert_eq!(f.push_ok(Bytes::from_static(b"\r\n")).as_ref(), &b""[..]);
        assert_eq!(
            f.push_ok(Bytes::from_static(b"\n")).as_ref(),
            &b"data: 2\n\r\n\n"[..]
        );
        let mut f = framing();
        assert_eq!(
            f.push_ok(Bytes::from_static(b"data: x\r\n\r\n")).as_ref(),
            &b"data: x\r\n\r\n"[..]
        );
    }

    /// The idle bound runs from the start of the current wait, however long earlier waits
    /// and frames took: the lazily armed timer firing early is moved, not obeyed.
    #[tokio::test(start_paused = true)]
    async fn the_idle_bound_restarts_with_every_wait() {
        struct Wait(LazyTimer, Option<Instant>);
        impl Wait {
            async fn elapsed(&mut self) -> bool {
                let idle = Duration::from_millis(1000);
                std::future::poll_fn(|cx| {
                    Poll::Ready(idle_elapsed(&mut self.0, &mut self.1, idle, cx))
                })
                .await
            }
        }
        let ms = |n| tokio::time::advance(Duration::from_millis(n));
        let mut w = Wait(None, None);
        assert!(!w.elapsed().await, "a wait that just began");
        ms(600).await;
        assert!(!w.elapsed().await);
        // A frame: the next wait starts afresh.
        w.1 = None;
        assert!(!w.elapsed().await);
        // 1,300 ms since the first wait began (the armed timer has fired), 700 ms into this one.
        ms(700).await;
        assert!(!w.elapsed().await, "cut 700 ms into a wait");
        ms(299).await;
        assert!(!w.elapsed().await, "cut 999 ms into a wait");
        ms(1).await;
        assert!(w.elapsed().await, "not cut after a whole idle period");
    }

    #[test]
    fn terminal_frames_match_the_dialect() {
        let failure = RelayError::Idle {
            provider: "p".into(),
            idle: Duration::from_secs(1),
        };
        let openai = framing().terminal(&failure);
        assert!(openai.ends_with(b"data: [DONE]\n\n"));
        let anthropic = SseFraming::new(Dialect::Anthropic, 1024).terminal(&failure);
        assert!(anthropic.starts_with(b"event: error\ndata: {\"error\""));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Bytes rich in what framing looks at: newlines, carriage returns, `data:`.
        fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(
                prop_oneof![
                    Just(b"\n".to_vec()),
                    Just(b"\r".to_vec()),
                    Just(b"\n\n".to_vec()),
                    Just(b"\r\n\r\n".to_vec()),
                    Just(b"data: ".to_vec()),
                    prop::collection::vec(any::<u8>(), 0..40),
                ],
                0..60,
            )
            .prop_map(|parts| parts.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// However the upstream bytes are split, what is forwarded is a prefix of them
            /// that ends on an event boundary, every byte is scanned about once, only a
            /// held-back event past the limit is refused, and nothing is lost.
            #[test]
            fn framing_is_split_independent_and_linear(
                input in sse_bytes(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
                max_event in 1usize..4096,
            ) {
                let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
                points.push(0);
                points.push(input.len());
                points.sort_unstable();
                points.dedup();
                let mut f = SseFraming::new(Dialect::OpenAi, max_event);
                let mut out = Vec::new();
                let mut refused = false;
                for w in points.windows(2) {
                    match f.push(Bytes::copy_from_slice(&input[w[0]..w[1]])) {
                        Ok(b) => out.extend_from_slice(&b),
                        Err(limit) => {
                            prop_assert_eq!(limit, max_event);
                            refused = true;
                            break;
                        }
                    }
                }
                prop_assert!(input.starts_with(&out));
                if !out.is_empty() {
                    prop_assert_eq!(last_event_end(&out), Some(out.len()));
                }
                let frames = points.len() as u64;
                prop_assert!(f.scanned <= input.len() as u64 + 3 * frames);
                if !refused && !f.pending.is_empty() {
                    prop_assert!(f.pending.len() <= max_event);
                }
                if !refused {
                    // Nothing lost or reordered: the held-back tail is sent at stream end.
                    out.extend_from_slice(&f.pending);
                    prop_assert_eq!(out, input);
                }
            }
        }
    }
}
