//! Response bodies. [`RelayBody`] passes an upstream body through frame by frame with an
//! idle timeout between chunks. For SSE it forwards whole events only, so that when the
//! upstream breaks mid-stream the client gets a clean terminal event in its own dialect
//! instead of half an event.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use memchr::memmem;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::error::error_json;
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
}

pin_project! {
    /// An upstream body relayed to the client.
    pub struct RelayBody {
        #[pin]
        inner: Incoming,
        idle: Duration,
        sleep: Pin<Box<Sleep>>,
        provider: String,
        sse: Option<SseFraming>,
        // The first data frame, read before the response was committed.
        first: Option<Bytes>,
        done: bool,
    }
}

impl RelayBody {
    /// `sse = Some(dialect)` frame-aligns an event stream and terminates it in `dialect`.
    pub fn new(inner: Incoming, provider: String, idle: Duration, sse: Option<Dialect>) -> Self {
        Self::with_first(inner, None, provider, idle, sse)
    }

    /// Like [`new`](Self::new), with `first` (already read from `inner`) sent first.
    pub fn with_first(
        inner: Incoming,
        first: Option<Bytes>,
        provider: String,
        idle: Duration,
        sse: Option<Dialect>,
    ) -> Self {
        Self {
            first,
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            provider,
            sse: sse.map(|dialect| SseFraming {
                pending: BytesMut::new(),
                dialect,
            }),
            done: false,
        }
    }
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
        if let Some(first) = this.first.take() {
            let out = match this.sse.as_mut() {
                Some(sse) => sse.push(first),
                None => first,
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
        loop {
            let failure = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = Instant::now() + *this.idle;
                    this.sleep.as_mut().reset(deadline);
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    let out = match this.sse.as_mut() {
                        Some(sse) => sse.push(frame),
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
                Poll::Pending => match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => RelayError::Idle {
                        provider: this.provider.clone(),
                        idle: *this.idle,
                    },
                    Poll::Pending => return Poll::Pending,
                },
            };
            *this.done = true;
            tracing::warn!(error = %failure, "upstream body ended early");
            return match this.sse.as_ref() {
                Some(sse) => Poll::Ready(Some(Ok(Frame::data(sse.terminal(&failure))))),
                None => Poll::Ready(Some(Err(failure.into()))),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
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

/// Holds back a trailing partial event so only whole events are forwarded.
struct SseFraming {
    pending: BytesMut,
    dialect: Dialect,
}

impl SseFraming {
    /// Returns the complete events available now (possibly empty).
    fn push(&mut self, data: Bytes) -> Bytes {
        if self.pending.is_empty() {
            let cut = last_event_end(&data);
            if cut == data.len() {
                return data; // the common case: whole events, forwarded without copying
            }
            self.pending.extend_from_slice(&data[cut..]);
            return data.slice(..cut);
        }
        self.pending.extend_from_slice(&data);
        let cut = last_event_end(&self.pending);
        self.pending.split_to(cut).freeze()
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
        })
    }
}

/// The end of the last complete event: the byte after its blank line, or 0.
fn last_event_end(buf: &[u8]) -> usize {
    [&b"\n\n"[..], b"\r\r", b"\r\n\r\n"]
        .iter()
        .filter_map(|pat| memmem::rfind(buf, pat).map(|i| i + pat.len()))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing() -> SseFraming {
        SseFraming {
            pending: BytesMut::new(),
            dialect: Dialect::OpenAi,
        }
    }

    #[test]
    fn whole_events_pass_unchanged() {
        let mut f = framing();
        let b = Bytes::from_static(b"data: 1\n\ndata: 2\n\n");
        assert_eq!(f.push(b.clone()), b);
    }

    #[test]
    fn partial_events_are_held_until_complete() {
        let mut f = framing();
        assert_eq!(
            f.push(Bytes::from_static(b"data: 1\n\ndata: ")).as_ref(),
            &b"data: 1\n\n"[..]
        );
        assert_eq!(f.push(Bytes::from_static(b"2\n")).as_ref(), &b""[..]);
        assert_eq!(f.push(Bytes::from_static(b"\r\n")).as_ref(), &b""[..]);
        assert_eq!(
            f.push(Bytes::from_static(b"\n")).as_ref(),
            &b"data: 2\n\r\n\n"[..]
        );
        let mut f = framing();
        assert_eq!(
            f.push(Bytes::from_static(b"data: x\r\n\r\n")).as_ref(),
            &b"data: x\r\n\r\n"[..]
        );
    }

    #[test]
    fn terminal_frames_match_the_dialect() {
        let failure = RelayError::Idle {
            provider: "p".into(),
            idle: Duration::from_secs(1),
        };
        let openai = framing().terminal(&failure);
        assert!(openai.ends_with(b"data: [DONE]\n\n"));
        let anthropic = SseFraming {
            pending: BytesMut::new(),
            dialect: Dialect::Anthropic,
        }
        .terminal(&failure);
        assert!(anthropic.starts_with(b"event: error\ndata: {\"error\""));
    }
}
