//! One client connection's state between exchanges, and the phases of an
//! exchange: waiting for the head, waiting for the proxy's answer while the
//! client is watched, writing the answer (or handing the stream over after
//! a 101), every write to the client bounded by the send timeout.

use std::{
    future::{poll_fn, Future},
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use hyper::body::Body as HttpBody;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::oneshot,
};

use super::{
    body::{lock, Io, RequestBody, SharedIo, CONTINUE},
    request::{parse_request, BodyFraming, Fields, HeadError, HeadScan, RequestHead},
    response::{encode_head, server_response, Exchange, Framing},
    writer::{flush, flush_within, BodyWriter, SendTimeout},
    Error, Settings, REFUSAL_WRITE,
};
use crate::{
    http1::wire::{ReadSize, WriteQueue},
    proxy::{
        conn_timer::{ConnDeadline, ConnTimer},
        drain::Rarely,
        Body,
    },
};

pub(super) struct Conn<'t, T, D> {
    shared: SharedIo<T>,
    settings: Settings,
    timer: &'t ConnTimer,
    send: SendTimeout<'t>,
    /// Resolves when the listener starts draining.
    drain: Rarely<D>,
    draining: bool,
    /// The next response's head (and small body pieces) as it is made.
    out: BytesMut,
    fields: Fields,
    scan: HeadScan,
}

/// Whether the listener is draining (the signal registers for its wake-up
/// when it has not fired yet; it is not polled again once it has).
fn poll_draining<D: Future>(
    drain: &mut Rarely<D>,
    draining: &mut bool,
    cx: &mut Context<'_>,
) -> bool {
    if !*draining && Pin::new(drain).poll(cx).is_ready() {
        *draining = true;
    }
    *draining
}

/// Why waiting for a head ended without one.
pub(super) enum HeadWait {
    Read(io::Error),
    Refused(HeadError),
    Late { started: bool },
}

