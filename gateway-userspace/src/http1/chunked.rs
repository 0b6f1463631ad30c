//! The chunked transfer coding (RFC 9112 §7.1), decoded in place: data
//! comes out as slices of the read buffer, never copied. Request bodies
//! (the server) and response bodies (the upstream client) alike.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::wire::{lines_end_in_crlf, trailer_allowed};

/// What is wrong with a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

type Error = Malformed;

/// A chunk-size line (size and extensions) may take this many bytes.
const MAX_SIZE_LINE: usize = 4096;
/// Chunk extensions (`;name=value` after a size) may take this many bytes
/// in all, per body. xgate reads them and passes none on; without a total,
/// a body of one-byte chunks each with a 4 KiB extension would cost 4 KiB of
/// reading per byte of data. Real senders use few extensions or none.
const MAX_EXTENSIONS: usize = 16 * 1024;
/// The trailer section may take this many bytes.
const MAX_TRAILERS: usize = 16 * 1024;
const MAX_TRAILER_FIELDS: usize = 32;

#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of chunk extensions read so far in this body.
    extensions: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    /// Data bytes left in this chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The last chunk and the trailer section are through.
    Done,
    /// `buf` holds no more of the body: read, then decode again.
    NeedMore,
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes what it can off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf, MAX_SIZE_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let (size, extensions) = chunk_size(&line)?;
                    self.extensions += extensions;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(Malformed("chunk extensions too large"));
                    }
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        self.state = State::Done;
                        return Ok(Decoded::Done);
                    }
                    let Some((len, trailers)) = trailer_section(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let _ = buf.split_to(len);
                    self.state = State::Done;
                    return Ok(Decoded::Trailers(trailers));
                }
                State::Done => return Ok(Decoded::Done),
            }
        }
    }
}

/// One CRLF-terminated line off the front of `buf`, without its CRLF.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Error> {
    let Some(lf) = memchr::memchr(b'\n', buf) else {
        if buf.len() > max {
            return Err(Malformed("chunk-size line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' || lf > max {
        return Err(Malformed("chunk-size line not ended by CRLF"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// The hex size at the start of a chunk-size line, and the bytes after it
/// (the extensions, which are ignored).
fn chunk_size(line: &[u8]) -> Result<(u64, usize), Error> {
    let digits = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(Malformed("bad chunk size"));
    }
    // BWS (spaces and tabs only), then nothing or the extensions. A CR,
    // NUL or other control byte is in neither: a parser that ends the line
    // at a bare CR would read the body differently.
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len())..];
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(Malformed("bad chunk size"));
    }
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Malformed("control byte in a chunk extension"));
    }
    let hex = std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII");
    let size = u64::from_str_radix(hex, 16).map_err(|_| Malformed("bad chunk size"))?;
    Ok((size, line.len() - digits))
}

