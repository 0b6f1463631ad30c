//! The response as it goes to the client: how its body is delimited, and
//! its head.

use std::{cell::RefCell, time::SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::{
    header::{CONTENT_LENGTH, DATE, TRANSFER_ENCODING},
    response, Method, StatusCode, Version,
};
use hyper::body::SizeHint;

use crate::http1::wire::{itoa, parse_length, put_header};

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: a HEAD request, 1xx, 204, 304.
    None,
    /// `Content-Length`: exactly this many bytes.
    Length(u64),
    Chunked,
    /// HTTP/1.0 client, length unknown: the body ends when the connection
    /// closes.
    UntilClose,
}

/// What the request said that shapes its response.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exchange<'a> {
    pub method: &'a Method,
    pub version: Version,
    /// The client asked for trailers (`TE: trailers`); without it a chunked
    /// response ends with the last chunk alone, as hyper's server did.
    pub trailers: bool,
}

/// Picks the framing (RFC 9112 §6.3): the response's own Content-Length,
/// else the body's exact size, else chunked (HTTP/1.1) or until close.
pub(super) fn framing(exchange: Exchange<'_>, head: &response::Parts, hint: &SizeHint) -> Framing {
    let status = head.status;
    if *exchange.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Framing::None;
    }
    if exchange.version == Version::HTTP_11 && head.headers.contains_key(TRANSFER_ENCODING) {
        return Framing::Chunked;
    }
    if let Some(n) = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| parse_length(v.as_bytes()))
    {
        return Framing::Length(n);
    }
    match hint.exact() {
        Some(n) => Framing::Length(n),
        None if exchange.version == Version::HTTP_11 => Framing::Chunked,
        None => Framing::UntilClose,
    }
}

/// The head, onto the end of `out`. The framing fields are the ones
/// `framing` calls for; `Date` is added when the response has none;
/// `close` says the connection ends after this response.
pub(super) fn encode_head(
    out: &mut BytesMut,
    exchange: Exchange<'_>,
    head: &response::Parts,
    framing: Framing,
    close: bool,
) {
    let mut size = 64;
    for (name, value) in &head.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    out.reserve(size);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(head.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        head.status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.put_slice(b"\r\n");
    let mut dated = false;
    let mut chunked_last = false;
    let mut length_given = false;
    for (name, value) in &head.headers {
        if *name == CONTENT_LENGTH {
            // Passed on when it is the framing, or says what a bodiless
            // answer would have had (HEAD, 304).
            if !matches!(framing, Framing::Length(_) | Framing::None) {
                continue;
            }
            length_given = true;
        } else if *name == TRANSFER_ENCODING {
            if framing != Framing::Chunked {
                continue;
            }
            chunked_last = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if *name == DATE {
            dated = true;
        }
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::Length(n) if !length_given => {
            out.put_slice(b"content-length: ");
            out.put_slice(itoa(n, &mut [0; 20]));
            out.put_slice(b"\r\n");
        }
        Framing::Chunked if !chunked_last => out.put_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !dated {
        with_date(|date| put_header(out, b"date", date));
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    } else if exchange.version == Version::HTTP_10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
}

/// A complete response the server makes itself (a refused head, a late
/// one), with a JSON body like the proxy's own rejections; the connection
/// closes after it.
pub(super) fn server_response(status: StatusCode, message: &str) -> Bytes {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut out = BytesMut::with_capacity(body.len() + 160);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.put_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.put_slice(itoa(body.len() as u64, &mut [0; 20]));
    out.put_slice(b"\r\n");
    with_date(|date| put_header(&mut out, b"date", date));
    out.put_slice(b"connection: close\r\n\r\n");
    out.put_slice(body.as_bytes());
    out.freeze()
}

/// The current time as an HTTP date, formatted once a second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            *date = (second, httpdate::fmt_http_date(now));
        }
        f(date.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Response};

    use super::*;

    fn parts(status: u16, headers: &[(&str, &str)]) -> response::Parts {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const GET11: Exchange<'static> = Exchange {
        method: &Method::GET,
        version: Version::HTTP_11,
        trailers: false,
    };

    #[test]
    fn framing_is_chosen_as_rfc_9112_says() {
        let exact = SizeHint::with_exact(5);
        let unknown = SizeHint::default();
        assert_eq!(framing(GET11, &parts(200, &[]), &exact), Framing::Length(5));
        assert_eq!(
            framing(GET11, &parts(200, &[("content-length", "9")]), &unknown),
            Framing::Length(9)
        );
        assert_eq!(framing(GET11, &parts(200, &[]), &unknown), Framing::Chunked);
        let get10 = Exchange {
            method: &Method::GET,
            version: Version::HTTP_10,
            trailers: false,
        };
        assert_eq!(
            framing(get10, &parts(200, &[]), &unknown),
            Framing::UntilClose
        );
        let head = Exchange {
            method: &Method::HEAD,
            version: Version::HTTP_11,
            trailers: false,
        };
        assert_eq!(
            framing(head, &parts(200, &[("content-length", "9")]), &unknown),
            Framing::None
        );
        for status in [101, 204, 304] {
            assert_eq!(framing(GET11, &parts(status, &[]), &unknown), Framing::None);
        }
    }

    #[test]
    fn heads_carry_the_framing_date_and_connection() {
        let encode = |exchange, head: &response::Parts, framing, close| {
            let mut out = BytesMut::new();
            encode_head(&mut out, exchange, head, framing, close);
            String::from_utf8(out.to_vec()).unwrap()
        };
        let text = encode(
            GET11,
            &parts(200, &[("x-a", "1")]),
            Framing::Length(5),
            false,
        );
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 5\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(!text.contains("connection"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));

        let dated = parts(404, &[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let text = encode(GET11, &dated, Framing::Chunked, true);
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert_eq!(text.matches("date:").count(), 1, "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");

        // A target's chunked coding is kept once, not doubled.
        let mut coded = parts(200, &[]);
        coded
            .headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let text = encode(GET11, &coded, Framing::Chunked, false);
        assert_eq!(text.matches("chunked").count(), 1, "{text}");

        let get10 = Exchange {
            method: &Method::GET,
            version: Version::HTTP_10,
            trailers: false,
        };
        let text = encode(get10, &parts(200, &[]), Framing::Length(0), false);
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    }

    #[test]
    fn server_responses_are_complete_json_answers() {
        let raw = server_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too large");
        let text = std::str::from_utf8(&raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        assert_eq!(body, r#"{"message":"too large"}"#);
    }
}
