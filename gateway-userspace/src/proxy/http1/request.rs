//! A client's request head (RFC 9112 §2-§3), parsed strictly: what the
//! head says about the body's framing, the connection's future and an
//! upgrade is decided here, once, while the fields are read.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{
    header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE, TRANSFER_ENCODING, UPGRADE},
    request, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version,
};

use crate::http1::wire::{lines_end_in_crlf, list_items, lists_token, parse_length};

/// Header fields parsed on the stack; a listener allowing more parses into
/// a vector.
const STACK_FIELDS: usize = 100;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
}

pub(crate) struct RequestHead {
    pub parts: request::Parts,
    pub framing: BodyFraming,
    /// Whether the client keeps the connection open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before the body.
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field (HTTP/1.1).
    pub upgrade: bool,
    /// `TE: trailers`: the client takes trailer fields in a chunked
    /// response (RFC 9110 §10.1.4).
    pub trailers: bool,
}

/// Why a head is refused; the client gets `status()` and the connection
/// closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than max_header_bytes or max_headers")]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request uses what the server does not implement: {0}")]
    NotImplemented(&'static str),
}

impl HeadError {
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The access log's `rejection` for it.
    pub fn rejection(self) -> &'static str {
        match self {
            HeadError::TooLarge => "head_too_large",
            HeadError::Malformed(_) => "malformed_head",
            HeadError::NotImplemented(_) => "not_implemented",
        }
    }

    /// What the client is told.
    pub(super) fn message(self) -> &'static str {
        match self {
            HeadError::TooLarge => "request header fields too large",
            HeadError::Malformed(_) => "malformed request",
            HeadError::NotImplemented(_) => "transfer coding not implemented",
        }
    }
}

/// Limits on one head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes up to and including the blank line.
    pub max_bytes: usize,
    pub max_fields: usize,
}

/// Where the fields of a head lie, kept by the connection from one head to
/// the next (no allocation per request).
#[derive(Default)]
pub(crate) struct Fields(Vec<Span>);

/// Where the search for the end of a head resumes: a head that arrives in
/// many small reads is looked at once per byte, and parsed once, when its
/// blank line has come (re-parsing it from its start on every read made a
/// head trickled 4 bytes at a time cost time quadratic in its size).
#[derive(Default)]
pub(crate) struct HeadScan(usize);

impl HeadScan {
    /// Whether `buf` may now hold a whole head: a line end right after
    /// another (`\n\n` or `\n\r\n`; the parser decides which are valid)
    /// arrived since the last look, or `buf` reached `max` (the parser then
    /// refuses it). Remembers how far it looked.
    pub fn may_be_complete(&mut self, buf: &[u8], max: usize) -> bool {
        if buf.len() >= max {
            return true;
        }
        for lf in memchr::memchr_iter(b'\n', &buf[self.0.min(buf.len())..]) {
            let end = self.0 + lf;
            if buf[..end].ends_with(b"\n") || buf[..end].ends_with(b"\n\r") {
                return true;
            }
        }
        self.0 = buf.len();
        false
    }

    /// The parser looked at the whole of `buf` and found the head
    /// incomplete: the next look starts where this buffer ends.
    pub fn incomplete(&mut self, buf: &[u8]) {
        self.0 = buf.len();
    }

    /// A head was taken off the buffer: the next one starts at its front.
    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Parses a request head off the front of `buf`. `Ok(None)`: not all of it
/// is in yet (and it is still within the limits).
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    limits: HeadLimits,
    fields: &mut Fields,
) -> Result<Option<RequestHead>, HeadError> {
    let fields = &mut fields.0;
    fields.clear();
    let scanned = if limits.max_fields <= STACK_FIELDS {
        let mut slots: [MaybeUninit<httparse::Header<'_>>; STACK_FIELDS] =
            [const { MaybeUninit::uninit() }; STACK_FIELDS];
        scan(buf, limits, &mut slots[..limits.max_fields], fields)?
    } else {
        let mut slots = vec![MaybeUninit::uninit(); limits.max_fields];
        scan(buf, limits, &mut slots, fields)?
    };
    let Some(scanned) = scanned else {
        return Ok(None);
    };
    // The head is split off and frozen; the target and the values become
    // slices of it, not copies.
    let head = buf.split_to(scanned.len).freeze();
    let method = Method::from_bytes(&head[scanned.method.0..scanned.method.1])
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let uri = Uri::from_maybe_shared(head.slice(scanned.path.0..scanned.path.1))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let version = scanned.version;

    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut seen = Seen::default();
    for span in fields.iter() {
        let name = HeaderName::from_bytes(&head[span.name.0..span.name.1])
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        seen.note(&name, &value);
        headers.append(name, value);
    }

    let framing = seen.framing(version)?;
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        // Ambiguous framing is refused by the proxy (`limits::check_framing`)
        // without reading a body; the connection cannot go on after that.
        keep_alive: seen.keep_alive(version) && !seen.ambiguous(),
        expect_continue: seen.expect_continue && version == Version::HTTP_11,
        // A request with a body is not switched: the new protocol would
        // start where the body ends, which the target decides. It goes on as
        // a plain request (RFC 9110 §7.8 lets a server ignore Upgrade).
        upgrade: seen.upgrade_token
            && seen.upgrade_field
            && version == Version::HTTP_11
            && framing == BodyFraming::Empty,
        trailers: seen.te_trailers,
    }))
}

