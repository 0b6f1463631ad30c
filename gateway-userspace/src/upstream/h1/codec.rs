//! HTTP/1.1 messages on an upstream connection (RFC 9112): the request head
//! as written, the response head as parsed, and how each body is delimited.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::{
    header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING},
    request,
    uri::Authority,
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version,
};
use hyper::body::SizeHint;

use super::Error;
use crate::{
    exchange::ForwardFields,
    http1::wire::{itoa, parse_length, put_header},
};

/// Header lines a response may carry (hyper's default, for both sides).
pub(super) const MAX_HEADERS: usize = 100;
/// Bytes a response head may take up to its blank line.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body at all.
    Empty,
    /// `Content-Length`: exactly this many bytes follow.
    Length(u64),
    /// `Transfer-Encoding: chunked`: the length is not known up front.
    Chunked,
}

impl RequestFraming {
    /// From what the body says about itself. A body read from the client
    /// under `Content-Length` (either protocol) knows its exact size.
    pub(super) fn of(is_end_stream: bool, hint: &SizeHint) -> Self {
        match hint.exact() {
            _ if is_end_stream => RequestFraming::Empty,
            Some(0) => RequestFraming::Empty,
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        }
    }
}

/// Methods whose requests carry a body by definition: an empty one is sent
/// as `Content-Length: 0` so the target does not wait for one.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// The request head in origin form, `fields` after the request's headers.
/// The message's own framing headers are replaced by the ones `framing`
/// calls for (the client's framing ended at this proxy: the body was
/// decoded there); a missing Host is `authority`.
pub(crate) fn encode_head(
    head: &request::Parts,
    authority: &Authority,
    fields: &ForwardFields,
    framing: RequestFraming,
) -> Bytes {
    let path = head.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut size = head.method.as_str().len() + path.len() + 16;
    for (name, value) in head.headers.iter().chain(fields.iter()) {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut buf = BytesMut::with_capacity(size + authority.as_str().len() + 40);
    buf.put_slice(head.method.as_str().as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(path.as_bytes());
    buf.put_slice(b" HTTP/1.1\r\n");
    // First, as RFC 9110 §7.2 asks of whoever makes it up.
    if !head.headers.contains_key(HOST) {
        put_header(&mut buf, b"host", authority.as_str().as_bytes());
    }
    for (name, value) in &head.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        put_header(&mut buf, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in fields.iter() {
        put_header(&mut buf, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        RequestFraming::Empty if expects_body(&head.method) => {
            buf.put_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => {
            buf.put_slice(b"content-length: ");
            buf.put_slice(itoa(n, &mut [0; 20]));
            buf.put_slice(b"\r\n");
        }
        RequestFraming::Chunked => buf.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.put_slice(b"\r\n");
    buf.freeze()
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Everything until the target closes the connection.
    UntilClose,
}

/// A parsed response head.
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// Whether the target keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parses a response head off the front of `buf`. `Ok(None)`: not all of
/// it is in yet. `method` is the request's (a HEAD response has no body).
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, Error> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return Err(Error::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(Error::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
        Err(error) => return Err(Error::Parse(error)),
    };
    let code = response.code.expect("complete");
    let status = StatusCode::from_u16(code).map_err(|_| Error::Parse(httparse::Error::Status))?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Header values become slices of the head, which stays in one shared
    // buffer: no copy per value. Offsets first, while httparse borrows it
    // (all within MAX_HEAD_BYTES of the start, so they fit in u32).
    let base = buf.as_ptr() as usize;
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let count = response.headers.len();
    for (span, header) in spans.iter_mut().zip(response.headers.iter()) {
        let name = header.name.as_ptr() as usize - base;
        let value = header.value.as_ptr() as usize - base;
        *span = [
            name,
            name + header.name.len(),
            value,
            value + header.value.len(),
        ]
        .map(|at| at as u32);
    }
    let head = buf.split_to(len).freeze();
    // Room for the X-Request-Id the proxy adds to every response, so the
    // map does not grow (and rehash) for it.
    let mut headers = HeaderMap::with_capacity(count + 1);
    // What framing and keep-alive depend on, noted on the way (no lookups
    // in the map afterwards for the usual response).
    let mut seen = Seen::default();
    for span in &spans[..count] {
        let [name_start, name_end, value_start, value_end] = span.map(|at| at as usize);
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| Error::Parse(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| Error::Parse(httparse::Error::HeaderValue))?;
        if name == CONTENT_LENGTH {
            seen.content_length(value.as_bytes());
        } else if name == TRANSFER_ENCODING {
            seen.transfer_encoding = true;
        } else if name == CONNECTION {
            seen.connection = true;
        }
        headers.append(name, value);
    }
    // Content-Length with Transfer-Encoding: a smuggling shape (RFC 9112
    // §6.3). Chunked wins, and the connection is not trusted with
    // another request.
    let both = seen.transfer_encoding && seen.length.is_some();
    let keep_alive = keeps_alive(version, &headers, seen.connection) && !both;
    let framing = response_framing(method, status, &mut headers, seen)?;
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive: keep_alive && framing != ResponseFraming::UntilClose,
    }))
}

/// The framing headers of a response, as its fields are read.
#[derive(Default, Clone, Copy)]
struct Seen {
    connection: bool,
    transfer_encoding: bool,
    /// `Some(Ok(n))`: every Content-Length value said `n`.
    length: Option<Result<u64, ()>>,
    /// Content-Length values, in one field or several (`5, 5`).
    lengths: u32,
}

impl Seen {
    fn content_length(&mut self, value: &[u8]) {
        for item in value.split(|&b| b == b',') {
            self.lengths += 1;
            let n = parse_length(item.trim_ascii()).ok_or(());
            self.length = match (self.length, n) {
                (None, n) => Some(n),
                (Some(Ok(seen)), Ok(n)) if seen == n => Some(Ok(n)),
                _ => Some(Err(())),
            };
        }
    }

    /// The response goes on with exactly one Content-Length, `n`: equal
    /// values repeated (`5, 5`, or two fields) become one.
    fn one_length(&self, headers: &mut HeaderMap, n: u64) {
        if self.lengths > 1 {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

fn keeps_alive(version: Version, headers: &HeaderMap, has_connection: bool) -> bool {
    if !has_connection {
        return version == Version::HTTP_11;
    }
    let has = |token: &str| {
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match version {
        Version::HTTP_11 => !has("close"),
        _ => has("keep-alive"),
    }
}

/// RFC 9112 §6.3, in order. With Transfer-Encoding any Content-Length is
/// dropped (it would contradict the framing the client gets); differing
/// Content-Length values are an error, never a guess; equal ones go on as
/// one. A 1xx or 204 loses its Content-Length (RFC 9110 §8.6 forbids one);
/// a HEAD answer's or a 304's says what a 200 would have had, and goes on
/// when it is valid.
fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
    seen: Seen,
) -> Result<ResponseFraming, Error> {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        if seen.length.is_some() {
            headers.remove(CONTENT_LENGTH);
        }
        return Ok(ResponseFraming::Empty);
    }
    if *method == Method::HEAD || status == StatusCode::NOT_MODIFIED {
        match seen.length {
            Some(Ok(n)) => seen.one_length(headers, n),
            Some(Err(())) => {
                headers.remove(CONTENT_LENGTH);
            }
            None => {}
        }
        return Ok(ResponseFraming::Empty);
    }
    if seen.transfer_encoding {
        if seen.length.is_some() {
            headers.remove(CONTENT_LENGTH);
        }
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => ResponseFraming::Chunked,
            _ => ResponseFraming::UntilClose,
        });
    }
    match seen.length {
        Some(Ok(n)) => {
            seen.one_length(headers, n);
            Ok(ResponseFraming::Length(n))
        }
        Some(Err(())) => Err(Error::BadContentLength),
        None => Ok(ResponseFraming::UntilClose),
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;
    use crate::exchange::Forwarding;

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn authority() -> Authority {
        Authority::from_static("10.0.0.1:8080")
    }

    fn none() -> ForwardFields {
        ForwardFields::default()
    }

    #[test]
    fn forwarding_fields_follow_the_request_headers_and_replace_the_clients() {
        let mut parts = head(
            "GET",
            "/",
            &[
                ("host", "api.test"),
                ("x-forwarded-for", "6.6.6.6"),
                ("accept", "*/*"),
            ],
        );
        let id = HeaderValue::from_static("abc");
        let forwarding = Forwarding::new("198.51.100.7".parse().unwrap(), "https");
        let fields = forwarding.fields(&mut parts.headers, false, &id);
        assert_eq!(
            encode_head(&parts, &authority(), &fields, RequestFraming::Empty),
            "GET / HTTP/1.1\r\nhost: api.test\r\naccept: */*\r\n\
             x-forwarded-for: 198.51.100.7\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: api.test\r\n\
             forwarded: for=198.51.100.7;proto=https;host=\"api.test\"\r\n\
             x-request-id: abc\r\n\r\n"
        );
    }

    #[test]
    fn the_head_gets_framing_of_its_own_and_a_host_when_missing() {
        let parts = head(
            "POST",
            "/a/b?c=d",
            &[
                ("x-one", "1"),
                ("transfer-encoding", "chunked"),
                ("content-length", "99"),
            ],
        );
        let encoded = encode_head(&parts, &authority(), &none(), RequestFraming::Length(12345));
        assert_eq!(
            encoded,
            "POST /a/b?c=d HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-one: 1\r\ncontent-length: 12345\r\n\r\n"
        );

        let parts = head("PUT", "/", &[("host", "api.test")]);
        assert_eq!(
            encode_head(&parts, &authority(), &none(), RequestFraming::Chunked),
            "PUT / HTTP/1.1\r\nhost: api.test\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            encode_head(&parts, &authority(), &none(), RequestFraming::Empty),
            "PUT / HTTP/1.1\r\nhost: api.test\r\ncontent-length: 0\r\n\r\n"
        );
        let parts = head("GET", "/g", &[("host", "api.test")]);
        assert_eq!(
            encode_head(&parts, &authority(), &none(), RequestFraming::Empty),
            "GET /g HTTP/1.1\r\nhost: api.test\r\n\r\n"
        );
    }

    #[test]
    fn request_framing_follows_the_body() {
        assert_eq!(
            RequestFraming::of(true, &SizeHint::default()),
            RequestFraming::Empty
        );
        assert_eq!(
            RequestFraming::of(false, &SizeHint::with_exact(0)),
            RequestFraming::Empty
        );
        assert_eq!(
            RequestFraming::of(false, &SizeHint::with_exact(7)),
            RequestFraming::Length(7)
        );
        assert_eq!(
            RequestFraming::of(false, &SizeHint::default()),
            RequestFraming::Chunked
        );
    }

    fn parse(raw: &str, method: &Method) -> Result<Option<ResponseHead>, Error> {
        parse_response(&mut BytesMut::from(raw), method)
    }

    fn framing(raw: &str) -> ResponseFraming {
        parse(raw, &Method::GET).unwrap().unwrap().framing
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_the_body_left() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\nhello",
        );
        let head = parse_response(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.version, Version::HTTP_11);
        let values: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(head.framing, ResponseFraming::Length(5));
        assert!(head.keep_alive);
        assert_eq!(buf, "hello");
    }

    #[test]
    fn a_complete_head_over_the_limit_is_refused() {
        let mut head = "HTTP/1.1 200 OK\r\n".to_string();
        while head.len() <= MAX_HEAD_BYTES {
            head.push_str(&format!("x-a: {}\r\n", "a".repeat(8000)));
        }
        head.push_str("content-length: 0\r\n\r\n");
        assert!(matches!(
            parse(&head, &Method::GET),
            Err(Error::HeadTooLarge)
        ));
    }

    #[test]
    fn an_incomplete_head_waits_and_an_endless_one_is_refused() {
        assert!(parse("HTTP/1.1 200 OK\r\nx-a: 1\r\n", &Method::GET)
            .unwrap()
            .is_none());
        let endless = format!("HTTP/1.1 200 OK\r\nx-a: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(
            parse(&endless, &Method::GET),
            Err(Error::HeadTooLarge)
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(matches!(
            parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), &Method::GET),
            Err(Error::HeadTooLarge)
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        for raw in [
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw, &Method::GET), Err(Error::Parse(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            ResponseFraming::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            ResponseFraming::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            ResponseFraming::UntilClose
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n"),
            ResponseFraming::Length(3)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n"),
            ResponseFraming::UntilClose
        );
        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            assert_eq!(
                framing(&format!("HTTP/1.1 {status}\r\ncontent-length: 9\r\n\r\n")),
                ResponseFraming::Empty
            );
        }
        let head = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(head.unwrap().unwrap().framing, ResponseFraming::Empty);

        // Both: chunked wins and the length is not passed on.
        let head = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.framing, ResponseFraming::Chunked);
        assert!(!head.headers.contains_key(CONTENT_LENGTH));

        for bad in ["3, 4", "-1", "", "0x10", "99999999999999999999"] {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(
                matches!(parse(&raw, &Method::GET), Err(Error::BadContentLength)),
                "{bad:?}"
            );
        }
    }

    /// The client gets one Content-Length or none, whatever the target sent.
    #[test]
    fn content_length_is_passed_on_once_and_never_on_a_204_or_1xx() {
        let lengths = |raw: &str, method: &Method| {
            let head = parse(raw, method).unwrap().unwrap();
            let values: Vec<String> = head
                .headers
                .get_all(CONTENT_LENGTH)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            (head.framing, values)
        };
        for repeated in [
            "content-length: 5, 5\r\n",
            "content-length: 5\r\ncontent-length: 5\r\n",
            "content-length: 5,5\r\ncontent-length: 5\r\n",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\n{repeated}\r\nhello");
            assert_eq!(
                lengths(&raw, &Method::GET),
                (ResponseFraming::Length(5), vec!["5".to_string()]),
                "{repeated:?}"
            );
            let raw = format!("HTTP/1.1 304 Not Modified\r\n{repeated}\r\n");
            assert_eq!(
                lengths(&raw, &Method::GET),
                (ResponseFraming::Empty, vec!["5".to_string()]),
                "304: what a 200 would have had, once: {repeated:?}"
            );
            let raw = format!("HTTP/1.1 200 OK\r\n{repeated}\r\n");
            assert_eq!(
                lengths(&raw, &Method::HEAD),
                (ResponseFraming::Empty, vec!["5".to_string()]),
                "HEAD: {repeated:?}"
            );
        }
        for status in [
            "204 No Content",
            "101 Switching Protocols",
            "103 Early Hints",
        ] {
            let raw = format!("HTTP/1.1 {status}\r\ncontent-length: 7\r\nx-a: 1\r\n\r\n");
            assert_eq!(
                lengths(&raw, &Method::GET),
                (ResponseFraming::Empty, vec![]),
                "{status}"
            );
        }
        // A bodiless answer's length is not framing: a wrong one is dropped,
        // not passed on and not an error.
        let raw = "HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n";
        assert_eq!(
            lengths(raw, &Method::HEAD),
            (ResponseFraming::Empty, vec![])
        );
    }

    /// RFC 9112 §6.3: a response with both is a smuggling shape; whatever
    /// it meant, the connection is not trusted with another request.
    #[test]
    fn a_response_with_length_and_chunked_ends_its_connection() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
        ] {
            let head = parse(raw, &Method::GET).unwrap().unwrap();
            assert_eq!(head.framing, ResponseFraming::Chunked);
            assert!(!head.keep_alive, "{raw:?}");
        }
    }

    #[test]
    fn keep_alive_by_version_and_connection_header() {
        let keep = |raw: &str| parse(raw, &Method::GET).unwrap().unwrap().keep_alive;
        assert!(keep("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(keep(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.1 200 OK\r\n\r\n"), "delimited by close");
    }
}
