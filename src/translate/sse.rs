//! Reading an upstream event stream for the stream translators: whole events out of any
//! chunking (each byte is searched once; a separator split across frames is found through
//! a three-byte overlap), and the `data:` payload of each.

use bytes::{BufMut, Bytes, BytesMut};

use super::StreamTranslator;

/// Largest incomplete upstream event held (the relay caps events before this).
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// A stream state machine over upstream events; [`StreamTranslator`] drives it.
pub trait EventMachine: Send {
    fn reader(&mut self) -> &mut EventReader;
    /// True once the client's stream has its terminal event.
    fn is_done(&self) -> bool;
    /// One upstream event, by its data payload.
    fn on_event(&mut self, data: &[u8], out: &mut BytesMut);
    /// The upstream ended without a terminal for the client: add one.
    fn on_end(&mut self, out: &mut BytesMut);
    /// Ends the client's stream with an error saying `message`.
    fn on_fail(&mut self, message: &str, out: &mut BytesMut);
}

impl<T: EventMachine> StreamTranslator for T {
    fn push(&mut self, data: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        if self.is_done() {
            return out.freeze();
        }
        self.reader().feed(data);
        while let Some(event) = self.reader().next_data() {
            self.on_event(&event, &mut out);
            if self.is_done() {
                self.reader().clear();
                return out.freeze();
            }
        }
        if self.reader().held() > MAX_EVENT {
            self.on_fail("upstream event too large", &mut out);
        }
        out.freeze()
    }

    fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if !self.is_done() {
            if let Some(rest) = self.reader().rest() {
                self.on_event(&rest, &mut out);
            }
            if !self.is_done() {
                self.on_end(&mut out);
            }
        }
        out.freeze()
    }

    fn is_finished(&self) -> bool {
        self.is_done()
    }
}

/// Buffers upstream bytes and hands out the data of each complete event.
#[derive(Default)]
pub struct EventReader {
    pending: BytesMut,
    /// Bytes of `pending` already searched for an event end.
    scanned: usize,
}

impl EventReader {
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// The data of the next complete event (empty for events without data lines, such as
    /// comments), or `None` until one is complete.
    pub fn next_data(&mut self) -> Option<Vec<u8>> {
        match event_end(&self.pending, self.scanned.saturating_sub(3)) {
            Some((end, sep)) => {
                let event = self.pending.split_to(end + sep);
                self.scanned = 0;
                Some(data_of(&event[..end]))
            }
            None => {
                self.scanned = self.pending.len();
                None
            }
        }
    }

    /// At the end of the stream: the data of an event left without its blank line.
    pub fn rest(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| {
            let rest = std::mem::take(&mut self.pending);
            self.scanned = 0;
            data_of(&rest)
        })
    }

    /// Bytes held back in an incomplete event.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    pub fn clear(&mut self) {
        self.pending.clear();
        self.scanned = 0;
    }
}

/// The `data:` lines of one event, joined by newlines as the SSE spec says.
fn data_of(raw: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(d) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
        }
    }
    data
}

/// The first event end in `buf` at or after `from`: (index of the blank line, separator
/// length).
fn event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 1 < buf.len() {
        match (buf[i], buf[i + 1]) {
            (b'\n', b'\n') => return Some((i, 2)),
            (b'\r', b'\n') if buf[i + 2..].starts_with(b"\r\n") => return Some((i, 4)),
            (b'\r', b'\r') => return Some((i, 2)),
            _ => i += 1,
        }
    }
    None
}

/// Writes one client event: `event: <name>` when named, then `data: <json>`.
pub fn write_event(out: &mut BytesMut, name: Option<&str>, data: &serde_json::Value) {
    if let Some(name) = name {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_slice(b"\n");
    }
    out.put_slice(b"data: ");
    // Writing JSON into a BytesMut cannot fail.
    let _ = serde_json::to_writer((&mut *out).writer(), data);
    out.put_slice(b"\n\n");
}
