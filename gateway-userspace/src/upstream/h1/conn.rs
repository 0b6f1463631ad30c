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
    http1::wire::{put_data, put_last_chunk, ReadSize, WriteQueue, GATHER_MAX},
    upstream::{replay::AttemptBody, stream::Stream, target::Counted},
};

pub(super) struct Conn {
    pub io: Stream,
    /// What the target sent that is not consumed yet.
    pub read: BytesMut,
    read_size: ReadSize,
    /// Its place among the upstream's connections (`max_connections`).
    _counted: Option<Counted>,
}

impl Conn {
    pub fn new(io: Stream, counted: Option<Counted>) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            read_size: ReadSize::default(),
            _counted: counted,
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
    /// Chunk framing and small pieces of the body, gathered for the next
    /// write.
    out: BytesMut,
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
            out: BytesMut::new(),
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
    /// nothing more yet (`Pending`), or either side fails. The head goes out
    /// before the body is first polled (a stale pooled connection fails
    /// while the body can still go on another); after it, whatever the body
    /// has ready is gathered into one write (a client's run of tiny chunks,
    /// say), and nothing waits for more.
    pub fn poll<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            ready!(self.queue.poll_flush(io, cx)).map_err(Error::Write)?;
            // Nothing may wait in TLS's buffer while the body is awaited or
            // the response is: the target would wait for it too.
            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Error::Write)?;
            if self.body_done {
                return Poll::Ready(Ok(()));
            }
            let mut waiting = false;
            while !self.body_done && self.queue.has_room(3) && self.out.len() < GATHER_MAX {
                let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                    Poll::Ready(Some(Ok(frame))) => frame,
                    Poll::Ready(Some(Err(error))) => {
                        return Poll::Ready(Err(Error::RequestBody(error)))
                    }
                    Poll::Ready(None) => {
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
            if !self.out.is_empty() {
                self.queue.push(self.out.split().freeze());
            }
            if waiting && self.queue.is_empty() {
                return Poll::Pending;
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
            }
            RequestFraming::Chunked => {}
            RequestFraming::Empty => return Err(Error::BodyLength),
        }
        let chunked = self.framing == RequestFraming::Chunked;
        put_data(&mut self.out, &mut self.queue, data, chunked);
        Ok(())
    }

    fn finish(&mut self, trailers: Option<http::HeaderMap>) -> Result<(), Error> {
        self.body_done = true;
        match self.framing {
            RequestFraming::Length(_) if self.owed != 0 => Err(Error::BodyLength),
            RequestFraming::Chunked => {
                put_last_chunk(&mut self.out, trailers.as_ref());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
