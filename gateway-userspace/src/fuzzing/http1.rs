//! HTTP/1.1 as xgate reads it: client connections (request heads, pipelined,
//! with their bodies), chunked bodies on their own, and targets' responses.

use bytes::{Buf, BytesMut};
use http::{header, HeaderMap, Method, StatusCode, Version};

use super::Choices;
use crate::{
    http1::{
        chunked::{ChunkedDecoder, Decoded},
        wire::parse_length,
    },
    proxy::http1::{
        request::{parse_request, BodyFraming, Fields, HeadScan, RequestHead},
        HeadError, HeadLimits,
    },
    upstream::h1::codec::{parse_response, ResponseFraming},
};

/// A client connection's bytes, read as the server reads them: heads
/// (through `HeadScan` and `parse_request`, as `proxy::http1::conn` does),
/// then each body as its head frames it, until the connection would end.
/// The bytes arriving in small pieces must be read exactly as the same
/// bytes arriving at once; every accepted head must keep the framing
/// promises the proxy relies on.
pub fn request(data: &[u8]) {
    let mut choices = Choices::new(data);
    let limits = HeadLimits {
        max_bytes: 64 + usize::from(choices.byte()) * 32,
        // Both sides of the server's stack/heap switch (100 fields).
        max_fields: 1 + usize::from(choices.byte() % 128),
    };
    let step = usize::from(choices.byte()).max(1);
    let wire = choices.rest();
    let at_once = serve(wire, limits, wire.len().max(1));
    let trickled = serve(wire, limits, step);
    if at_once != trickled {
        // One exception: a malformed head whose blank line has not come.
        // A reader that meets a candidate for it (the empty lines allowed
        // before a request line look like one) parses early and refuses;
        // the other still waits for the blank line, which the header
        // timeout bounds. Both are right; nothing else may differ.
        let (a, t) = (at_once.split_last(), trickled.split_last());
        let waiting_or_refused = |e: &Event| matches!(e, Event::Refused(_) | Event::End(_));
        assert!(
            matches!((a, t), (Some((a_last, a_before)), Some((t_last, t_before)))
                if a_before == t_before && waiting_or_refused(a_last) && waiting_or_refused(t_last)),
            "the same bytes read differently in pieces of {step}:\n{at_once:?}\n{trickled:?}"
        );
    }
}

/// What the server made of a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Head(Head),
    Body(Vec<u8>),
    Trailers(Vec<(String, Vec<u8>)>),
    Refused(HeadError),
    BadBody,
    /// The client's bytes ran out here; the bytes not yet taken.
    End(Vec<u8>),
}

/// The parts of a head that matter to what the request means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub fields: Vec<(String, Vec<u8>)>,
    pub framing: BodyFraming,
    pub keep_alive: bool,
}

impl Head {
    fn of(head: &RequestHead) -> Self {
        Self {
            method: head.parts.method.to_string(),
            target: head.parts.uri.to_string(),
            version: head.parts.version,
            fields: field_list(&head.parts.headers),
            framing: head.framing,
            keep_alive: head.keep_alive,
        }
    }
}

pub(crate) fn field_list(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect()
}

/// Runs the server's reading over `wire`, which arrives `step` bytes at a
/// time.
pub(crate) fn serve(wire: &[u8], limits: HeadLimits, step: usize) -> Vec<Event> {
    let mut events = Vec::new();
    let mut pieces = wire.chunks(step);
    let mut buf = BytesMut::new();
    let mut fields = Fields::default();
    let mut scan = HeadScan::default();
    let mut more = |buf: &mut BytesMut| match pieces.next() {
        Some(piece) => {
            buf.extend_from_slice(piece);
            true
        }
        None => false,
    };
    loop {
        // The head.
        let head = loop {
            if !buf.is_empty() && scan.may_be_complete(&buf, limits.max_bytes) {
                match parse_request(&mut buf, limits, &mut fields) {
                    Ok(Some(head)) => {
                        scan.reset();
                        break head;
                    }
                    Ok(None) => scan.incomplete(&buf),
                    Err(error) => {
                        events.push(Event::Refused(error));
                        return events;
                    }
                }
            }
            if !more(&mut buf) {
                events.push(Event::End(buf.to_vec()));
                return events;
            }
        };
        check_head(&head);
        let keep_alive = head.keep_alive && !head.upgrade;
        let framing = head.framing;
        events.push(Event::Head(Head::of(&head)));
        // The body.
        match framing {
            BodyFraming::Empty => {}
            BodyFraming::Length(n) => {
                let mut body = Vec::new();
                let mut left = n;
                while left > 0 {
                    if buf.is_empty() && !more(&mut buf) {
                        events.push(Event::Body(body));
                        events.push(Event::End(Vec::new()));
                        return events;
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    body.extend_from_slice(&buf.split_to(take));
                    left -= take as u64;
                }
                events.push(Event::Body(body));
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                let mut body = Vec::new();
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(data)) => {
                            assert!(!data.is_empty(), "empty data out of a chunked body");
                            body.extend_from_slice(&data);
                        }
                        Ok(Decoded::Trailers(trailers)) => {
                            events.push(Event::Body(std::mem::take(&mut body)));
                            events.push(Event::Trailers(field_list(&trailers)));
                            break;
                        }
                        Ok(Decoded::Done) => {
                            events.push(Event::Body(std::mem::take(&mut body)));
                            break;
                        }
                        Ok(Decoded::NeedMore) => {
                            if !more(&mut buf) {
                                events.push(Event::Body(body));
                                events.push(Event::End(buf.to_vec()));
                                return events;
                            }
                        }
                        Err(_) => {
                            events.push(Event::BadBody);
                            return events;
                        }
                    }
                }
                assert!(decoder.is_done());
            }
        }
        if !keep_alive {
            // The connection ends after this exchange; what follows is
            // never read.
            while more(&mut buf) {}
            events.push(Event::End(buf.to_vec()));
            return events;
        }
    }
}

