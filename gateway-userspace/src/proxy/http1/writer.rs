//! The response body on its way to the client: framed as the head said
//! (length, chunks, until close), small pieces gathered behind the head and
//! written together, large ones written from where they are.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
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
    proxy::Body,
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
    /// framing), so a small response goes out in one write.
    pub(super) fn poll<T: AsyncWrite + Unpin>(
        &mut self,
        shared: &SharedIo<T>,
        out: &mut BytesMut,
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
            ready!(flush(shared, &mut self.queue, cx))?;
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
