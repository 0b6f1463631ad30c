//! The HTTP/1.1 server: one client connection, its requests one after the
//! other (pipelined ones included), each handed to the proxy and its
//! response written back.
//!
//! It runs in the connection's task and nowhere else. The request body is
//! read off the connection by whoever polls it (`body`); the response body
//! is polled here and written as it comes, small pieces together with the
//! head in one write. While a request is in flight the connection is still
//! watched: a reset cancels the request, a half-close lets the response
//! finish and then closes.
//!
//! - `request`: the request head, parsed strictly, and its body's framing
//! - `body`: the request body, and the connection it shares with this loop
//! - `response`: the response's framing and head

mod body;
mod request;
mod response;
#[cfg(test)]
mod tests;

use std::{
    future::{poll_fn, Future},
    io,
    pin::{pin, Pin},
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use hyper::body::Body as HttpBody;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{oneshot, watch},
};

use self::{
    body::{lock, Io, SharedIo, CONTINUE},
    request::{parse_request, Fields, RequestHead},
    response::{encode_head, server_response, Exchange, Framing},
};
pub use self::{
    body::{BodyError, RequestBody},
    request::{HeadError, HeadLimits},
};
use super::{conn_timer::ConnTimer, drain::Rarely, Body, BoxError};
use crate::http1::wire::{put_chunk_size, ReadSize, WriteQueue};

/// Time to write an answer to a refused or late head before giving up on a
/// client that does not read.
const REFUSAL_WRITE: Duration = Duration::from_secs(5);
/// Body pieces up to this size are copied next to the head (or the chunk
/// framing) and go out in the same write; larger ones are written from
/// where they are.
const COPY_MAX: usize = 4096;
/// Frames that are ready are gathered up to this much before a write.
const GATHER_MAX: usize = 64 * 1024;

/// One listener's HTTP/1.1 settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub head: HeadLimits,
    /// For each request head, from when the server starts waiting for it
    /// (an idle keep-alive connection included).
    pub header_read_timeout: Duration,
}

/// The client's side of a connection that switched protocols: the stream
/// and whatever the client sent after its request. Put in an upgrade
/// request's extensions (which must be `Clone`: hence the shared slot);
/// the receiver resolves once the 101 is written.
pub struct ClientUpgrade<T>(Arc<Mutex<Option<Handover<T>>>>);

/// Resolves to the stream and the bytes read past the request.
pub type Handover<T> = oneshot::Receiver<(T, Bytes)>;

