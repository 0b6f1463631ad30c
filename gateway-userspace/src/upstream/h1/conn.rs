//! One HTTP/1.1 connection to a target and the two directions of an
//! exchange on it: [`Sending`] writes the request (head, then the body as the
//! client delivers it), [`Conn::poll_fill`] reads what the target sends.
//! Nothing here runs as a task of its own: the request's future drives both
//! directions until the response head is in, and the response body drives
//! them after that.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::body::Body as HttpBody;
use tokio::io::AsyncWrite;

use super::{codec::RequestFraming, Error};
use crate::{
    http1::wire::{chunk_size_line, put_last_chunk, ReadSize, WriteQueue},
    upstream::{replay::AttemptBody, stream::Stream},
};

pub(super) struct Conn {
    pub io: Stream,
    /// What the target sent that is not consumed yet.
    pub read: BytesMut,
    read_size: ReadSize,
}

impl Conn {
    pub fn new(io: Stream) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            read_size: ReadSize::default(),
        }
    }

    /// The socket and what was read from it but not consumed.
    pub fn into_parts(self) -> (Stream, Bytes) {
        (self.io, self.read.freeze())
    }

    /// Reads once more into `read`; `Ok(0)` is the target closing.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read_size.poll_fill(&mut self.io, &mut self.read, cx)
    }

    /// Whether an idle connection can take a request: nothing unread, and
    /// the target has not closed it or sent anything unasked.
    pub fn is_open(&mut self) -> bool {
        self.read.is_empty() && self.io.is_open()
    }
}

/// The request as it goes out: the head, then the body framed as
/// `framing` says.
pub(super) struct Sending {
    queue: WriteQueue,
    body: AttemptBody,
    framing: RequestFraming,
    /// Under `Content-Length`: bytes still owed.
    owed: u64,
    body_done: bool,
}

impl Sending {
    pub fn new(head: Bytes, body: AttemptBody, framing: RequestFraming) -> Self {
        let mut queue = WriteQueue::default();
        queue.push(head);
        Self {
            queue,
            body,
            owed: match framing {
                RequestFraming::Length(n) => n,
                _ => 0,
            },
            body_done: framing == RequestFraming::Empty,
            framing,
        }
    }

    /// The body, if this exchange never started reading it (a stale
    /// connection failed first): another connection can send it.
    pub fn into_unsent_body(self) -> Option<AttemptBody> {
        self.body.is_unsent().then_some(self.body)
    }

    /// Whether any of the request reached the socket.
    pub fn wrote_nothing(&self) -> bool {
        !self.queue.wrote_any
    }

    /// Writes what is queued and pulls more from the body, until all of the
    /// request is written (`Ready(Ok)`), the socket is full or the client has
    /// nothing more yet (`Pending`), or either side fails.
    pub fn poll(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            ready!(self.queue.poll_flush(io, cx)).map_err(Error::Write)?;
            // Nothing may wait in TLS's buffer while the body is awaited or
            // the response is: the target would wait for it too.
            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Error::Write)?;
            if self.body_done {
                return Poll::Ready(Ok(()));
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Poll::Ready(Err(Error::RequestBody(error))),
                None => {
                    self.finish(None)?;
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) => self.push_data(data)?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.finish(Some(trailers))?;
                    }
                }
            }
        }
    }

    fn push_data(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            RequestFraming::Length(_) => {
                self.owed = self
                    .owed
                    .checked_sub(data.len() as u64)
                    .ok_or(Error::BodyLength)?;
                self.queue.push(data);
            }
            RequestFraming::Chunked => {
                self.queue.push(chunk_size_line(data.len()));
                self.queue.push(data);
                self.queue.push(Bytes::from_static(b"\r\n"));
            }
            RequestFraming::Empty => return Err(Error::BodyLength),
        }
        Ok(())
    }

    fn finish(&mut self, trailers: Option<http::HeaderMap>) -> Result<(), Error> {
        self.body_done = true;
        match self.framing {
            RequestFraming::Length(_) if self.owed != 0 => Err(Error::BodyLength),
            RequestFraming::Chunked => {
                let mut end = BytesMut::new();
                put_last_chunk(&mut end, trailers.as_ref());
                self.queue.push(end.freeze());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
