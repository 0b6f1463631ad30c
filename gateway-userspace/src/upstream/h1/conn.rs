//! One HTTP/1.1 connection to a target and the two directions of an
//! exchange on it: [`Sending`] writes the request (head, then the body as the
//! client delivers it), [`Conn::poll_fill`] reads what the target sends.
//! Nothing here runs as a task of its own: the request's future drives both
//! directions until the response head is in, and the response body drives
//! them after that.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll, Waker},
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Body as HttpBody;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    codec::{chunk_size_line, RequestFraming},
    Error,
};
use crate::upstream::replay::AttemptBody;

/// The first read of an exchange asks for this much; reads that fill their
/// buffer double it, up to `MAX_READ`.
const FIRST_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;

pub(super) struct Conn {
    pub io: TcpStream,
    /// What the target sent that is not consumed yet.
    pub read: BytesMut,
    read_size: usize,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            read_size: FIRST_READ,
        }
    }

    /// The socket and what was read from it but not consumed.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.io, self.read.freeze())
    }

    /// Reads once more into `read`; `Ok(0)` is the target closing. Reads
    /// straight into the buffer's spare room, which needs no zeroing first.
    #[allow(unsafe_code)]
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < self.read_size / 2 {
            self.read.reserve(self.read_size);
        }
        let spare = self.read.spare_capacity_mut();
        let room = spare.len();
        let mut buf = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        // SAFETY: `poll_read` initialized the first `n` spare bytes.
        unsafe { self.read.set_len(self.read.len() + n) };
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Whether an idle connection can take a request: the target has not
    /// closed it or sent anything unasked. Costs no system call unless the
    /// socket became readable while idle.
    pub fn is_open(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
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
    pub fn poll(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            ready!(self.queue.poll_flush(io, cx)).map_err(Error::Write)?;
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
                let mut end = BytesMut::from(&b"0\r\n"[..]);
                for (name, value) in trailers.iter().flatten() {
                    end.extend_from_slice(name.as_str().as_bytes());
                    end.extend_from_slice(b": ");
                    end.extend_from_slice(value.as_bytes());
                    end.extend_from_slice(b"\r\n");
                }
                end.extend_from_slice(b"\r\n");
                self.queue.push(end.freeze());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Buffers waiting to be written, sent with one vectored write where the
/// socket takes them. Never more than a few at once (a head, or a chunk's
/// size line, data and CRLF: the body is read only once the queue is
/// empty), so they sit in a small ring, not on the heap.
#[derive(Default)]
struct WriteQueue {
    bufs: [Bytes; QUEUE],
    start: usize,
    len: usize,
    wrote_any: bool,
}

const QUEUE: usize = 4;

impl WriteQueue {
    fn push(&mut self, buf: Bytes) {
        if buf.is_empty() {
            return;
        }
        assert!(self.len < QUEUE, "at most {QUEUE} buffers are queued");
        self.bufs[(self.start + self.len) % QUEUE] = buf;
        self.len += 1;
    }

    fn poll_flush(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let mut slices = [IoSlice::new(&[]); QUEUE];
            for (i, slice) in slices.iter_mut().take(self.len).enumerate() {
                *slice = IoSlice::new(&self.bufs[(self.start + i) % QUEUE]);
            }
            let mut written =
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..self.len]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote_any = true;
            while written > 0 {
                let front = &mut self.bufs[self.start];
                if written >= front.len() {
                    written -= front.len();
                    *front = Bytes::new();
                    self.start = (self.start + 1) % QUEUE;
                    self.len -= 1;
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}