/// The trailer section at the start of `buf` (RFC 9112 §7.1.2) and the
/// bytes it takes: exactly as many as the parser read, so that a message
/// pipelined behind it starts where it ends. `None`: not all of it is in.
fn trailer_section(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, fields))) if len <= MAX_TRAILERS => (len, fields),
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Err(Malformed("trailer section too large"))
        }
        Err(_) => return Err(Malformed("malformed trailer section")),
    };
    let base = buf.as_ptr() as usize;
    let starts = fields.iter().map(|f| f.name.as_ptr() as usize - base);
    if !lines_end_in_crlf(&buf[..len], starts) {
        return Err(Malformed("trailer section line not ended by CRLF"));
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Malformed("malformed trailer section"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| Malformed("malformed trailer section"))?;
        if trailer_allowed(&name) {
            map.append(name, value);
        }
    }
    Ok(Some((len, map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; returns the data and trailers.
    fn decode(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), Error> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(chunk) => data.extend_from_slice(&chunk),
                Decoded::Trailers(map) => trailers = Some(map),
                Decoded::Done => return Ok((data, trailers, buf)),
                Decoded::NeedMore => {
                    assert!(fed < wire.len(), "ran out of input");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunks_decode_however_the_bytes_arrive() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA \r\n0123456789\r\n0\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers, rest) = decode(wire, step).unwrap();
            assert_eq!(data, b"hello 0123456789", "step {step}");
            assert!(trailers.is_none());
            assert!(
                b"NEXT".starts_with(&rest),
                "step {step}: the next message is left"
            );
        }
    }

    #[test]
    fn trailers_come_out_as_a_header_map() {
        let wire = b"3\r\nabc\r\n0\r\nx-checksum: 42\r\nContent-Length: 9\r\nx-other: a\r\n\
                     Transfer-Encoding: chunked\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\n\
                     Forwarded: for=6.6.6.6\r\nX-Request-Id: forged\r\nX-Real-IP: 6.6.6.6\r\n\
                     X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n";
        for step in [1, 5, wire.len()] {
            let (data, trailers, _) = decode(wire, step).unwrap();
            assert_eq!(data, b"abc");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["x-checksum"], "42");
            assert_eq!(trailers["x-other"], "a");
            assert_eq!(
                trailers.len(),
                2,
                "framing, routing and the proxy's fields dropped: {trailers:?}"
            );
        }
    }

    #[test]
    fn chunk_extensions_are_limited_per_body() {
        let body = |chunks: usize| {
            let extension = format!(";e={}", "x".repeat(4000));
            let mut wire = String::new();
            for _ in 0..chunks {
                wire.push_str(&format!("1{extension}\r\na\r\n"));
            }
            wire.push_str("0\r\n\r\n");
            wire
        };
        let within = body(4);
        assert_eq!(decode(within.as_bytes(), 999).unwrap().0, b"aaaa");
        let over = body(5);
        assert_eq!(
            decode(over.as_bytes(), 999).err(),
            Some(Malformed("chunk extensions too large"))
        );
    }

    /// httparse takes a bare LF for a line end; a trailer section must not
    /// (nor may it swallow the request pipelined after it).
    #[test]
    fn a_bare_lf_in_the_trailer_section_is_an_error() {
        for wire in [
            &b"0\r\n\n"[..],
            b"0\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"0\r\nx-a: 1\n\r\n",
            b"0\r\nx-a: 1\r\n\n",
            b"0\r\nx-a: 1\nx-b: 2\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            for step in [1, wire.len()] {
                assert_eq!(
                    decode(wire, step).err(),
                    Some(Malformed("trailer section line not ended by CRLF")),
                    "{:?} step {step}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }

    /// Found by the http1_differential fuzz target's reference parser: a
    /// bare CR (or another control character) in a chunk-size line was
    /// skipped as whitespace or kept as part of an extension.
    #[test]
    fn control_characters_in_a_chunk_size_line_are_an_error() {
        for wire in [
            &b"5\r;x\r\nhello\r\n0\r\n\r\n"[..],
            b"5\x0c\r\nhello\r\n0\r\n\r\n",
            b"5;a=\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a=b\x00\r\nhello\r\n0\r\n\r\n",
            b"5;\x7f\r\nhello\r\n0\r\n\r\n",
        ] {
            for step in [1, wire.len()] {
                assert!(decode(wire, step).is_err(), "{wire:?} step {step}");
            }
        }
        let tabs = b"5\t;\ta=\"b c\"\t\r\nhello\r\n0\r\n\r\n";
        assert_eq!(decode(tabs, tabs.len()).unwrap().0, b"hello");
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            // A bare CR or a control byte before the line's CRLF.
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\0\r\nhello\r\n0\r\n\r\n",
            b"5\x0c\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(decode(wire, wire.len()).is_err(), "{wire:?}");
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_SIZE_LINE));
        assert!(decode(long.as_bytes(), long.len()).is_err());
    }
}
