//! The response body on its way to the client: framed as the head said
//! (length, chunks, until close), small pieces gathered behind the head and
//! written together, large ones written from where they are; and the send
//! timeout that bounds how long the client may leave it unread.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use hyper::body::Body as HttpBody;
use tokio::io::AsyncWrite;

use super::{
    body::{lock, SharedIo},
    response::Framing,
    Error,
};
use crate::{
    http1::wire::{put_data, put_last_chunk, WriteQueue, GATHER_MAX},
    proxy::{
        conn_timer::{ConnDeadline, ConnTimer},
        Body,
    },
};

/// Writes what is queued, then flushes (TLS holds records until then).
pub(super) fn flush<T: AsyncWrite + Unpin>(
    shared: &SharedIo<T>,
    queue: &mut WriteQueue,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Error>> {
    let mut io = lock(shared);
    ready!(queue.poll_flush(&mut io.stream, cx)).map_err(Error::Write)?;
    ready!(Pin::new(&mut io.stream).poll_flush(cx)).map_err(Error::Write)?;
    Poll::Ready(Ok(()))
}

/// [`flush`], failing with [`Error::SendTimeout`] once the client has taken
/// no bytes for the send timeout.
pub(super) fn flush_within<T: AsyncWrite + Unpin>(
    shared: &SharedIo<T>,
    queue: &mut WriteQueue,
    send: &mut SendTimeout<'_>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Error>> {
    // Cleared here, `wrote_any` says whether this flush moved any bytes.
    queue.wrote_any = false;
    match flush(shared, queue, cx) {
        Poll::Ready(result) => {
            send.moved();
            Poll::Ready(result)
        }
        Poll::Pending => send.poll_stalled(queue.wrote_any, cx).map(Err),
    }
}

/// A connection's send timeout: the longest the client may take to accept
/// any more bytes of a response (nginx's `send_timeout`). Armed only when a
/// write finds the socket full, on the connection's timer, so a client that
/// keeps up costs no clock read and no timer.
pub(super) struct SendTimeout<'t> {
    timer: &'t ConnTimer,
    timeout: Duration,
    /// The deadline of the wait in progress: set when a write finds the
    /// socket full, cleared when a write moves bytes.
    stall: Option<ConnDeadline>,
}

impl<'t> SendTimeout<'t> {
    pub(super) fn new(timer: &'t ConnTimer, timeout: Duration) -> Self {
        Self {
            timer,
            timeout,
            stall: None,
        }
    }

    /// A write moved bytes, or needs to move none: the client keeps up.
    pub(super) fn moved(&mut self) {
        self.stall = None;
    }

    /// A write is waiting for the client; `moved` says whether it moved
    /// bytes before it had to wait (a new wait then starts). Ready with the
    /// error once the client has taken nothing for the timeout.
    pub(super) fn poll_stalled(&mut self, moved: bool, cx: &mut Context<'_>) -> Poll<Error> {
        if moved {
            self.stall = None;
        }
        let (timer, timeout) = (self.timer, self.timeout);
        let stall = self
            .stall
            .get_or_insert_with(|| timer.deadline(tokio::time::Instant::now() + timeout));
        ready!(Pin::new(stall).poll(cx));
        self.stall = None;
        Poll::Ready(Error::SendTimeout)
    }
}

/// The response body on its way out, framed.
pub(super) struct BodyWriter {
    /// `None` once it is through (or for a response without one).
    body: Option<Body>,
    framing: Framing,
    /// Whether trailer fields go out after the last chunk.
    trailers: bool,
    /// Under Content-Length: bytes still owed.
    owed: u64,
    queue: WriteQueue,
    /// Why the body ended early: reported once what came before it is
    /// written.
    failed: Option<Error>,
}

impl BodyWriter {
    /// `body` framed as `framing` says (dropped unpolled for a response
    /// without a body); its trailers are sent only if `trailers`.
    pub(super) fn new(body: Body, framing: Framing, trailers: bool) -> Self {
        Self {
            body: (framing != Framing::None).then_some(body),
            framing,
            trailers,
            owed: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            queue: WriteQueue::default(),
            failed: None,
        }
    }
    /// Pulls the body's frames while they are ready and writes them. Small
    /// ones are copied into `out` after whatever it holds (the head, chunk
    /// framing), so a small response goes out in one write. A client that
    /// leaves it unread for the send timeout ends it with
    /// [`Error::SendTimeout`] (the body is then dropped by the caller,
    /// which releases the upstream side).
    pub(super) fn poll<T: AsyncWrite + Unpin>(
        &mut self,
        shared: &SharedIo<T>,
        out: &mut BytesMut,
        send: &mut SendTimeout<'_>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            let mut waiting = false;
            while let Some(body) = self.body.as_mut() {
                if !self.queue.has_room(3) || out.len() >= GATHER_MAX {
                    break;
                }
                let result = match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                    Poll::Ready(None) => self.finish(out, None),
                    Poll::Ready(Some(Err(error))) => Err(Error::ResponseBody(error)),
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => self.push_data(out, data),
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => self.finish(out, Some(trailers)),
                            Err(_) => Ok(()),
                        },
                    },
                };
                if let Err(error) = result {
                    self.body = None;
                    self.failed = Some(error);
                }
            }
            if !out.is_empty() {
                self.queue.push(out.split().freeze());
            }
            if self.queue.is_empty() && waiting {
                return Poll::Pending;
            }
            ready!(flush_within(shared, &mut self.queue, send, cx))?;
            if self.body.is_none() {
                return Poll::Ready(self.failed.take().map_or(Ok(()), Err));
            }
        }
    }

    fn push_data(&mut self, out: &mut BytesMut, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        if let Framing::Length(_) = self.framing {
            self.owed = self
                .owed
                .checked_sub(data.len() as u64)
                .ok_or(Error::ResponseLength)?;
        }
        put_data(out, &mut self.queue, data, self.framing == Framing::Chunked);
        Ok(())
    }

    /// The body is through: the last chunk (with trailers), or a check
    /// that the promised length was sent.
    fn finish(
        &mut self,
        out: &mut BytesMut,
        trailers: Option<http::HeaderMap>,
    ) -> Result<(), Error> {
        self.body = None;
        match self.framing {
            Framing::Chunked => {
                put_last_chunk(out, trailers.as_ref().filter(|_| self.trailers));
                Ok(())
            }
            Framing::Length(_) if self.owed != 0 => Err(Error::ResponseLength),
            _ => Ok(()),
        }
    }
}
