//! Reading and writing HTTP/1.1 messages: a read buffer that grows with the
//! traffic, a small queue of buffers written with one vectored write, and
//! the numbers and fields of a head.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first read of a connection asks for this much; reads that fill their
/// buffer double it, up to `MAX_READ`.
const FIRST_READ: usize = 16 * 1024;
/// Also what bounds the memory of a response whose client stopped reading:
/// the read buffer, and the pieces of earlier ones still queued for the
/// client (at most `QUEUE`), each up to this size. 256 KiB held about half
/// a MiB per stalled response; nginx's `proxy_buffers` default is 64 KiB
/// in all. 64 KiB of body plus room for a head (8 KiB): with 64 KiB
/// exactly, a 64 KiB response (a common body size) took two reads and two
/// client writes, which cost about a third more CPU per request (syscalls
/// per request 6.25 against 4.22 with larger reads; docs/proxy.md).
const MAX_READ: usize = 72 * 1024;

/// How much the next read of a connection asks for: reads that fill their
/// room double it, so a busy stream is read in large pieces and a quiet
/// one keeps a small buffer.
pub struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> Self {
        Self(FIRST_READ)
    }
}

impl ReadSize {
    /// Reads once more from `io` onto the end of `buf`; `Ok(0)` is the peer
    /// closing. Reads straight into the buffer's spare room, which needs no
    /// zeroing first.
    #[allow(unsafe_code)]
    pub fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < self.0 / 2 {
            buf.reserve(self.0);
        }
        let spare = buf.spare_capacity_mut();
        let room = spare.len();
        let mut read = ReadBuf::uninit(spare);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        // SAFETY: `poll_read` initialized the first `n` spare bytes.
        unsafe { buf.set_len(buf.len() + n) };
        if n == room {
            self.0 = (self.0 * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }
}

/// Buffers waiting to be written, sent with one vectored write where the
/// socket takes them. Never more than a few at once (a head; body data
/// large enough to be written from where it is, and what was gathered
/// around it: see [`put_data`]; whoever gathers checks for room before each
/// piece), so they sit in a small ring, not on the heap.
#[derive(Default)]
pub struct WriteQueue {
    bufs: [Bytes; QUEUE],
    start: usize,
    len: usize,
    pub wrote_any: bool,
}

pub const QUEUE: usize = 4;

impl WriteQueue {
    pub fn push(&mut self, buf: Bytes) {
        if buf.is_empty() {
            return;
        }
        assert!(self.len < QUEUE, "at most {QUEUE} buffers are queued");
        self.bufs[(self.start + self.len) % QUEUE] = buf;
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for `n` more buffers.
    pub fn has_room(&self, n: usize) -> bool {
        self.len + n <= QUEUE
    }

    pub fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let mut slices = [IoSlice::new(&[]); QUEUE];
            for (i, slice) in slices.iter_mut().take(self.len).enumerate() {
                *slice = IoSlice::new(&self.bufs[(self.start + i) % QUEUE]);
            }
            let mut written =
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..self.len]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote_any = true;
            while written > 0 {
                let front = &mut self.bufs[self.start];
                if written >= front.len() {
                    written -= front.len();
                    *front = Bytes::new();
                    self.start = (self.start + 1) % QUEUE;
                    self.len -= 1;
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Body data up to this size is copied behind what is gathered for the next
/// write (a head, chunk framing, other small pieces), so that a run of
/// small pieces goes out in one write; larger data is written from where it
/// is.
pub const COPY_MAX: usize = 4096;
/// Body data that is ready is gathered up to this much before a write.
pub const GATHER_MAX: usize = 64 * 1024;

/// Queues body `data` for the next write, as a chunk if `chunked`. Small
/// data is copied onto `out`, which whoever gathers queues when it stops,
/// unless nothing is gathered or queued yet: then, like large data, it is
/// queued where it is, so a lone piece costs no copy. Takes up to two of
/// `queue`'s buffers.
pub fn put_data(out: &mut BytesMut, queue: &mut WriteQueue, data: Bytes, chunked: bool) {
    if chunked {
        put_chunk_size(out, data.len());
    }
    if data.len() <= COPY_MAX && !(out.is_empty() && queue.is_empty()) {
        out.extend_from_slice(&data);
    } else {
        if !out.is_empty() {
            queue.push(out.split().freeze());
        }
        queue.push(data);
    }
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
}

/// `name: value` CRLF.
pub fn put_header(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.put_slice(name);
    buf.put_slice(b": ");
    buf.put_slice(value);
    buf.put_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `digits`.
pub fn itoa(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[at..];
        }
    }
}

/// The line that starts a chunk of `len` bytes: the size in hex, CRLF.
pub fn put_chunk_size(buf: &mut BytesMut, len: usize) {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        buf.put_u8(b"0123456789abcdef"[(len >> (shift * 4)) & 0xf]);
    }
    buf.put_slice(b"\r\n");
}

/// The last chunk, with the trailer section (RFC 9112 §7.1.2).
pub fn put_last_chunk(buf: &mut BytesMut, trailers: Option<&http::HeaderMap>) {
    buf.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if trailer_allowed(name) {
            put_header(buf, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    buf.put_slice(b"\r\n");
}

/// Whether a field may travel in a trailer section (RFC 9110 §6.5.1): not
/// the ones that frame or route the message, control the connection,
/// authenticate, or say how to process the content, which a recipient
/// would have needed before the body; nor the ones the proxy owns
/// (X-Forwarded-For, X-Request-Id, ...: see `exchange::headers`), whose
/// copies in the head it replaces. Others are dropped where trailers are
/// read and where they are written, so none reaches a peer that might merge
/// it into the head.
pub fn trailer_allowed(name: &http::HeaderName) -> bool {
    use http::header::*;
    !matches!(
        *name,
        AUTHORIZATION
            | CACHE_CONTROL
            | CONNECTION
            | CONTENT_ENCODING
            | CONTENT_LENGTH
            | CONTENT_RANGE
            | CONTENT_TYPE
            | EXPECT
            | HOST
            | MAX_FORWARDS
            | PROXY_AUTHENTICATE
            | PROXY_AUTHORIZATION
            | RANGE
            | SET_COOKIE
            | TE
            | TRAILER
            | TRANSFER_ENCODING
            | UPGRADE
            | WWW_AUTHENTICATE
    ) && name.as_str() != "keep-alive"
        && !crate::exchange::proxy_owned(name)
}

/// Drops from `trailers` what [`trailer_allowed`] refuses, for trailers
/// that did not come through the chunked decoder (an HTTP/2 client's). A
/// map with nothing to drop, the usual case, is left as it is.
pub fn retain_allowed_trailers(trailers: &mut http::HeaderMap) {
    if trailers.keys().all(trailer_allowed) {
        return;
    }
    let mut name = None;
    for (next, value) in std::mem::take(trailers) {
        if next.is_some() {
            name = next;
        }
        let name = name
            .as_ref()
            .expect("a map's first value comes with its name");
        if trailer_allowed(name) {
            trailers.append(name.clone(), value);
        }
    }
}

/// Whether every line of `section` (a head or a trailer section as
/// httparse read it, up to and including its blank line) ends with CRLF;
/// `fields` are the offsets where its field lines start. httparse also
/// takes a bare LF for a line end (RFC 9112 §2.2 lets a recipient do so),
/// but xgate does not: a peer in front of it that reads LF otherwise would
/// see other fields, or another end of the message. Each field line starts
/// where the line before it ended, so the two bytes before each field and
/// the blank line at the end are all there is to check.
pub fn lines_end_in_crlf(section: &[u8], fields: impl IntoIterator<Item = usize>) -> bool {
    (section == b"\r\n" || section.ends_with(b"\r\n\r\n"))
        && fields
            .into_iter()
            .all(|at| at == 0 || section[..at].ends_with(b"\r\n"))
}

/// The elements of a comma-separated field value (RFC 9110 §5.6.1),
/// trimmed.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a comma-separated field value lists `token` (in any case).
pub fn lists_token(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|item| item.eq_ignore_ascii_case(token))
}

/// A Content-Length value: digits only (no sign, no space), at most 19.
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for (len, line) in [(0, "0"), (1, "1"), (15, "f"), (16, "10"), (65536, "10000")] {
            let mut buf = BytesMut::new();
            put_chunk_size(&mut buf, len);
            assert_eq!(buf, format!("{line}\r\n"));
        }
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(
            itoa(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn the_last_chunk_carries_only_fields_allowed_in_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-digest", "abc".parse().unwrap());
        trailers.insert(http::header::CONTENT_LENGTH, "5".parse().unwrap());
        trailers.insert(http::header::CONNECTION, "close".parse().unwrap());
        trailers.insert("keep-alive", "timeout=1".parse().unwrap());
        trailers.insert(http::header::SET_COOKIE, "a=b".parse().unwrap());
        for owned in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-request-id",
            "x-real-ip",
        ] {
            trailers.insert(owned, "6.6.6.6".parse().unwrap());
        }
        let mut buf = BytesMut::new();
        put_last_chunk(&mut buf, Some(&trailers));
        assert_eq!(&buf[..], b"0\r\nx-digest: abc\r\n\r\n");
        buf.clear();
        put_last_chunk(&mut buf, None);
        assert_eq!(&buf[..], b"0\r\n\r\n");
    }

    #[test]
    fn lengths_are_plain_digits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+3",
            b"-1",
            b" 3",
            b"3a",
            b"12345678901234567890",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}