impl<T> Clone for ClientUpgrade<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> ClientUpgrade<T> {
    /// The receiver, for whoever takes it first.
    pub fn take(&self) -> Option<Handover<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// How a connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading from the client failed: {0}")]
    Read(#[source] io::Error),
    #[error("writing to the client failed: {0}")]
    Write(#[source] io::Error),
    #[error("{0}; refused")]
    Head(HeadError),
    #[error("request head not complete within header_read_timeout; 408")]
    HeadTimeout,
    #[error("response body failed: {0}")]
    ResponseBody(#[source] BoxError),
    #[error("response body did not match its Content-Length")]
    ResponseLength,
    #[error("101 Switching Protocols to a request that did not ask to upgrade")]
    UnaskedUpgrade,
}

/// Serves `stream` until the client closes, the connection fails, or
/// `shutdown` flips (then the request in flight, if any, finishes first and
/// its response says `connection: close`). `timer` bounds each head's read.
pub async fn serve<T, S, F>(
    stream: T,
    settings: Settings,
    timer: &ConnTimer,
    shutdown: &mut watch::Receiver<bool>,
    mut service: S,
) -> Result<(), Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: FnMut(Request<RequestBody<T>>) -> F,
    F: Future<Output = Response<Body>>,
{
    let shared: SharedIo<T> = Arc::new(Mutex::new(Io {
        stream,
        read: BytesMut::new(),
        read_size: ReadSize::default(),
        exchange: 0,
        body_open: false,
        continue_owed: 0,
    }));
    let mut drain = Rarely::new(shutdown.wait_for(|s| *s));
    let mut draining = false;
    let mut out = BytesMut::new();
    let mut fields = Fields::default();
    loop {
        // The next request head.
        let mut deadline =
            timer.deadline(tokio::time::Instant::now() + settings.header_read_timeout);
        let head = poll_fn(|cx| {
            let mut io = lock(&shared);
            loop {
                if !io.read.is_empty() {
                    match parse_request(&mut io.read, settings.head, &mut fields) {
                        Ok(Some(head)) => return Poll::Ready(Ok(Some(head))),
                        Ok(None) => {}
                        Err(error) => return Poll::Ready(Err(HeadWait::Refused(error))),
                    }
                }
                if draining || Pin::new(&mut drain).poll(cx).is_ready() {
                    draining = true;
                    return Poll::Ready(Ok(None));
                }
                match io.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(None)),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(HeadWait::Read(error))),
                    Poll::Pending => {}
                }
                if Pin::new(&mut deadline).poll(cx).is_ready() {
                    return Poll::Ready(Err(HeadWait::Late {
                        started: !io.read.is_empty(),
                    }));
                }
                return Poll::Pending;
            }
        })
        .await;
        let head = match head {
            Ok(Some(head)) => head,
            // The client closed (or the listener is draining) between
            // requests.
            Ok(None) => return Ok(()),
            Err(HeadWait::Read(error)) => return Err(Error::Read(error)),
            Err(HeadWait::Refused(error)) => {
                refuse(&shared, server_response(error.status(), error.message())).await;
                return Err(Error::Head(error));
            }
            // A late head is owed a 408 (RFC 9110 §15.5.9) once the client
            // started it; an idle connection is closed without a word (a
            // 408 could race the client's next request).
            Err(HeadWait::Late { started: false }) => return Ok(()),
            Err(HeadWait::Late { started: true }) => {
                let answer = server_response(StatusCode::REQUEST_TIMEOUT, "request header timeout");
                refuse(&shared, answer).await;
                return Err(Error::HeadTimeout);
            }
        };

        let RequestHead {
            parts,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
        } = head;
        let method = parts.method.clone();
        let version = parts.version;
        let exchange = {
            let mut io = lock(&shared);
            io.exchange += 1;
            if framing != request::BodyFraming::Empty {
                io.body_open = true;
                io.continue_owed = if expect_continue { CONTINUE.len() } else { 0 };
            }
            io.exchange
        };
        let mut request = Request::from_parts(parts, RequestBody::new(&shared, exchange, framing));
        let upgrade = upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            request
                .extensions_mut()
                .insert(ClientUpgrade(Arc::new(Mutex::new(Some(rx)))));
            tx
        });

        // The proxy's answer, while the connection is watched.
        let mut pending = pin!(service(request));
        let mut read_closed = false;
        let response = poll_fn(|cx| {
            if let Poll::Ready(response) = pending.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            if !draining && Pin::new(&mut drain).poll(cx).is_ready() {
                draining = true;
            }
            if !read_closed && watch_client(&shared, settings, &mut read_closed, cx).is_err() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(response) = response else {
            return Err(Error::Read(io::ErrorKind::ConnectionReset.into()));
        };

        let (head, body) = response.into_parts();
        let exchange_info = Exchange {
            method: &method,
            version,
        };
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(upgrade) = upgrade else {
                let answer = server_response(StatusCode::BAD_GATEWAY, "bad gateway");
                refuse(&shared, answer).await;
                return Err(Error::UnaskedUpgrade);
            };
            encode_head(&mut out, exchange_info, &head, Framing::None, false);
            let mut queue = WriteQueue::default();
            queue.push(out.split().freeze());
            poll_fn(|cx| flush(&shared, &mut queue, cx)).await?;
            let Ok(io) = Arc::try_unwrap(shared) else {
                // The request body is still held somewhere: the stream
                // cannot be handed over whole.
                return Err(Error::UnaskedUpgrade);
            };
            let io = io.into_inner().unwrap_or_else(|e| e.into_inner());
            let _ = upgrade.send((io.stream, io.read.freeze()));
            return Ok(());
        }
        let framing = response::framing(exchange_info, &head, &body.size_hint());
        let mut close = !keep_alive || draining || read_closed || framing == Framing::UntilClose;
        {
            let mut io = lock(&shared);
            // A body nobody holds any more will not be read: say now that
            // the connection ends with this response.
            close |= io.body_open && Arc::strong_count(&shared) == 1;
            // The answer came before the body was asked for: no 100 now.
            if io.continue_owed == CONTINUE.len() {
                io.continue_owed = 0;
            }
            if io.continue_owed > 0 {
                let rest = CONTINUE.len() - io.continue_owed;
                out.extend_from_slice(&CONTINUE[rest..]);
                io.continue_owed = 0;
            }
        }
        encode_head(&mut out, exchange_info, &head, framing, close);
        drop(head);
        let mut writer = BodyWriter {
            body: (framing != Framing::None).then_some(body),
            framing,
            owed: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            queue: WriteQueue::default(),
            failed: None,
        };
        poll_fn(|cx| writer.poll(&shared, &mut out, cx)).await?;
        drop(writer);

        // The exchange is over: its body (if anyone still holds it) reads
        // no more. If it was not read to its end, where the next request
        // starts is unknown.
        let body_unread = {
            let mut io = lock(&shared);
            io.exchange += 1;
            std::mem::replace(&mut io.body_open, false)
        };
        if close || body_unread {
            poll_fn(|cx| Pin::new(&mut lock(&shared).stream).poll_shutdown(cx))
                .await
                .map_err(Error::Write)?;
            return Ok(());
        }
    }
}

