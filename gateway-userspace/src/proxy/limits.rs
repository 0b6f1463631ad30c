//! Request checks that keep ambiguous or oversized requests away from the
//! upstreams: framing (request smuggling shapes), target length, body size.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, request::Parts};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::{Body, BoxError, Rejection};

/// Refuses framing that two parsers could read differently. The HTTP/1.1
/// server already refuses malformed Content-Length values, obs-fold,
/// invalid header names and values, bare CR or LF, and a Transfer-Encoding
/// that does not end in `chunked`, and reads no body for what is refused
/// here (HTTP/2 frames bodies itself; its Content-Length must still be
/// single).
pub fn check_framing(parts: &Parts) -> Result<(), Rejection> {
    let lengths = parts.headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err(Rejection::BadRequest("more than one Content-Length header"));
    }
    if lengths == 1 && parts.headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(Rejection::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(())
}

/// 414 for a request target longer than `max`.
pub fn check_uri(parts: &Parts, max: usize) -> Result<(), Rejection> {
    let len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > max {
        return Err(Rejection::UriTooLong);
    }
    Ok(())
}

/// 413 at once when the declared length is over `max`; otherwise the body
/// is wrapped so that a chunked body fails once it passes `max`.
pub fn limit_body<B>(parts: &Parts, body: B, max: Option<u64>) -> Result<Body, Rejection>
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(max) = max {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Err(Rejection::PayloadTooLarge);
        }
    }
    if body.is_end_stream() {
        // The usual GET: a body of nothing needs no allocation.
        return Ok(Empty::new().map_err(|never| match never {}).boxed());
    }
    let body = body.map_err(Into::into);
    let Some(max) = max else {
        return Ok(body.boxed());
    };
    Ok(LimitedBody {
        inner: body.boxed(),
        remaining: max,
    }
    .boxed())
}

/// The error a [`LimitedBody`] ends with; found again in the cause chain of
/// the request's [`Rejection::RequestBody`] to answer 413.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the limit")]
pub struct BodyTooLarge;

struct LimitedBody {
    inner: Body,
    remaining: u64,
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;
    use crate::proxy::test_body::Frames;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri("/x?y=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert!(check_framing(&parts(&[("content-length", "5")])).is_ok());
        assert!(
            check_framing(&parts(&[("content-length", "5"), ("content-length", "5")])).is_err()
        );
        assert!(check_framing(&parts(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
    }

    #[test]
    fn long_targets_are_refused() {
        assert!(check_uri(&parts(&[]), 6).is_ok());
        assert!(matches!(
            check_uri(&parts(&[]), 5),
            Err(Rejection::UriTooLong)
        ));
    }

    #[tokio::test]
    async fn declared_and_streamed_bodies_are_limited() {
        let big = || Full::new(Bytes::from(vec![0u8; 10]));
        assert!(matches!(
            limit_body(&parts(&[("content-length", "10")]), big(), Some(9)),
            Err(Rejection::PayloadTooLarge)
        ));
        let ok = limit_body(&parts(&[("content-length", "10")]), big(), Some(10)).unwrap();
        assert_eq!(ok.collect().await.unwrap().to_bytes().len(), 10);
        // A body without a declared length fails as it passes the limit.
        let chunks = futures_chunks(&[4, 4, 4]);
        let limited = limit_body(&parts(&[]), chunks, Some(10)).unwrap();
        let err = limited.collect().await.unwrap_err();
        assert!(err.downcast_ref::<BodyTooLarge>().is_some(), "{err}");
    }

    fn futures_chunks(sizes: &[usize]) -> Frames {
        Frames::new(sizes.iter().map(|n| Bytes::from(vec![1u8; *n])), None)
    }
}
