//! Byte counting on both bodies of an exchange, and the hook that runs once
//! the response is done: at its end of stream, or when it is dropped early
//! (client gone, HEAD, 204, upgrade), so every request gets its line.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Buf;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// What runs once when the response is done, with the response body bytes
/// sent.
pub trait Finish: Send + Sync {
    fn finish(self: Box<Self>, bytes_out: u64);
}

/// The response body, counted; runs its [`Finish`] once.
pub struct LoggedBody<B> {
    inner: B,
    sent: u64,
    finish: Option<Box<dyn Finish>>,
}

impl<B> LoggedBody<B> {
    pub fn new(inner: B, finish: Box<dyn Finish>) -> Self {
        Self {
            inner,
            sent: 0,
            finish: Some(finish),
        }
    }

    fn done(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.finish(self.sent);
        }
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        self.done();
    }
}

impl<B> HttpBody for LoggedBody<B>
where
    B: HttpBody + Unpin,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.remaining() as u64;
                }
                if self.inner.is_end_stream() {
                    self.done();
                }
            }
            Poll::Ready(None) => self.done(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body, counted into a shared cell (read when the response
/// is done).
pub struct CountedBody<B> {
    inner: B,
    received: Arc<AtomicU64>,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, received: Arc<AtomicU64>) -> Self {
        Self { inner, received }
    }
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody + Unpin,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.received
                    .fetch_add(data.remaining() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