/// Why waiting for a head ended without one.
enum HeadWait {
    Read(io::Error),
    Refused(HeadError),
    Late { started: bool },
}

/// Reads what the client sends while its request is in flight (only when no
/// request body is being read): pipelined requests are kept for later, a
/// half-close is noted, a reset is an error.
fn watch_client<T: AsyncRead + Unpin>(
    shared: &SharedIo<T>,
    settings: Settings,
    read_closed: &mut bool,
    cx: &mut Context<'_>,
) -> io::Result<()> {
    let mut io = lock(shared);
    if io.body_open {
        return Ok(());
    }
    while io.read.len() < settings.head.max_bytes {
        match io.poll_fill(cx) {
            Poll::Ready(Ok(0)) => {
                *read_closed = true;
                return Ok(());
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(error)) => return Err(error),
            Poll::Pending => return Ok(()),
        }
    }
    Ok(())
}

/// Writes what is queued, then flushes (TLS holds records until then).
fn flush<T: AsyncWrite + Unpin>(
    shared: &SharedIo<T>,
    queue: &mut WriteQueue,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Error>> {
    let mut io = lock(shared);
    ready!(queue.poll_flush(&mut io.stream, cx)).map_err(Error::Write)?;
    ready!(Pin::new(&mut io.stream).poll_flush(cx)).map_err(Error::Write)?;
    Poll::Ready(Ok(()))
}

/// Writes a response the server made itself, then closes; gives up on a
/// client that does not read within [`REFUSAL_WRITE`].
async fn refuse<T: AsyncWrite + Unpin>(shared: &SharedIo<T>, answer: Bytes) {
    let mut queue = WriteQueue::default();
    queue.push(answer);
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        poll_fn(|cx| flush(shared, &mut queue, cx)).await?;
        poll_fn(|cx| Pin::new(&mut lock(shared).stream).poll_shutdown(cx))
            .await
            .map_err(Error::Write)
    })
    .await;
}

/// The response body on its way out, framed.
struct BodyWriter {
    /// `None` once it is through (or for a response without one).
    body: Option<Body>,
    framing: Framing,
    /// Under Content-Length: bytes still owed.
    owed: u64,
    queue: WriteQueue,
    /// Why the body ended early: reported once what came before it is
    /// written.
    failed: Option<Error>,
}

impl BodyWriter {
    /// Pulls the body's frames while they are ready and writes them. Small
    /// ones are copied into `out` after whatever it holds (the head, chunk
    /// framing), so a small response goes out in one write.
    fn poll<T: AsyncWrite + Unpin>(
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
        match self.framing {
            Framing::Length(_) => {
                self.owed = self
                    .owed
                    .checked_sub(data.len() as u64)
                    .ok_or(Error::ResponseLength)?;
            }
            Framing::Chunked => put_chunk_size(out, data.len()),
            Framing::None | Framing::UntilClose => {}
        }
        if data.len() <= COPY_MAX {
            out.extend_from_slice(&data);
        } else {
            if !out.is_empty() {
                self.queue.push(out.split().freeze());
            }
            self.queue.push(data);
        }
        if self.framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
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
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    crate::http1::wire::put_header(out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
            Framing::Length(_) if self.owed != 0 => Err(Error::ResponseLength),
            _ => Ok(()),
        }
    }
}
