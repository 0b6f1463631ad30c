//! The response body, read off the target's connection by whoever polls it
//! (the client connection's task): no task or channel in between. When the
//! body is through and the connection can take another request, it goes
//! back to the pool right away.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::{
    codec::ResponseFraming,
    conn::{Conn, Sending},
    pool::Slot,
    Error,
};
use crate::http1::chunked::{ChunkedDecoder, Decoded};

pub struct ResponseBody {
    /// `None` once the body is through (or failed).
    conn: Option<Conn>,
    framing: Framing,
    /// The rest of the request, when the target answered before it was all
    /// sent (e.g. an upstream that streams its answer to an upload).
    sending: Option<Sending>,
    keep_alive: bool,
    slot: Option<Slot>,
}

enum Framing {
    /// Bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl ResponseBody {
    pub(super) fn new(
        conn: Conn,
        framing: ResponseFraming,
        sending: Option<Sending>,
        keep_alive: bool,
        slot: Slot,
    ) -> Self {
        let mut body = Self {
            conn: Some(conn),
            framing: match framing {
                ResponseFraming::Empty => Framing::Length(0),
                ResponseFraming::Length(n) => Framing::Length(n),
                ResponseFraming::Chunked => Framing::Chunked(ChunkedDecoder::default()),
                ResponseFraming::UntilClose => Framing::UntilClose,
            },
            sending,
            keep_alive,
            slot: Some(slot),
        };
        if matches!(body.framing, Framing::Length(0)) {
            body.finish();
        }
        body
    }

    /// A body that was never on a connection (a 101's: the connection went
    /// to the tunnel).
    pub(super) fn empty() -> Self {
        Self {
            conn: None,
            framing: Framing::Length(0),
            sending: None,
            keep_alive: false,
            slot: None,
        }
    }

    /// The body is through: the connection goes back to the pool if the
    /// exchange left it clean, else it is closed.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let clean = self.keep_alive && self.sending.is_none() && conn.read.is_empty();
        self.sending = None;
        if let (true, Some(slot)) = (clean, self.slot.take()) {
            slot.checkin(conn);
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.keep_alive = false;
        self.finish();
        Poll::Ready(Some(Err(error)))
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(sending) = this.sending.as_mut() {
            match sending.poll(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => this.sending = None,
                // The client's upload broke off: the target would wait for
                // the rest, so the exchange ends here for both.
                Poll::Ready(Err(error @ Error::RequestBody(_))) => return this.fail(error),
                // The target has answered; it may not want the rest. The
                // connection cannot be reused, but the answer goes on.
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "request body not sent in full after the response began");
                    this.keep_alive = false;
                    this.sending = None;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let conn = this.conn.as_mut().expect("checked above; finish returns");
            match &mut this.framing {
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.read.is_empty() => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.read.len());
                    *left -= take as u64;
                    let data = conn.read.split_to(take).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    return data_frame(data);
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Decoded::Data(data)) => return data_frame(data),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(error) => return this.fail(error.into()),
                },
                Framing::UntilClose if !conn.read.is_empty() => {
                    let data = conn.read.split().freeze();
                    return data_frame(data);
                }
                Framing::Length(_) | Framing::UntilClose => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Incomplete),
                Ok(_) => {}
                Err(error) => return this.fail(Error::Read(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
            || matches!(self.framing, Framing::Length(0))
            || matches!(&self.framing, Framing::Chunked(decoder) if decoder.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

fn data_frame(data: Bytes) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    Poll::Ready(Some(Ok(Frame::data(data))))
}
