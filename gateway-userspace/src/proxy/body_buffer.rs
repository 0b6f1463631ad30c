//! Reading a request body into memory before the upstream, for policies
//! that decide on it (`opa` with `include_body`): the whole body up to a
//! limit (a larger one is refused with 413: a decision on part of a body
//! would be a decision on another request), kept in the request's
//! extensions for the policy, and sent upstream as the same bytes (and
//! trailers) with an exact length.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, request::Parts, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::{Body, BoxError, Rejection};
use crate::policy::opa::BufferedBody;

/// Reads `body` (at most `limit` bytes), notes it in `parts.extensions`,
/// and gives back a body of the same bytes.
pub async fn read(parts: &mut Parts, body: Body, limit: u64) -> Result<Body, Rejection> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Rejection::PayloadTooLarge);
    }
    // Frame by frame rather than with `http_body_util::Limited`, whose
    // error bound trips the compiler's `Send` check of the forwarding
    // future.
    let mut body = body;
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Rejection::RequestBody)?;
        match frame.into_data() {
            Ok(chunk) => {
                if (data.len() + chunk.len()) as u64 > limit {
                    return Err(Rejection::PayloadTooLarge);
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let data = data.freeze();
    parts.extensions.insert(BufferedBody(data.clone()));
    Ok(Buffered {
        data: (!data.is_empty()).then_some(data),
        trailers,
    }
    .map_err(|never| match never {})
    .boxed())
}

/// `body` as the proxy's [`Body`] type (a plain function: the same
/// conversion written inside the async forwarding function trips the
/// compiler's `Send` check of its future).
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A body read into memory: its bytes, then its trailers.
pub struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for Buffered {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;
    use crate::proxy::test_body::Frames;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method("POST").uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn the_upstream_gets_the_bytes_the_policy_saw() {
        let mut p = parts(&[]);
        let chunks = Frames::new(
            [b"{\"a\":".as_slice(), b"1}".as_slice()]
                .into_iter()
                .map(Bytes::from_static),
            None,
        );
        let body = read(&mut p, boxed(chunks), 100).await.unwrap();
        assert_eq!(body.size_hint().exact(), Some(7));
        assert_eq!(p.extensions.get::<BufferedBody>().unwrap().0, "{\"a\":1}");
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent, "{\"a\":1}");
    }

    #[tokio::test]
    async fn larger_bodies_are_refused() {
        let mut p = parts(&[("content-length", "11")]);
        let declared = read(&mut p, boxed(Full::new(Bytes::from(vec![0u8; 11]))), 10).await;
        assert!(matches!(declared, Err(Rejection::PayloadTooLarge)));
        let mut p = parts(&[]);
        let chunks = Frames::new((0..3).map(|_| Bytes::from(vec![1u8; 4])), None);
        let streamed = read(&mut p, boxed(chunks), 10).await;
        assert!(matches!(streamed, Err(Rejection::PayloadTooLarge)));
        assert!(p.extensions.get::<BufferedBody>().is_none());
    }
}