/// Where the pieces of a head lie in the buffer (offsets from its start).
struct Scanned {
    len: usize,
    method: (usize, usize),
    path: (usize, usize),
    version: Version,
}

#[derive(Clone, Copy)]
pub(super) struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// Runs httparse over `buf` and notes where everything is (the fields in
/// `fields`).
fn scan<'b>(
    buf: &'b [u8],
    limits: HeadLimits,
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    fields: &mut Vec<Span>,
) -> Result<Option<Scanned>, HeadError> {
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, slots)
    {
        Ok(httparse::Status::Complete(len)) if len > limits.max_bytes => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_bytes => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(error) => return Err(HeadError::Malformed(describe(error))),
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    fields.extend(req.headers.iter().map(|h| Span {
        name: span(h.name.as_bytes()),
        value: span(h.value),
    }));
    let method = span(req.method.expect("complete").as_bytes());
    // Empty lines before the request line are skipped (RFC 9112 §2.2), but
    // they too must end in CRLF.
    let skipped = &buf[..method.0];
    if !skipped.chunks(2).all(|line| line == b"\r\n")
        || !lines_end_in_crlf(&buf[..len], fields.iter().map(|f| f.name.0))
    {
        return Err(HeadError::Malformed("line not ended by CRLF"));
    }
    Ok(Some(Scanned {
        len,
        method,
        path: span(req.path.expect("complete").as_bytes()),
        version: match req.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        },
    }))
}

