//! HTTP/1 request framing, watched on the raw bytes of a connection.
//!
//! hyper resolves a request that carries both Content-Length and
//! Transfer-Encoding the way RFC 9112 §6.3 allows an intermediary to: it
//! drops the length, decodes chunked, and closes the connection after the
//! response. Such a request is far more often a smuggling probe than a
//! mistake, so xgate refuses it outright (as nginx does), and likewise a
//! Content-Length given twice (hyper accepts identical duplicates). hyper does not let
//! the service see that the header was there, so this wrapper follows the
//! framing of every request on the connection (heads, fixed-length and
//! chunked bodies) and queues, per request in order, whether its head was
//! ambiguous that way. The service takes one verdict per HTTP/1 request.
//!
//! It only records; hyper still does all real parsing. Bodies are skipped in
//! bulk, so the cost is a scan of each request head.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head line kept for inspection; longer ones are refused by hyper.
const MAX_LINE: usize = 64 * 1024;
/// Verdicts queued at most (pipelining depth hyper would ever reach).
const MAX_QUEUED: usize = 1024;

/// Per-connection queue of "the head's framing was ambiguous".
#[derive(Clone, Default)]
pub struct FramingVerdicts(Arc<Mutex<VecDeque<bool>>>);

impl FramingVerdicts {
    /// The verdict for the next HTTP/1 request on the connection.
    pub fn next_is_ambiguous(&self) -> bool {
        self.0.lock().unwrap().pop_front().unwrap_or(false)
    }

    fn push(&self, ambiguous: bool) {
        let mut queue = self.0.lock().unwrap();
        if queue.len() < MAX_QUEUED {
            queue.push_back(ambiguous);
        }
    }
}

/// Marker put in a request's extensions when its head was ambiguous.
#[derive(Clone, Copy, Debug)]
pub struct AmbiguousFraming;

#[derive(Debug)]
enum State {
    /// Reading a request head line by line.
    Head {
        content_length: Option<u64>,
        lengths: u32,
        chunked: bool,
        te: bool,
        first: bool,
    },
    /// Skipping a fixed-length body.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// HTTP/2 prior knowledge or garbage: stop looking.
    Off,
}

impl State {
    fn head() -> Self {
        State::Head {
            content_length: None,
            lengths: 0,
            chunked: false,
            te: false,
            first: true,
        }
    }
}

struct Parser {
    state: State,
    line: Vec<u8>,
    verdicts: FramingVerdicts,
}

