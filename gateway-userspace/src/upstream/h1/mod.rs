//! The HTTP/1.1 client for upstreams: keep-alive connections pooled per
//! worker, driven by the request that uses them. The request's future
//! writes the request and reads the response head; the response body reads
//! the rest as the client connection asks for it. There is no connection
//! task and no channel between the two sides of the proxy, so a response
//! chunk goes from the target's socket to the client's in one poll.
//!
//! - `codec`: request head, response head, body framing (RFC 9112)
//! - `conn`: one connection, and the request going out on it
//! - `body`: the response body, and the connection's return to the pool
//! - `pool`: idle connections per worker and target

mod body;
pub(crate) mod codec;
mod conn;
mod pool;
#[cfg(test)]
mod tests;

use std::{
    io,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{header::UPGRADE, request, uri::Authority, Method, Request, Response, StatusCode};
use hyper::body::Body as HttpBody;

pub use self::{body::ResponseBody, pool::Http1Pool};
use self::{
    codec::{RequestFraming, ResponseHead},
    conn::{Conn, Sending},
};
use super::{
    client::{Failed, SendError},
    replay::AttemptBody,
    stream::Stream,
};
use crate::{
    exchange::{BoxError, ForwardFields},
    http1::chunked::Malformed,
};

/// How an exchange with a target failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed response: {0}")]
    Parse(httparse::Error),
    #[error(
        "response head over {} bytes or {} header fields",
        codec::MAX_HEAD_BYTES,
        codec::MAX_HEADERS
    )]
    HeadTooLarge,
    #[error("invalid or conflicting Content-Length in the response")]
    BadContentLength,
    #[error("malformed chunked response body: {0}")]
    Chunked(#[from] Malformed),
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    #[error("connection closed in the middle of the response")]
    Incomplete,
    #[error("writing the request failed: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response failed: {0}")]
    Read(#[source] io::Error),
    #[error("request body failed: {0}")]
    RequestBody(#[source] BoxError),
    #[error("request body did not match its announced length")]
    BodyLength,
    #[error("101 Switching Protocols to a request that did not ask to upgrade")]
    UnexpectedUpgrade,
}

/// The target's side of a connection that switched protocols (101): the
/// connection (TLS included, if it has it) and whatever the target sent
/// after its 101. In the response's extensions, for the tunnel to take.
#[derive(Clone)]
pub struct Upgraded(Arc<Mutex<Option<(Stream, Bytes)>>>);

impl Upgraded {
    /// The connection and the bytes already read from it; `None` if taken.
    pub fn take(&self) -> Option<(Stream, Bytes)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Http1Pool {
    /// Sends `request` (origin-form URI, `fields` after its headers) to
    /// `target` on an idle pooled
    /// connection if there is one, else on a new one, and returns once the
    /// response head is in. A pooled connection that turns out to have been
    /// closed by the target takes nothing: the request goes on a new one.
    pub async fn send(
        &self,
        target: std::net::SocketAddr,
        authority: &Authority,
        request: Request<AttemptBody>,
        fields: &ForwardFields,
    ) -> Result<Response<Box<ResponseBody>>, Failed> {
        let (head, mut body) = request.into_parts();
        loop {
            let (pooled, slot) = self.checkout(target);
            let (conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => match self.wait(&slot).await {
                    Ok(got) => got,
                    Err(error) => {
                        return Err(Failed {
                            error,
                            unsent: Some(Request::from_parts(head, body)),
                        })
                    }
                },
            };
            let mut exchange = Exchange::new(conn, &head, authority, fields, body);
            let outcome = std::future::poll_fn(|cx| exchange.poll_head(cx, &head.method)).await;
            match outcome {
                Ok(response) => {
                    return exchange
                        .into_response(response, &head, slot)
                        .map_err(|error| SendError::Http1(error).into())
                }
                Err(error) => match exchange.stale_retry(reused, &error, &head.method) {
                    Some(unsent) => {
                        tracing::debug!(upstream.target = %target, %error, "pooled connection was closed by the target; sending on a new one");
                        body = unsent;
                    }
                    None => return Err(SendError::Http1(error).into()),
                },
            }
        }
    }
}

/// One request on one connection, until the response head is in.
struct Exchange {
    conn: Conn,
    /// The request; kept once written, for a retry to take its body back.
    sending: Sending,
    /// Whether all of the request is written.
    sent: bool,
    /// Writing failed: the target may still have answered (say, an early
    /// 413 before closing), so reading goes on.
    write_error: Option<Error>,
    /// Whether the target sent any byte.
    received: bool,
}

impl Exchange {
    fn new(
        conn: Conn,
        head: &request::Parts,
        authority: &Authority,
        fields: &ForwardFields,
        body: AttemptBody,
    ) -> Self {
        let framing = RequestFraming::of(body.is_end_stream(), &body.size_hint());
        let encoded = codec::encode_head(head, authority, fields, framing);
        Self {
            conn,
            sending: Sending::new(encoded, body, framing),
            sent: false,
            write_error: None,
            received: false,
        }
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, Error>> {
        if !self.sent && self.write_error.is_none() {
            match self.sending.poll(&mut self.conn.io, cx) {
                Poll::Ready(Ok(())) => self.sent = true,
                Poll::Ready(Err(error @ Error::Write(_))) => self.write_error = Some(error),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
        }
        loop {
            if let Some(head) = codec::parse_response(&mut self.conn.read, method)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    // 100 Continue and other interim answers: the final
                    // response follows.
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => {
                    let error = match self.received {
                        true => Error::Incomplete,
                        false => Error::ClosedBeforeResponse,
                    };
                    return Poll::Ready(Err(self.write_error.take().unwrap_or(error)));
                }
                Ok(_) => self.received = true,
                Err(error) => {
                    return Poll::Ready(Err(self.write_error.take().unwrap_or(Error::Read(error))))
                }
            }
        }
    }

    /// The request's body, when the failure says the pooled connection was
    /// already dead and nothing of the request can have been acted on: the
    /// target sent nothing, and either none of the request got out or it is
    /// a method that is safe to repeat.
    fn stale_retry(self, reused: bool, error: &Error, method: &Method) -> Option<AttemptBody> {
        let dead = matches!(
            error,
            Error::Write(_) | Error::Read(_) | Error::ClosedBeforeResponse
        );
        if !(reused && dead && !self.received) {
            return None;
        }
        let repeatable = self.sending.wrote_nothing() || method.is_idempotent();
        if !repeatable {
            return None;
        }
        self.sending.into_unsent_body()
    }

    fn into_response(
        self,
        head: ResponseHead,
        request: &request::Parts,
        slot: pool::Slot,
    ) -> Result<Response<Box<ResponseBody>>, Error> {
        let ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        } = head;
        let mut upgraded = None;
        let body = if status == StatusCode::SWITCHING_PROTOCOLS {
            if !request.headers.contains_key(UPGRADE) || !self.sent {
                return Err(Error::UnexpectedUpgrade);
            }
            upgraded = Some(Upgraded(Arc::new(Mutex::new(Some(self.conn.into_parts())))));
            ResponseBody::empty()
        } else {
            let keep_alive = keep_alive && self.write_error.is_none();
            let sending = (!self.sent).then_some(self.sending);
            ResponseBody::new(self.conn, framing, sending, keep_alive, slot)
        };
        // Boxed here: a response is moved a dozen times on its way to the
        // client, and a small one moves cheaply.
        let mut response = Response::new(Box::new(body));
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(upgraded) = upgraded {
            response.extensions_mut().insert(upgraded);
        }
        Ok(response)
    }
}