/// What the fields say about framing and the connection, noted as they are
/// read.
#[derive(Default)]
struct Seen {
    lengths: u32,
    length: Option<u64>,
    length_invalid: bool,
    /// Codings named in Transfer-Encoding fields, in order: how many were
    /// `chunked`, and whether the last one was.
    chunked: u32,
    chunked_last: bool,
    /// A coding other than chunked (gzip, deflate, ...): xgate would have to
    /// decode it to frame the body, and forwarding it would hide it.
    other_coding: bool,
    transfer_encoding: bool,
    hosts: u32,
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    upgrade_field: bool,
    expect_continue: bool,
    te_trailers: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == CONTENT_LENGTH {
            self.lengths += 1;
            match parse_length(value.as_bytes()) {
                Some(n) => self.length = Some(n),
                None => self.length_invalid = true,
            }
        } else if *name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            for coding in list_items(value.as_bytes()).filter(|c| !c.is_empty()) {
                self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                if self.chunked_last {
                    self.chunked += 1;
                } else {
                    self.other_coding = true;
                }
            }
        } else if *name == HOST {
            self.hosts += 1;
        } else if *name == CONNECTION {
            for token in list_items(value.as_bytes()) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    self.upgrade_token = true;
                }
            }
        } else if *name == UPGRADE {
            self.upgrade_field = true;
        } else if *name == EXPECT {
            self.expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if *name == TE {
            self.te_trailers |= lists_token(value.as_bytes(), b"trailers");
        }
    }

    /// Content-Length twice, or with Transfer-Encoding: refused by the proxy.
    fn ambiguous(&self) -> bool {
        self.lengths > 1 || (self.lengths == 1 && self.transfer_encoding)
    }

    /// RFC 9112 §6.3 for requests: chunked last, or a valid length, or no
    /// body. What two parsers could read differently has no body here and
    /// is refused before any of it is read.
    fn framing(&self, version: Version) -> Result<BodyFraming, HeadError> {
        if self.hosts > 1 {
            return Err(HeadError::Malformed("more than one Host header"));
        }
        if self.ambiguous() {
            return Ok(BodyFraming::Empty);
        }
        if self.transfer_encoding {
            if version == Version::HTTP_10 {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if !self.chunked_last {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding does not end in chunked",
                ));
            }
            if self.chunked > 1 {
                return Err(HeadError::Malformed("chunked applied more than once"));
            }
            if self.other_coding {
                // RFC 9112 §6.1: 501 for a coding the server does not know
                // how to take off; passing it on unread would let the
                // target see a body the proxy never framed.
                return Err(HeadError::NotImplemented(
                    "a transfer coding other than chunked",
                ));
            }
            return Ok(BodyFraming::Chunked);
        }
        if self.length_invalid {
            return Err(HeadError::Malformed("invalid Content-Length"));
        }
        Ok(match self.length {
            None | Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
        })
    }

    fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::HTTP_11 => !self.close,
            _ => self.keep_alive && !self.close,
        }
    }
}

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "bare CR or LF",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "unsupported HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_fields: 100,
    };

    fn parse(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(raw), LIMITS, &mut Fields::default())
    }

    fn head(raw: &str) -> RequestHead {
        parse(raw).expect("valid").expect("complete")
    }

    #[test]
    fn a_head_becomes_request_parts_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            "POST /api/x?y=1 HTTP/1.1\r\nHost: a.test\r\nX-Two: 1\r\nx-two: 2\r\n\
             Content-Length: 5\r\n\r\nhelloGET",
        );
        let head = parse_request(&mut buf, LIMITS, &mut Fields::default())
            .unwrap()
            .unwrap();
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri, "/api/x?y=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "a.test");
        let two: Vec<_> = head.parts.headers.get_all("x-two").iter().collect();
        assert_eq!(two, ["1", "2"]);
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"helloGET", "the body and what follows stay");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(8192));
        assert_eq!(parse(&long).err(), Some(HeadError::TooLarge));
        let complete_but_long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(8192));
        assert_eq!(parse(&complete_but_long).err(), Some(HeadError::TooLarge));
        let mut many = "GET / HTTP/1.1\r\n".to_string();
        for i in 0..11 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let tight = HeadLimits {
            max_bytes: 8192,
            max_fields: 10,
        };
        assert!(matches!(
            parse_request(
                &mut BytesMut::from(many.as_str()),
                tight,
                &mut Fields::default()
            ),
            Err(HeadError::TooLarge)
        ));
        let roomy = HeadLimits {
            max_bytes: 8192,
            max_fields: 200,
        };
        assert!(parse_request(
            &mut BytesMut::from(many.as_str()),
            roomy,
            &mut Fields::default()
        )
        .unwrap()
        .is_some());
    }

    #[test]
    fn a_trickled_head_is_parsed_once() {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Long: {}\r\nX-Two: b\r\n\r\nGET /next",
            "v".repeat(60_000)
        );
        let mut scan = HeadScan::default();
        let mut buf = BytesMut::new();
        let mut parses = 0;
        let limits = HeadLimits {
            max_bytes: 64 * 1024,
            max_fields: 100,
        };
        let mut parsed = None;
        for piece in head.as_bytes().chunks(4) {
            buf.extend_from_slice(piece);
            if parsed.is_none() && scan.may_be_complete(&buf, limits.max_bytes) {
                parses += 1;
                match parse_request(&mut buf, limits, &mut Fields::default()).unwrap() {
                    Some(head) => {
                        scan.reset();
                        parsed = Some(head);
                    }
                    None => scan.incomplete(&buf),
                }
            }
        }
        assert_eq!(parses, 1, "parsed once, when the blank line came");
        assert_eq!(parsed.unwrap().parts.headers["x-two"], "b");
        assert_eq!(&buf[..], b"GET /next");
        // A bare-LF blank line is a candidate too (the parser judges it),
        // and a head at the size limit is handed to the parser to refuse.
        assert!(HeadScan::default().may_be_complete(b"GET / HTTP/1.1\nHost: a\n\n", 100));
        assert!(HeadScan::default().may_be_complete(b"GET / HTTP/1.1\r\nX: aaaa", 20));
        assert!(!HeadScan::default().may_be_complete(b"GET / HTTP/1.1\r\nX: aaaa", 100));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &str| parse(raw).map(|h| h.unwrap().framing);
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(BodyFraming::Empty)
        );
        assert_eq!(
            framing("PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        for other in [
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: identity, chunked",
        ] {
            let raw = format!("PUT / HTTP/1.1\r\nHost: a\r\n{other}\r\n\r\n");
            let refused = framing(&raw).err();
            assert!(
                matches!(refused, Some(HeadError::NotImplemented(_))),
                "{other}"
            );
            assert_eq!(refused.unwrap().status(), StatusCode::NOT_IMPLEMENTED);
        }
        for bad in [
            "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(
                matches!(framing(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        // Two lengths, or a length with chunked: no body is read, and the
        // connection ends after the refusal.
        for ambiguous in [
            "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let head = head(ambiguous);
            assert_eq!(head.framing, BodyFraming::Empty);
            assert!(!head.keep_alive);
        }
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            // httparse takes a bare LF for a line end; xgate does not.
            "GET / HTTP/1.1\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\n",
            "GET / HTTP/1.1\n\n",
            "\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nX-A: a\nContent-Length: 5\r\n\r\nhello",
        ] {
            assert!(
                matches!(parse(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(parse("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
    }

    #[test]
    fn connection_expect_and_upgrade_are_read() {
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(
            head("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        let ws = head(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(ws.upgrade);
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").upgrade);
        for body in ["Content-Length: 2", "Transfer-Encoding: chunked"] {
            let with_body = head(&format!(
                "POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: x\r\n{body}\r\n\r\n"
            ));
            assert!(!with_body.upgrade, "{body}");
        }
        assert!(
            head("POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: x\r\nContent-Length: 0\r\n\r\n")
                .upgrade
        );
        assert!(
            !head("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade
        );
    }
}