impl Parser {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Fixed(remaining) => {
                    let take = (*remaining).min(data.len() as u64);
                    *remaining -= take;
                    data = &data[take as usize..];
                    if *remaining == 0 {
                        self.state = State::head();
                    }
                }
                State::ChunkData(remaining) => {
                    let take = (*remaining).min(data.len() as u64);
                    *remaining -= take;
                    data = &data[take as usize..];
                    if *remaining == 0 {
                        self.state = State::ChunkSize;
                    }
                }
                State::Head { .. } | State::ChunkSize | State::Trailers => {
                    let end = memchr::memchr(b'\n', data);
                    let (chunk, rest) = match end {
                        Some(i) => data.split_at(i + 1),
                        None => (data, &[][..]),
                    };
                    if self.line.len() + chunk.len() > MAX_LINE {
                        self.state = State::Off;
                        return;
                    }
                    data = rest;
                    if end.is_none() {
                        // The line goes on in a later read.
                        self.line.extend_from_slice(chunk);
                    } else if self.line.is_empty() {
                        // The usual case: the whole line is in this read.
                        self.line_done(trim_eol(chunk));
                    } else {
                        self.line.extend_from_slice(chunk);
                        let mut line = std::mem::take(&mut self.line);
                        self.line_done(trim_eol(&line));
                        line.clear();
                        self.line = line;
                    }
                }
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        match &mut self.state {
            State::Head {
                content_length,
                lengths,
                chunked,
                te,
                first,
            } => {
                if *first {
                    if line.is_empty() {
                        return; // stray CRLF between requests
                    }
                    *first = false;
                    if line.starts_with(b"PRI * HTTP/2") {
                        self.state = State::Off;
                    }
                    return;
                }
                if line.is_empty() {
                    // Both headers, or the length given twice (even with one
                    // value): two parsers could frame it differently.
                    let ambiguous = (content_length.is_some() && *te) || *lengths > 1;
                    self.verdicts.push(ambiguous);
                    self.state = if *te && *chunked {
                        State::ChunkSize
                    } else if *te {
                        // hyper refuses a non-chunked Transfer-Encoding.
                        State::Off
                    } else {
                        match *content_length {
                            Some(n) if n > 0 => State::Fixed(n),
                            _ => State::head(),
                        }
                    };
                    return;
                }
                let Some(colon) = line.iter().position(|b| *b == b':') else {
                    return;
                };
                let name = &line[..colon];
                let value = trim(&line[colon + 1..]);
                if name.eq_ignore_ascii_case(b"content-length") {
                    *lengths += 1;
                    *content_length = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .or(Some(0));
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    *te = true;
                    // Chunked must be the final coding (hyper's rule too).
                    *chunked = value
                        .rsplit(|b| *b == b',')
                        .next()
                        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
                }
            }
            State::ChunkSize => {
                let size = line
                    .split(|b| *b == b';')
                    .next()
                    .map(trim)
                    .unwrap_or_default();
                match std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                {
                    Some(0) => self.state = State::Trailers,
                    // Data, then the CRLF that ends it.
                    Some(n) => self.state = State::ChunkData(n.saturating_add(2)),
                    None => self.state = State::Off,
                }
            }
            State::Trailers if line.is_empty() => self.state = State::head(),
            _ => {}
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// A connection whose reads are followed by the framing parser.
pub struct FramingWatch<IO> {
    inner: IO,
    parser: Parser,
}

impl<IO> FramingWatch<IO> {
    pub fn new(inner: IO) -> (Self, FramingVerdicts) {
        let verdicts = FramingVerdicts::default();
        let parser = Parser {
            state: State::head(),
            line: Vec::new(),
            verdicts: verdicts.clone(),
        };
        (Self { inner, parser }, verdicts)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingWatch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            this.parser.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingWatch<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split: usize) -> Vec<bool> {
        let verdicts = FramingVerdicts::default();
        let mut parser = Parser {
            state: State::head(),
            line: Vec::new(),
            verdicts: verdicts.clone(),
        };
        // Fed in pieces, as a socket delivers it.
        for piece in stream.chunks(split.max(1)) {
            parser.feed(piece);
        }
        let queue = verdicts.0.lock().unwrap();
        queue.iter().copied().collect()
    }

    const PIPELINE: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n\
GET /e HTTP/1.1\r\nHost: x\r\n\r\n\
POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok\
GET /g HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn one_verdict_per_request_across_bodies_in_any_split() {
        for split in [1, 2, 7, 64, PIPELINE.len()] {
            assert_eq!(
                verdicts(PIPELINE, split),
                vec![false, false, false, true, false, true, false],
                "split {split}"
            );
        }
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_read_as_heads() {
        // /b's body (30 bytes) contains a Transfer-Encoding line: skipped.
        assert!(!verdicts(PIPELINE, 3)[1]);
    }

    #[test]
    fn http2_prior_knowledge_turns_the_watch_off() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
        assert!(verdicts(h2, 5).is_empty());
    }

    #[tokio::test]
    async fn the_wrapper_sees_what_hyper_reads() {
        use tokio::io::AsyncReadExt;
        let data =
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec();
        let (mut watch, verdicts) = FramingWatch::new(std::io::Cursor::new(data));
        let mut sink = Vec::new();
        watch.read_to_end(&mut sink).await.unwrap();
        assert!(verdicts.next_is_ambiguous());
        assert!(!verdicts.next_is_ambiguous(), "no more requests");
    }
}