/// What the proxy behind the parser relies on in an accepted head.
fn check_head(head: &RequestHead) {
    let headers = &head.parts.headers;
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let codings = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    assert!(headers.get_all(header::HOST).iter().count() <= 1);
    for value in headers.values() {
        assert!(
            !value
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "CR, LF or NUL in a value: {value:?}"
        );
    }
    match head.framing {
        BodyFraming::Chunked => {
            assert_eq!(head.parts.version, Version::HTTP_11);
            assert_eq!(lengths, 0, "chunked with a Content-Length");
            assert!(codings >= 1);
        }
        BodyFraming::Length(n) => {
            assert_eq!(codings, 0, "a length with Transfer-Encoding");
            assert_eq!(lengths, 1);
            assert_eq!(
                parse_length(headers[header::CONTENT_LENGTH].as_bytes()),
                Some(n)
            );
        }
        BodyFraming::Empty => {
            // No body read: either none announced, or ambiguous framing
            // that the proxy refuses and after which the connection ends.
            if codings > 0 || lengths > 1 {
                assert!(!head.keep_alive, "ambiguous framing on a kept connection");
            }
        }
    }
    if head.upgrade {
        assert_eq!(head.framing, BodyFraming::Empty);
    }
}

/// A chunked body decoded from the bytes as they come in pieces of the
/// first byte's size, and at once: the data, the trailers, where the body
/// ends and whether it is refused must not depend on how the bytes came.
pub fn chunked(data: &[u8]) {
    let mut choices = Choices::new(data);
    let step = usize::from(choices.byte()).max(1);
    let wire = choices.rest();
    let at_once = decode_chunked(wire, wire.len().max(1));
    let trickled = decode_chunked(wire, step);
    assert_eq!(
        at_once, trickled,
        "a chunked body read differently in pieces of {step}"
    );
}

/// The data, the trailers, and then the bytes left after the body (`Ok`),
/// or that it was refused (`Err`), or that the input ran out (`Ok` with no
/// end).
type Chunked = (
    Vec<u8>,
    Option<Vec<(String, Vec<u8>)>>,
    Result<Option<Vec<u8>>, ()>,
);

fn decode_chunked(wire: &[u8], step: usize) -> Chunked {
    let mut decoder = ChunkedDecoder::default();
    let mut pieces = wire.chunks(step);
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(piece)) => {
                assert!(!piece.is_empty());
                data.extend_from_slice(&piece);
            }
            Ok(Decoded::Trailers(map)) => trailers = Some(field_list(&map)),
            Ok(Decoded::Done) => {
                assert!(decoder.is_done());
                let mut rest = buf.to_vec();
                pieces.for_each(|piece| rest.extend_from_slice(piece));
                return (data, trailers, Ok(Some(rest)));
            }
            Ok(Decoded::NeedMore) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return (data, trailers, Ok(None)),
            },
            Err(_) => return (data, trailers, Err(())),
        }
    }
}

/// A target's bytes on a kept-alive connection: response heads, each read
/// after a request of the method the input picks, and their bodies. Every
/// head that is accepted says one way to frame its body, and the fields the
/// client gets agree with it.
pub fn response(data: &[u8]) {
    const METHODS: [Method; 4] = [Method::GET, Method::HEAD, Method::POST, Method::DELETE];
    let mut choices = Choices::new(data);
    let methods = [choices.byte(), choices.byte(), choices.byte()];
    let mut buf = BytesMut::from(choices.rest());
    for pick in methods {
        let method = &METHODS[usize::from(pick) % METHODS.len()];
        let head = match parse_response(&mut buf, method) {
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => return,
        };
        let headers = &head.headers;
        let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
        assert!(lengths.len() <= 1, "more than one Content-Length goes on");
        let status = head.status;
        if status.is_informational() || status == StatusCode::NO_CONTENT {
            assert!(lengths.is_empty(), "a Content-Length on a {status}");
        }
        match head.framing {
            ResponseFraming::Empty => {
                assert!(
                    *method == Method::HEAD
                        || status.is_informational()
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED
                );
            }
            ResponseFraming::Length(n) => {
                assert!(!headers.contains_key(header::TRANSFER_ENCODING));
                assert_eq!(lengths.len(), 1);
                assert_eq!(parse_length(lengths[0].as_bytes()), Some(n));
                let Ok(n) = usize::try_from(n) else { return };
                if buf.len() < n {
                    return;
                }
                buf.advance(n);
            }
            ResponseFraming::Chunked => {
                assert!(lengths.is_empty(), "chunked with a Content-Length");
                let mut decoder = ChunkedDecoder::default();
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(_)) => {}
                        Ok(Decoded::Trailers(_) | Decoded::Done) => break,
                        Ok(Decoded::NeedMore) | Err(_) => return,
                    }
                }
            }
            ResponseFraming::UntilClose => {
                assert!(!head.keep_alive, "a body to the close on a kept connection");
                return;
            }
        }
        if !head.keep_alive {
            return;
        }
    }
}