impl<'t, T, D> Conn<'t, T, D>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Future,
{
    pub(super) fn new(stream: T, settings: Settings, timer: &'t ConnTimer, drain: D) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Io {
                stream,
                read: BytesMut::new(),
                read_size: ReadSize::default(),
                exchange: 0,
                body_open: false,
                continue_owed: 0,
            })),
            settings,
            timer,
            send: SendTimeout::new(timer, settings.send_timeout),
            drain: Rarely::new(drain),
            draining: false,
            out: BytesMut::new(),
            fields: Fields::default(),
            scan: HeadScan::default(),
        }
    }

    /// The deadline of the next request head (`header_read_timeout` from
    /// now).
    pub(super) fn head_deadline(&self) -> ConnDeadline {
        let timeout = self.settings.header_read_timeout;
        self.timer.deadline(tokio::time::Instant::now() + timeout)
    }

    /// Answers a head that did not come: a refused one gets 400/431, a late
    /// one that was started 408 (RFC 9110 §15.5.9); an idle connection is
    /// closed without a word (a 408 could race the client's next request).
    /// The connection ends either way.
    pub(super) async fn head_failed(&self, wait: HeadWait) -> Result<(), Error> {
        match wait {
            HeadWait::Read(error) => Err(Error::Read(error)),
            HeadWait::Refused(error) => {
                self.refuse(server_response(error.status(), error.message()))
                    .await;
                Err(Error::Head(error))
            }
            HeadWait::Late { started: false } => Ok(()),
            HeadWait::Late { started: true } => {
                self.refuse(server_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "request header timeout",
                ))
                .await;
                Err(Error::HeadTimeout)
            }
        }
    }

    /// The next request head. `Ok(None)`: the client closed, or the
    /// listener is draining, between requests.
    pub(super) fn poll_head(
        &mut self,
        deadline: &mut ConnDeadline,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<RequestHead>, HeadWait>> {
        let mut io = lock(&self.shared);
        loop {
            let max = self.settings.head.max_bytes;
            if !io.read.is_empty() && self.scan.may_be_complete(&io.read, max) {
                match parse_request(&mut io.read, self.settings.head, &mut self.fields) {
                    Ok(Some(head)) => {
                        self.scan.reset();
                        return Poll::Ready(Ok(Some(head)));
                    }
                    Ok(None) => self.scan.incomplete(&io.read),
                    Err(error) => return Poll::Ready(Err(HeadWait::Refused(error))),
                }
            }
            match io.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(HeadWait::Read(error))),
                Poll::Pending => {}
            }
            // Draining: a connection idle between requests is closed (what
            // has arrived was read first, so a request already sent is
            // served, not answered with a reset). A new connection still
            // gets its first request served: it was accepted, and its
            // client may have sent the request already (a listener handed
            // to a new process must not fail it). The head deadline bounds
            // the wait.
            if poll_draining(&mut self.drain, &mut self.draining, cx)
                && (io.exchange > 0 || !io.read.is_empty())
            {
                return Poll::Ready(Ok(None));
            }
            if Pin::new(&mut *deadline).poll(cx).is_ready() {
                return Poll::Ready(Err(HeadWait::Late {
                    started: !io.read.is_empty(),
                }));
            }
            return Poll::Pending;
        }
    }

    /// The body of the current exchange, framed as its head said (the
    /// previous exchange's was cut off by `end_exchange`).
    pub(super) fn request_body(
        &self,
        framing: BodyFraming,
        expect_continue: bool,
    ) -> RequestBody<T> {
        if framing == BodyFraming::Empty {
            return RequestBody::empty();
        }
        let mut io = lock(&self.shared);
        io.body_open = true;
        io.continue_owed = if expect_continue { CONTINUE.len() } else { 0 };
        RequestBody::new(&self.shared, io.exchange, framing)
    }

    /// The proxy's answer to the request in flight. `Ready(None)`: the
    /// client reset the connection (the answer is then dropped unfinished,
    /// which cancels the request). `read_closed` notes a half-close.
    pub(super) fn poll_answer<F: Future>(
        &mut self,
        pending: Pin<&mut F>,
        read_closed: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<F::Output>> {
        if let Poll::Ready(response) = pending.poll(cx) {
            return Poll::Ready(Some(response));
        }
        poll_draining(&mut self.drain, &mut self.draining, cx);
        if !*read_closed && self.watch_client(read_closed, cx).is_err() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Reads what the client sends while its request is in flight (only
    /// when no request body is being read): pipelined requests are kept for
    /// later, a half-close is noted, a reset is an error.
    fn watch_client(&self, read_closed: &mut bool, cx: &mut Context<'_>) -> io::Result<()> {
        let mut io = lock(&self.shared);
        if io.body_open {
            return Ok(());
        }
        while io.read.len() < self.settings.head.max_bytes {
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

    /// Writes the head of `response` into the connection's buffer and
    /// returns its body's writer, and whether the connection closes after
    /// it (`close` asked for it, the listener is draining, the body runs
    /// until close, or the request body will never be read).
    pub(super) fn start_response(
        &mut self,
        exchange: Exchange<'_>,
        response: Response<Body>,
        close: bool,
    ) -> (BodyWriter, bool) {
        let (head, body) = response.into_parts();
        let framing = super::response::framing(exchange, &head, &body.size_hint());
        let mut close = close || self.draining || framing == Framing::UntilClose;
        {
            let mut io = lock(&self.shared);
            // A body nobody holds any more will not be read: say now that
            // the connection ends with this response.
            close |= io.body_open && Arc::strong_count(&self.shared) == 1;
            // The answer came before the body was asked for: no 100 now
            // (and the rest of one begun goes out first).
            if io.continue_owed == CONTINUE.len() {
                io.continue_owed = 0;
            }
            if io.continue_owed > 0 {
                let rest = CONTINUE.len() - io.continue_owed;
                self.out.extend_from_slice(&CONTINUE[rest..]);
                io.continue_owed = 0;
            }
        }
        encode_head(&mut self.out, exchange, &head, framing, close);
        (BodyWriter::new(body, framing, exchange.trailers), close)
    }

    /// Writes the head and the body as it comes.
    pub(super) fn poll_write(
        &mut self,
        writer: &mut BodyWriter,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        writer.poll(&self.shared, &mut self.out, &mut self.send, cx)
    }

    /// The exchange is over: its body (if anyone still holds it) reads no
    /// more. Whether the connection can take another request: not when the
    /// body was not read to its end, since where the next request starts is
    /// unknown.
    pub(super) fn end_exchange(&self) -> bool {
        let mut io = lock(&self.shared);
        io.exchange += 1;
        !std::mem::replace(&mut io.body_open, false)
    }

    /// Writes the 101 and hands the stream, with whatever the client sent
    /// after its request, to the upgrade's receiver.
    pub(super) async fn switch_protocols(
        mut self,
        exchange: Exchange<'_>,
        response: Response<Body>,
        handover: Option<oneshot::Sender<(T, Bytes)>>,
    ) -> Result<(), Error> {
        let Some(handover) = handover else {
            self.refuse(server_response(StatusCode::BAD_GATEWAY, "bad gateway"))
                .await;
            return Err(Error::UnaskedUpgrade);
        };
        let (head, _) = response.into_parts();
        encode_head(&mut self.out, exchange, &head, Framing::None, false);
        let mut queue = WriteQueue::default();
        queue.push(self.out.split().freeze());
        poll_fn(|cx| flush_within(&self.shared, &mut queue, &mut self.send, cx)).await?;
        // A request that may upgrade has no body (`parse_request`), so no
        // body holds the stream now: this is a guard, not a path.
        let Ok(io) = Arc::try_unwrap(self.shared) else {
            return Err(Error::UpgradeBodyHeld);
        };
        let io = io.into_inner().unwrap_or_else(|e| e.into_inner());
        let _ = handover.send((io.stream, io.read.freeze()));
        Ok(())
    }

    /// Closes the client's side, within the send timeout (over TLS the
    /// close_notify waits behind whatever the client has not read yet).
    pub(super) async fn shutdown(&mut self) -> Result<(), Error> {
        poll_fn(|cx| match self.poll_close(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.send.poll_stalled(false, cx).map(Err),
        })
        .await
    }

    fn poll_close(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut lock(&self.shared).stream)
            .poll_shutdown(cx)
            .map_err(Error::Write)
    }

    /// Writes a response the server made itself, then closes; gives up on
    /// a client that does not read within [`REFUSAL_WRITE`].
    async fn refuse(&self, answer: Bytes) {
        let mut queue = WriteQueue::default();
        queue.push(answer);
        let _ = tokio::time::timeout(REFUSAL_WRITE, async {
            poll_fn(|cx| flush(&self.shared, &mut queue, cx)).await?;
            poll_fn(|cx| self.poll_close(cx)).await
        })
        .await;
    }
}
