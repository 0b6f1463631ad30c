//! The client's connection, shared between the server's loop (request
//! heads, responses) and the request body, which reads its own bytes off it
//! when the proxy polls it: no task or channel in between, so an upload
//! moves from the client's socket to the target's in one poll.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::request::BodyFraming;
use crate::http1::{
    chunked::{ChunkedDecoder, Decoded, Malformed},
    wire::ReadSize,
};

/// The interim response owed to a client that sent `Expect: 100-continue`,
/// written when the body is first read (RFC 9110 §10.1.1).
pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The connection's byte stream and what was read from it.
pub(super) struct Io<T> {
    pub stream: T,
    pub read: BytesMut,
    pub read_size: ReadSize,
    /// Counts exchanges: a body reads only while its own is current.
    pub exchange: u64,
    /// The current request's body is not all read yet.
    pub body_open: bool,
    /// Bytes of [`CONTINUE`] not written yet.
    pub continue_owed: usize,
}

impl<T: AsyncRead + Unpin> Io<T> {
    /// Reads once more; `Ok(0)` is the client closing.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read_size
            .poll_fill(&mut self.stream, &mut self.read, cx)
    }
}

impl<T: AsyncWrite + Unpin> Io<T> {
    /// Writes what is left of the 100 Continue.
    pub fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.continue_owed > 0 {
            let rest = &CONTINUE[CONTINUE.len() - self.continue_owed..];
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_owed -= n;
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }
}

pub(super) type SharedIo<T> = Arc<Mutex<Io<T>>>;

pub(super) fn lock<T>(io: &SharedIo<T>) -> MutexGuard<'_, Io<T>> {
    io.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request body as read off an HTTP/1.1 connection: Content-Length or
/// chunked (decoded, trailers passed on), or nothing.
pub struct RequestBody<T> {
    /// `None`: no body, or all of it read (or failed).
    io: Option<SharedIo<T>>,
    exchange: u64,
    framing: Framing,
}

enum Framing {
    /// Bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// How reading a request body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client closed the connection in the middle of the request body")]
    Incomplete,
    #[error("reading the request body failed: {0}")]
    Read(#[source] io::Error),
    #[error("malformed chunked request body: {0}")]
    Chunked(#[from] Malformed),
    #[error("writing 100 Continue failed: {0}")]
    Continue(#[source] io::Error),
    #[error("the request body was read after its exchange ended")]
    Detached,
}

impl<T> RequestBody<T> {
    pub(super) fn empty() -> Self {
        Self {
            io: None,
            exchange: 0,
            framing: Framing::Length(0),
        }
    }

    /// The body of the current exchange on `io`, framed as its head said.
    pub(super) fn new(io: &SharedIo<T>, exchange: u64, framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Empty => Self::empty(),
            BodyFraming::Length(n) => Self {
                io: Some(io.clone()),
                exchange,
                framing: Framing::Length(n),
            },
            BodyFraming::Chunked => Self {
                io: Some(io.clone()),
                exchange,
                framing: Framing::Chunked(ChunkedDecoder::default()),
            },
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> HttpBody for RequestBody<T> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(shared) = this.io.as_ref() else {
            return Poll::Ready(None);
        };
        let mut io = lock(shared);
        if io.exchange != this.exchange {
            drop(io);
            this.io = None;
            return Poll::Ready(Some(Err(BodyError::Detached)));
        }
        let result = poll_body(&mut io, &mut this.framing, cx);
        match &result {
            Poll::Ready(Some(Ok(_))) if io.body_open => {}
            // Through (`body_open` cleared), or failed (left set: the
            // connection closes after the response).
            Poll::Ready(_) => {
                drop(io);
                this.io = None;
            }
            Poll::Pending => {}
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.io.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            _ if self.io.is_none() => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked(_) => SizeHint::default(),
        }
    }
}

fn poll_body<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<T>,
    framing: &mut Framing,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    if io.continue_owed > 0 {
        if let Err(error) = ready!(io.poll_continue(cx)) {
            return Poll::Ready(Some(Err(BodyError::Continue(error))));
        }
    }
    loop {
        match framing {
            Framing::Length(0) => {
                io.body_open = false;
                return Poll::Ready(None);
            }
            Framing::Length(left) if !io.read.is_empty() => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(io.read.len());
                *left -= take as u64;
                let data = io.read.split_to(take).freeze();
                if *left == 0 {
                    io.body_open = false;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Chunked(decoder) => match decoder.decode(&mut io.read) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(trailers)) => {
                    io.body_open = false;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::Done) => {
                    io.body_open = false;
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            },
            Framing::Length(_) => {}
        }
        match ready!(io.poll_fill(cx)) {
            Ok(0) => return Poll::Ready(Some(Err(BodyError::Incomplete))),
            Ok(_) => {}
            Err(error) => return Poll::Ready(Some(Err(BodyError::Read(error)))),
        }
    }
}
