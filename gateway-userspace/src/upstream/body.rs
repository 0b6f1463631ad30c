//! The response body as it streams back from a target: keeps the request
//! counted as in flight until the body ends or is dropped (least_conn and
//! p2c_ewma see slow downloads), and cuts the body off when the target goes
//! quiet for longer than `read_timeout`, so the client sees a truncated
//! response instead of waiting forever.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{client::ResponseBody, target::InFlight};
use crate::{exchange::BoxError, http1::wire::retain_allowed_trailers};

/// The target sent nothing for `read_timeout` in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("upstream {target} sent no body data for {timeout_ms} ms")]
pub struct ReadTimeout {
    pub target: SocketAddr,
    pub timeout_ms: u128,
}

/// How a response body can fail.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The target's connection failed mid-body (reset, bad framing).
    #[error("{0}")]
    Upstream(#[source] BoxError),
    #[error(transparent)]
    ReadTimeout(#[from] ReadTimeout),
}

/// Generic for tests; the proxy uses it over the client's [`ResponseBody`].
#[derive(Debug)]
pub struct UpstreamBody<B = ResponseBody> {
    /// `None` once the body has ended, failed or timed out.
    inner: Option<B>,
    in_flight: Option<InFlight>,
    target: SocketAddr,
    read_timeout: Duration,
    /// When the proxy last asked for data that has not come yet. Only
    /// waiting on the target counts, not a slow client.
    waiting_since: Option<Instant>,
    /// Created on the first wait, reused after.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B: HttpBody> UpstreamBody<B> {
    pub fn new(inner: B, in_flight: InFlight, target: SocketAddr, read_timeout: Duration) -> Self {
        let mut body = Self {
            inner: Some(inner),
            in_flight: Some(in_flight),
            target,
            read_timeout,
            waiting_since: None,
            timer: None,
        };
        if body.inner.as_ref().is_some_and(HttpBody::is_end_stream) {
            // No body (204, HEAD): the request is over now.
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        self.inner = None;
        self.in_flight = None;
        self.timer = None;
    }
}

impl<B> HttpBody for UpstreamBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                this.waiting_since = None;
                // Every target's trailers reach the client through here, an
                // HTTP/2 target's to an HTTP/2 client included.
                if let Some(trailers) = frame.trailers_mut() {
                    retain_allowed_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finish();
                Poll::Ready(Some(Err(BodyError::Upstream(error.into()))))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let deadline = since + this.read_timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.finish();
                let error = ReadTimeout {
                    target: this.target,
                    timeout_ms: this.read_timeout.as_millis(),
                };
                tracing::warn!(%error, "response body cut off");
                Poll::Ready(Some(Err(error.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{exchange::test_body::Frames, upstream::target::targets};

    /// A body fed chunk by chunk from the test.
    #[derive(Debug)]
    struct Fed(mpsc::Receiver<Bytes>);

    impl HttpBody for Fed {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn fed() -> (mpsc::Sender<Bytes>, Fed) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Fed(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_target_is_cut_off_after_the_read_timeout() {
        let target = &targets(&[1])[0];
        let (tx, rx) = fed();
        let mut body = UpstreamBody::new(rx, target.start(), target.addr, TIMEOUT);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        assert_eq!(target.in_flight(), 1);

        // The target goes quiet; paused time jumps to the deadline.
        let started = Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), TIMEOUT);
        let BodyError::ReadTimeout(timeout) = error else {
            panic!("{error:?}")
        };
        assert_eq!(timeout.timeout_ms, 5000);
        assert_eq!(target.in_flight(), 0, "released when cut off");
        assert!(body.frame().await.is_none());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_is_the_gap_between_chunks_not_the_whole_body() {
        let target = &targets(&[1])[0];
        let (tx, rx) = fed();
        let body = UpstreamBody::new(rx, target.start(), target.addr, TIMEOUT);
        // Ten chunks, each 4 s apart: 40 s in all, never 5 s of silence.
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let collected = body.collect().await.expect("no timeout").to_bytes();
        assert_eq!(collected.len(), 10);
        feeder.await.unwrap();
        assert_eq!(target.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_does_not_count_against_the_target() {
        let target = &targets(&[1])[0];
        let (tx, rx) = fed();
        let mut body = UpstreamBody::new(rx, target.start(), target.addr, TIMEOUT);
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // The client takes 60 s before asking for more; the target had the
        // next chunk ready all along.
        tokio::time::sleep(Duration::from_secs(60)).await;
        tx.send(Bytes::from_static(b"b")).await.unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "b"
        );
    }

    #[tokio::test]
    async fn trailers_lose_the_fields_a_trailer_section_may_not_carry() {
        let target = &targets(&[1])[0];
        let mut trailers = http::HeaderMap::new();
        for (name, value) in [
            ("x-request-id", "from-the-target"),
            ("content-length", "9"),
            ("x-checksum", "42"),
        ] {
            trailers.insert(name, value.parse().unwrap());
        }
        let frames = Frames::new([Bytes::from_static(b"hi")], Some(trailers));
        let body = UpstreamBody::new(frames, target.start(), target.addr, TIMEOUT);
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().expect("trailers");
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["x-checksum"], "42");
    }

    #[tokio::test]
    async fn a_request_counts_until_its_body_ends_or_is_dropped() {
        let target = &targets(&[1])[0];
        let (tx, rx) = fed();
        let body = UpstreamBody::new(rx, target.start(), target.addr, TIMEOUT);
        assert_eq!(target.in_flight(), 1);
        drop(tx);
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
        assert_eq!(target.in_flight(), 0, "ended");

        let (_tx, rx) = fed();
        let body = UpstreamBody::new(rx, target.start(), target.addr, TIMEOUT);
        assert_eq!(target.in_flight(), 1);
        drop(body);
        assert_eq!(target.in_flight(), 0, "dropped (client went away)");

        let empty = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| -> hyper::Error { match never {} });
        let body = UpstreamBody::new(empty, target.start(), target.addr, TIMEOUT);
        assert_eq!(target.in_flight(), 0, "no body at all: over at once");
        assert!(body.is_end_stream());
    }
}
