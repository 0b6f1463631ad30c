//! The HTTP/1.1 server against an independent parser: no request may be
//! understood one way by xgate and another way by whoever reads it next.
//!
//! For every head the server accepts (and the proxy's framing check lets
//! through): the reference parser (`reference`, RFC 9112 alone) must read
//! the same method, target, version, fields, framing, body and end of the
//! message from the same bytes. Then the request as xgate sends it to a
//! target (`upstream::h1::codec::encode_head`, the body re-framed) must
//! read the same again to httparse in its strict default and to the
//! reference, and end exactly where xgate's message ends.

use bytes::{BufMut, BytesMut};
use http::{header, uri::Authority, Method};

use super::reference::{self, Framing};
use crate::{
    exchange::ForwardFields,
    http1::{
        chunked::{ChunkedDecoder, Decoded},
        wire::{put_chunk_size, put_last_chunk, trailer_allowed},
    },
    proxy::{
        http1::{
            request::{parse_request, BodyFraming, Fields},
            HeadLimits,
        },
        limits::check_framing,
    },
    upstream::h1::codec::{encode_head, RequestFraming},
};

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 16 * 1024,
    max_fields: 100,
};

pub fn request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = parse_request(&mut buf, LIMITS, &mut Fields::default()) else {
        return;
    };
    if check_framing(&head.parts).is_err() {
        return;
    }
    let head_len = data.len() - buf.len();
    let theirs = match reference::parse_head(data) {
        Ok(Some(theirs)) => theirs,
        other => panic!("xgate accepted a head the reference reads as {other:?}"),
    };
    assert_eq!(head_len, theirs.len, "the head ends elsewhere");
    let parts = &head.parts;
    assert_eq!(parts.method.as_str().as_bytes(), theirs.method, "method");
    // An origin-form target means itself (a fragment is no part of it);
    // other forms are sent in origin form, checked below.
    if theirs.target.starts_with(b"/") {
        let end = theirs.target.iter().position(|&b| b == b'#');
        assert_eq!(
            parts.uri.to_string().as_bytes(),
            &theirs.target[..end.unwrap_or(theirs.target.len())],
            "request target"
        );
    }
    let minor = match parts.version {
        http::Version::HTTP_11 => 1,
        _ => 0,
    };
    assert_eq!(minor, theirs.minor, "version");
    assert_eq!(
        by_name(ours(&parts.headers)),
        by_name(theirs.fields.clone()),
        "fields"
    );
    let framing = match head.framing {
        BodyFraming::Empty => Framing::None,
        BodyFraming::Length(n) => Framing::Length(n),
        BodyFraming::Chunked => Framing::Chunked,
    };
    assert_eq!(framing, theirs.framing, "body framing");

    // The body, where all of it is in.
    let rest = &data[head_len..];
    let body = match head.framing {
        BodyFraming::Empty => Some((Vec::new(), Vec::new(), 0)),
        BodyFraming::Length(n) => usize::try_from(n)
            .ok()
            .filter(|&n| n <= rest.len())
            .map(|n| (rest[..n].to_vec(), Vec::new(), n)),
        BodyFraming::Chunked => chunked(rest),
    };
    let Some((body, trailers, body_len)) = body else {
        return;
    };
    if head.framing == BodyFraming::Chunked {
        match reference::parse_chunked(rest) {
            Ok(Some((data, their_trailers, len))) => {
                assert_eq!(body, data, "chunked data");
                assert_eq!(len, body_len, "the chunked body ends elsewhere");
                let allowed: Vec<_> = their_trailers
                    .into_iter()
                    .filter(|(name, _)| {
                        header::HeaderName::from_bytes(name).is_ok_and(|n| trailer_allowed(&n))
                    })
                    .map(|(name, value)| (String::from_utf8_lossy(&name).into_owned(), value))
                    .collect();
                assert_eq!(by_name(trailers.clone()), by_name(allowed), "trailers");
            }
            other => panic!("xgate accepted a chunked body the reference reads as {other:?}"),
        }
    }

    // The request as it goes to a target.
    let sent_framing = match head.framing {
        BodyFraming::Empty => RequestFraming::Empty,
        BodyFraming::Length(n) => RequestFraming::Length(n),
        BodyFraming::Chunked => RequestFraming::Chunked,
    };
    let authority = Authority::from_static("target.invalid");
    let mut wire = BytesMut::from(
        &encode_head(parts, &authority, &ForwardFields::default(), sent_framing)[..],
    );
    match head.framing {
        BodyFraming::Empty => {}
        BodyFraming::Length(_) => wire.put_slice(&body),
        BodyFraming::Chunked => {
            if !body.is_empty() {
                put_chunk_size(&mut wire, body.len());
                wire.put_slice(&body);
                wire.put_slice(b"\r\n");
            }
            let mut map = http::HeaderMap::new();
            for (name, value) in &trailers {
                map.append(
                    header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    header::HeaderValue::from_bytes(value).unwrap(),
                );
            }
            put_last_chunk(&mut wire, Some(&map));
        }
    }
    let sent = &wire[..];
    let again = match reference::parse_head(sent) {
        Ok(Some(again)) => again,
        other => panic!("the reference reads what xgate sends as {other:?}"),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    assert_eq!(again.method, theirs.method);
    assert_eq!(again.target, path.as_bytes());
    assert_eq!(again.minor, 1);
    let framing_field =
        |(name, _): &(Vec<u8>, Vec<u8>)| name == b"content-length" || name == b"transfer-encoding";
    let mut expected: Vec<_> = theirs
        .fields
        .iter()
        .filter(|f| !framing_field(f))
        .cloned()
        .collect();
    if !parts.headers.contains_key(header::HOST) {
        expected.push((b"host".to_vec(), b"target.invalid".to_vec()));
    }
    let sent_fields: Vec<_> = again
        .fields
        .iter()
        .filter(|f| !framing_field(f))
        .cloned()
        .collect();
    assert_eq!(by_name(sent_fields), by_name(expected), "fields sent");
    let expects_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    assert_eq!(again.framing, theirs.framing, "framing sent");
    if theirs.framing == Framing::None {
        let lengths: Vec<_> = again.fields.iter().filter(|f| framing_field(f)).collect();
        if expects_body {
            assert_eq!(lengths, [&(b"content-length".to_vec(), b"0".to_vec())]);
        } else {
            assert!(lengths.is_empty());
        }
    }
    let sent_body_len = match again.framing {
        Framing::None => 0,
        Framing::Length(n) => {
            assert_eq!(&sent[again.len..], &body[..], "body sent");
            usize::try_from(n).unwrap()
        }
        Framing::Chunked => match reference::parse_chunked(&sent[again.len..]) {
            Ok(Some((data, sent_trailers, len))) => {
                assert_eq!(data, body, "chunked data sent");
                let sent_trailers = sent_trailers
                    .into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), v))
                    .collect();
                assert_eq!(by_name(sent_trailers), by_name(trailers), "trailers sent");
                len
            }
            other => panic!("the reference reads the chunked body sent as {other:?}"),
        },
    };
    assert_eq!(
        again.len + sent_body_len,
        sent.len(),
        "the message sent ends elsewhere than it was written to"
    );

    // httparse, strict, agrees on the head sent.
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut strict = httparse::Request::new(&mut slots);
    match strict.parse(sent) {
        Ok(httparse::Status::Complete(len)) => assert_eq!(len, again.len, "httparse: head end"),
        other => panic!("httparse reads the head sent as {other:?}"),
    }
    assert_eq!(strict.method.map(str::as_bytes), Some(&again.method[..]));
    assert_eq!(strict.path.map(str::as_bytes), Some(&again.target[..]));
    let strict_fields = strict
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase().into_bytes(), h.value.to_vec()))
        .collect();
    assert_eq!(
        by_name(strict_fields),
        by_name(again.fields),
        "httparse: fields"
    );
}

/// A body as read: its data, its trailers, the bytes it took.
type BodyRead = (Vec<u8>, Vec<(String, Vec<u8>)>, usize);

/// xgate's chunked decoder over the whole of `rest`: the data, the trailers
/// it keeps, the bytes the body took; `None` when it is refused or not all
/// there.
fn chunked(rest: &[u8]) -> Option<BodyRead> {
    let mut buf = BytesMut::from(rest);
    let mut decoder = ChunkedDecoder::default();
    let mut data = Vec::new();
    loop {
        match decoder.decode(&mut buf).ok()? {
            Decoded::Data(piece) => data.extend_from_slice(&piece),
            Decoded::Trailers(map) => {
                return Some((data, super::http1::field_list(&map), rest.len() - buf.len()))
            }
            Decoded::Done => return Some((data, Vec::new(), rest.len() - buf.len())),
            Decoded::NeedMore => return None,
        }
    }
}

fn ours(headers: &http::HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Fields grouped by name (a `HeaderMap` keeps the order of each name's
/// values, not the order between names).
fn by_name<N: Ord + Clone>(mut fields: Vec<(N, Vec<u8>)>) -> Vec<(N, Vec<u8>)> {
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}
