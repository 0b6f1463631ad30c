//! A real HTTP upstream for tests and the quickstart: HTTP/1.1 and HTTP/2
//! (prior knowledge, h2c) on the same port. It answers every request with a
//! JSON description of what it received (method, version, path, headers, body
//! size, trailers); `/status/<code>` answers with that status, `/delay/<ms>` waits
//! first, `/bytes/<n>` sends n bytes, `/stream/<n>` streams n bytes in 64 KiB
//! chunks without holding them; an `Upgrade` request (WebSocket style) gets
//! `101 Switching Protocols` and then every byte echoed back. Request bodies
//! are counted frame by frame, never held whole, so gigabyte uploads cost no
//! memory here.
//!
//! Started with a rustls server configuration ([`EchoUpstream::start_tls`],
//! see `tls::server_config`), it speaks TLS (HTTP/1.1 or HTTP/2, whatever
//! the client speaks) and reports in `"tls"` the SNI, the ALPN protocol and
//! whether a client certificate was presented. It counts the connections it
//! accepts either way, to see pooling.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    service::service_fn,
    Request, Response,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

/// A running echo upstream; [`EchoUpstream::stop`] (or aborting its task)
/// closes the listener and every connection.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    accepted: Arc<AtomicUsize>,
}

impl EchoUpstream {
    /// Starts on `addr` (port 0 picks a free one) with the given name, which
    /// every response reports in `"upstream"` so tests can see balancing.
    pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        Self::start_with(addr, name, None).await
    }

    /// Like [`EchoUpstream::start`], speaking TLS with `tls`. A connection
    /// whose handshake fails is dropped (it still counts as accepted).
    pub async fn start_tls(
        addr: SocketAddr,
        name: &str,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        Self::start_with(addr, name, Some(TlsAcceptor::from(tls))).await
    }

    async fn start_with(
        addr: SocketAddr,
        name: &str,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve_counted(
            listener,
            name.to_string(),
            tls,
            accepted.clone(),
        ));
        Ok(Self {
            addr,
            task,
            accepted,
        })
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops as a killed server would: the listening socket and every open
    /// connection are closed.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Serves until the task is aborted, which also ends every connection.
pub async fn serve(listener: TcpListener, name: String) {
    serve_counted(listener, name, None, Arc::default()).await;
}

/// What the TLS handshake of a connection settled, as the echo reports it.
#[derive(Clone)]
struct TlsSeen(serde_json::Value);

async fn serve_counted(
    listener: TcpListener,
    name: String,
    tls: Option<TlsAcceptor>,
    accepted: Arc<AtomicUsize>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        while connections.try_join_next().is_some() {}
        let name = name.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(stream, peer, name, None).await;
            };
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let session = stream.get_ref().1;
            let seen = TlsSeen(serde_json::json!({
                "sni": session.server_name(),
                "alpn": session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                "client_cert": session.peer_certificates().is_some_and(|c| !c.is_empty()),
            }));
            serve_connection(stream, peer, name, Some(seen)).await;
        });
    }
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, name: String, tls: Option<TlsSeen>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let name = name.clone();
        let tls = tls.clone();
        async move { Ok::<_, Infallible>(echo(req, peer, &name, tls).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Well above any gateway's limit, so that a 431 a test sees is the
    // gateway's (it adds X-Forwarded-* and friends).
    builder.http1().max_headers(1000);
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

type EchoBody = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> EchoBody {
    Full::new(bytes.into()).boxed()
}

/// `n` bytes of `x`, produced one chunk at a time as hyper asks for them.
struct Stream {
    remaining: u64,
    chunk: Bytes,
}

impl Stream {
    const CHUNK: usize = 64 * 1024;

    fn new(n: u64) -> Self {
        Self {
            remaining: n,
            chunk: Bytes::from(vec![b'x'; Self::CHUNK]),
        }
    }
}

impl Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(Self::CHUNK as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

async fn echo(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    name: &str,
    tls: Option<TlsSeen>,
) -> Response<EchoBody> {
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let protocol = req.headers()[hyper::header::UPGRADE].clone();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        return Response::builder()
            .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, protocol)
            .header("x-upstream", name)
            .body(full(Bytes::new()))
            .expect("valid response");
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let uri = req.uri().to_string();
    let path = req.uri().path().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    let mut trailers = serde_json::Map::new();
    while let Some(Ok(frame)) = body.frame().await {
        match frame.into_data() {
            Ok(data) => body_bytes += data.len() as u64,
            Err(frame) => {
                for (k, v) in frame.into_trailers().iter().flatten() {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    trailers.insert(k.to_string(), serde_json::Value::String(v));
                }
            }
        }
    }
    if let Some(delay) = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .unwrap_or(200);
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .header("x-upstream", name)
            .body(full(vec![b'x'; n]))
            .expect("valid response");
    }
    if let Some(n) = path
        .strip_prefix("/stream/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .header("x-upstream", name)
            .body(Stream::new(n).boxed())
            .expect("valid response");
    }
    let mut doc = serde_json::json!({
        "upstream": name,
        "method": method,
        "version": version,
        "uri": uri,
        "path": path,
        "peer": peer.to_string(),
        "headers": headers,
        "body_bytes": body_bytes,
        "trailers": trailers,
    });
    if let Some(TlsSeen(seen)) = tls {
        doc["tls"] = seen;
    }
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(full(doc.to_string()))
        .expect("valid response")
}
