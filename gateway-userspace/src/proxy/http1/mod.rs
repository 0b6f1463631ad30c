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
//! - `conn`: the connection between exchanges, and each exchange's phases
//! - `request`: the request head, parsed strictly, and its body's framing
//! - `body`: the request body, and the connection it shares with this loop
//! - `response`: the response's framing and head
//! - `writer`: the response body, framed and gathered into few writes

mod body;
mod conn;
pub(crate) mod request;
mod response;
#[cfg(test)]
mod tests;
mod writer;

use std::{
    future::{poll_fn, Future},
    io,
    pin::pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{oneshot, watch},
};

pub use self::{
    body::{BodyError, RequestBody},
    request::{HeadError, HeadLimits},
};
use self::{conn::Conn, request::RequestHead, response::Exchange};
use super::{conn_timer::ConnTimer, Body, BoxError};

/// Time to write an answer to a refused or late head before giving up on a
/// client that does not read.
const REFUSAL_WRITE: Duration = Duration::from_secs(5);

/// One listener's HTTP/1.1 settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub head: HeadLimits,
    /// For each request head, from when the server starts waiting for it
    /// (an idle keep-alive connection included).
    pub header_read_timeout: Duration,
    /// Longest wait for the client to take more of a response (between two
    /// writes that move bytes).
    pub send_timeout: Duration,
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
    #[error("the client took no bytes of the response within send_timeout; closed")]
    SendTimeout,
    #[error("101 Switching Protocols to a request that did not ask to upgrade")]
    UnaskedUpgrade,
    #[error("101 Switching Protocols while the request body is still held")]
    UpgradeBodyHeld,
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
    let mut conn = Conn::new(stream, settings, timer, shutdown.wait_for(|s| *s));
    loop {
        let mut deadline = conn.head_deadline();
        let head = match poll_fn(|cx| conn.poll_head(&mut deadline, cx)).await {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(wait) => return conn.head_failed(wait).await,
        };
        let RequestHead {
            parts,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
            trailers,
        } = head;
        let method = parts.method.clone();
        let version = parts.version;
        let mut request = Request::from_parts(parts, conn.request_body(framing, expect_continue));
        let handover = upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            request
                .extensions_mut()
                .insert(ClientUpgrade(Arc::new(Mutex::new(Some(rx)))));
            tx
        });

        // The proxy's answer, while the client is watched. Everything on
        // this path is polled in place: the request's future is large, and
        // each move into another future would copy it.
        let mut pending = pin!(service(request));
        let mut read_closed = false;
        let answer = poll_fn(|cx| conn.poll_answer(pending.as_mut(), &mut read_closed, cx)).await;
        let Some(response) = answer else {
            return Err(Error::Read(io::ErrorKind::ConnectionReset.into()));
        };
        let exchange = Exchange {
            method: &method,
            version,
            trailers,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return conn.switch_protocols(exchange, response, handover).await;
        }
        let (mut writer, close) =
            conn.start_response(exchange, response, !keep_alive || read_closed);
        poll_fn(|cx| conn.poll_write(&mut writer, cx)).await?;
        drop(writer);
        if !conn.end_exchange() || close {
            return conn.shutdown().await;
        }
    }
}
