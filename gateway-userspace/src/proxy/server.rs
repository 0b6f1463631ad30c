//! Listeners: accept; refuse blocklisted sources; read the PROXY protocol
//! header (trusted peers only); terminate TLS; serve HTTP/1.1 and HTTP/2
//! (ALPN, or h2c with prior knowledge) with upgrades; enforce the
//! connection-level limits; drain on shutdown.
//!
//! One connection goes through two phases. The handshake (PROXY header, TLS)
//! is bounded by `handshake_timeout`, and completed at shutdown too (an
//! accepted connection's client is waiting for its first answer). Then HTTP, with `header_read_timeout`,
//! `max_header_bytes` and `max_headers`: HTTP/1.1 by xgate's own server
//! (`http1`), HTTP/2 by hyper's. At shutdown each finishes what is in
//! flight (HTTP/2 sends GOAWAY) until the drain deadline, when every
//! connection and upgraded tunnel still open is cut.

use std::{
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header::HOST, HeaderValue, Request, StatusCode, Version};
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    server::conn::http2,
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

pub use super::drain::DrainTimeout;
use super::{
    conn_io::{sniff_preface, Prefixed, SendTimed, Sniffed, Stream},
    conn_timer::ConnTimer,
    drain::{until_drained, ConnectionScope, Rarely, Tracker},
    headers::is_trusted,
    http1::{self, ClientUpgrade, HeadLimits},
    stream_stall::StallWatch,
    workers::Workers,
};
use super::{
    handle,
    proxy_protocol::{self, ProxyHeaderError},
    tls, Body, BoxError, ClientCertificate, ConnInfo, RuntimeHandle,
};
use crate::{
    config::{Config, ConfigError},
    lists::SourceLists,
    telemetry::Metrics,
};

/// After the drain deadline, time for cut connections to close their
/// sockets before the listener reports done.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Response bytes the kernel holds unsent for one client connection
/// (`TCP_NOTSENT_LOWAT`; what is in flight, within the client's window, is
/// not counted, so a fast client's throughput is not limited). Without it
/// the send buffer of a client that stops reading grows to `tcp_wmem`'s
/// maximum (4 MiB by default): a thousand such clients filled the host's
/// TCP memory (`tcp_mem`), and every other connection then stalled on
/// dropped packets. 64 KiB keeps the writes to a fast client large.
const CLIENT_NOTSENT_LOWAT: u32 = 64 * 1024;

/// One listener's settings, compiled from config. Swapped whole on reload;
/// each connection uses those current when it was accepted.
pub struct Settings {
    tls: Option<TlsAcceptor>,
    http2: bool,
    proxy_protocol: bool,
    handshake_timeout: Duration,
    /// HTTP/1.1, and with `http2` on, whatever does not start with the
    /// HTTP/2 preface.
    http1: http1::Settings,
    /// Connections that start with the HTTP/2 preface (`http2` on).
    http2_server: http2::Builder<TokioExecutor>,
}

impl Settings {
    /// Compiles `listeners[index]` of `config`; reads the certificate files.
    /// Errors carry the config path of the file at fault.
    pub fn compile(config: &Config, index: usize) -> Result<Self, ConfigError> {
        let listener = &config.listeners[index];
        let tls = tls::server_config(index, listener)?.map(TlsAcceptor::from);
        // proxy_protocol without trusted_proxies is a config warning
        // (config::warnings), logged with the others at start and reload.
        let http1 = http1::Settings {
            head: HeadLimits {
                max_bytes: listener.max_header_bytes,
                max_fields: listener.max_headers,
            },
            header_read_timeout: listener.header_read_timeout,
            send_timeout: listener.send_timeout,
        };
        let mut http2_server = http2::Builder::new(TokioExecutor::new());
        http2_server
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(listener.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(listener.http2_max_concurrent_streams);
        Ok(Self {
            tls,
            http2: listener.http2,
            proxy_protocol: listener.proxy_protocol,
            handshake_timeout: listener.handshake_timeout,
            http1,
            http2_server,
        })
    }
}

/// The current settings of one listener.
pub struct SettingsHandle(RwLock<Arc<Settings>>);

impl SettingsHandle {
    pub fn new(settings: Settings) -> Self {
        Self(RwLock::new(Arc::new(settings)))
    }

    pub fn load(&self) -> Arc<Settings> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn store(&self, settings: Settings) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
    }
}

/// A bound listener, ready to serve.
pub struct Listener {
    /// Label in logs and metrics.
    pub name: String,
    pub socket: TcpListener,
    pub settings: Arc<SettingsHandle>,
}

/// Serves one listener until `shutdown` flips (the daemon stops, or a
/// reload removed the listener): accepts, refuses blocklisted peers, and
/// hands every other connection to the next worker. Then closes the
/// socket and lets open connections (and upgraded tunnels) finish for up to
/// `drain` (as it is then) before cutting them.
pub async fn serve(
    listener: Listener,
    runtime: Arc<RuntimeHandle>,
    lists: Arc<SourceLists>,
    metrics: Arc<Metrics>,
    workers: Arc<Workers>,
    mut shutdown: watch::Receiver<bool>,
    drain: Arc<DrainTimeout>,
) {
    let Listener {
        name,
        socket,
        settings,
    } = listener;
    let tracker = Tracker::new();
    let (close_tx, close_rx) = watch::channel(false);
    let listener_name: Arc<str> = Arc::from(name.as_str());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        if let Some(rule) = lists.denies(peer.ip()) {
            metrics.l7_denied_connection();
            metrics.refused_sources.record(peer.ip(), "deny_list");
            runtime
                .load()
                .access_log
                .write_refused_connection(peer.ip(), &name, rule);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let _ = crate::sys::set_notsent_lowat(&stream, CLIENT_NOTSENT_LOWAT);
        let connection = Connection {
            peer,
            listener: listener_name.clone(),
            settings: settings.load(),
            runtime: runtime.clone(),
            lists: lists.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            scope: ConnectionScope::new(
                metrics.connection_opened(&name),
                tracker.track(),
                close_rx.clone(),
            ),
        };
        // The connection lives on a worker from here on (see `workers`).
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot hand an accepted connection to a worker");
                continue;
            }
        };
        workers.spawn(move || async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => connection.run(stream).await,
                Err(error) => tracing::warn!(%error, "worker cannot take a connection"),
            }
        });
    }
    drop(socket);
    if tokio::time::timeout(drain.get(), tracker.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = %name,
            open = tracker.open(),
            "drain deadline passed; closing the remaining connections"
        );
        let _ = close_tx.send(true);
        let _ = tokio::time::timeout(CLOSE_GRACE, tracker.idle()).await;
    }
}

/// Why a connection was closed before HTTP.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("PROXY protocol header from a peer not in trusted_proxies")]
    UntrustedProxy,
    #[error(transparent)]
    ProxyHeader(ProxyHeaderError),
    #[error("client {client} (from the PROXY header) is blocklisted by {rule}")]
    Blocked { client: IpAddr, rule: IpNet },
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error(transparent)]
    ClientCertificate(crate::exchange::client_cert::Unreadable),
    #[error("handshake not completed within handshake_timeout")]
    Timeout,
}

/// After the handshake: the byte stream and who is on the other end.
struct Established {
    stream: Stream,
    client: SocketAddr,
    scheme: &'static str,
    /// Both HTTP/1.1 and HTTP/2 may follow (detected from the first bytes).
    h2: bool,
    /// The client's certificate, verified by the handshake.
    client_cert: Option<Arc<ClientCertificate>>,
    /// The TLS version agreed, for the access log.
    tls_version: Option<&'static str>,
}

struct Connection {
    peer: SocketAddr,
    /// The listener's name, for metrics.
    listener: Arc<str>,
    settings: Arc<Settings>,
    runtime: Arc<RuntimeHandle>,
    lists: Arc<SourceLists>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    scope: ConnectionScope,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let mut scope = self.scope.clone();
        tokio::select! {
            () = self.serve(stream) => {}
            () = Rarely::new(scope.closed()) => tracing::debug!("connection cut at the drain deadline"),
        }
    }

    async fn serve(self, stream: TcpStream) {
        let peer = self.peer;
        let mut shutdown = self.shutdown.clone();
        // Finished even when the drain has started: the connection was
        // accepted and its client is waiting (a listener handed to a new
        // process must not fail it). The drain deadline still cuts it.
        let established =
            tokio::time::timeout(self.settings.handshake_timeout, self.handshake(stream))
                .await
                .unwrap_or(Err(Refused::Timeout));
        let established = match established {
            Ok(established) => established,
            Err(refused) => {
                if let Refused::Blocked { client, rule } = &refused {
                    // The PROXY header named a blocked client.
                    self.runtime.load().access_log.write_refused_connection(
                        *client,
                        &self.listener,
                        *rule,
                    );
                }
                if matches!(
                    refused,
                    Refused::ProxyHeader(_) | Refused::ClientCertificate(_)
                ) {
                    // A trusted balancer sending garbage, or a certificate
                    // the operator's own CA issued that cannot be read, is
                    // something the operator must see.
                    tracing::warn!(peer = %peer, error = %refused, "connection closed");
                } else {
                    tracing::debug!(peer = %peer, error = %refused, "connection closed");
                }
                return;
            }
        };
        let Established {
            stream,
            client,
            scheme,
            h2,
            client_cert,
            tls_version,
        } = established;

        // With HTTP/2 on, the first bytes say which protocol follows; they are
        // read here, bounded like a request head, and replayed.
        let sniffed = if h2 {
            let sniff = tokio::time::timeout(
                self.settings.http1.header_read_timeout,
                sniff_preface(stream),
            );
            match sniff.await {
                Ok(Ok(sniffed)) => sniffed,
                Ok(Err(error)) => {
                    tracing::debug!(client.ip = %client.ip(), %error, "connection failed before a request");
                    return;
                }
                Err(_elapsed) => {
                    tracing::debug!(client.ip = %client.ip(), "no request within header_read_timeout; closed");
                    return;
                }
            }
        } else {
            Sniffed::Http1(Prefixed::new(stream, Bytes::new()))
        };
        let client_ip = client.ip();
        let runtime = self.runtime.clone();
        let settings = self.settings.clone();
        let result = match sniffed {
            Sniffed::Http1(stream) => {
                let timer = ConnTimer::new();
                let conn_info = Arc::new(
                    ConnInfo::new(peer, client, scheme, Some(timer.clone()))
                        .on_listener(self.listener.clone())
                        .with_tls_version(tls_version)
                        .with_client_cert(client_cert),
                );
                let scope = self.scope.clone();
                let service = move |mut req: Request<http1::RequestBody<Prefixed<Stream>>>| {
                    if req
                        .extensions()
                        .get::<ClientUpgrade<Prefixed<Stream>>>()
                        .is_some()
                    {
                        // A tunnel may outlive this connection's HTTP phase
                        // and must stay in the drain.
                        req.extensions_mut().insert(scope.clone());
                    }
                    handle(runtime.load(), req, conn_info.clone())
                };
                let result =
                    http1::serve(stream, settings.http1, &timer, &mut shutdown, service).await;
                match &result {
                    Err(http1::Error::Head(refused)) => self.head_refused(
                        client_ip,
                        refused.status(),
                        refused.rejection(),
                        &refused.to_string(),
                    ),
                    Err(http1::Error::HeadTimeout) => self.head_refused(
                        client_ip,
                        StatusCode::REQUEST_TIMEOUT,
                        "head_timeout",
                        "request head not complete within header_read_timeout",
                    ),
                    Err(http1::Error::SendTimeout) => {
                        return send_timed_out(&self.metrics, &self.listener, client_ip)
                    }
                    _ => {}
                }
                result.map_err(BoxError::from)
            }
            Sniffed::Http2(stream) => {
                let (metrics, listener) = (self.metrics.clone(), self.listener.clone());
                // The listener's send timeout, on the connection's writes
                // (see `SendTimed` for what it cannot see).
                let stream = SendTimed::new(stream, settings.http1.send_timeout, move || {
                    send_timed_out(&metrics, &listener, client_ip)
                });
                let conn_info = Arc::new(
                    ConnInfo::new(peer, client, scheme, None)
                        .on_listener(self.listener.clone())
                        .with_tls_version(tls_version)
                        .with_client_cert(client_cert),
                );
                // And on each stream's wait for flow-control window.
                let stalls = StallWatch::new(settings.http1.send_timeout);
                let watch = stalls.clone();
                let service = service_fn(move |mut req: Request<Incoming>| {
                    host_from_authority(&mut req);
                    let runtime = runtime.load();
                    let conn_info = conn_info.clone();
                    let watch = watch.clone();
                    async move {
                        let response = handle(runtime, req, conn_info).await;
                        Ok::<_, Infallible>(response.map(|body| watch.watch(ResponseBody(body))))
                    }
                });
                let connection = settings
                    .http2_server
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    result = until_drained(connection, &mut shutdown, |c| c.graceful_shutdown()) => {
                        result.map_err(BoxError::from)
                    }
                    () = stalls.stalled() => {
                        return send_timed_out(&self.metrics, &self.listener, client_ip);
                    }
                }
            }
            Sniffed::Nothing => return,
        };
        if let Err(error) = result {
            tracing::debug!(
                client.ip = %client_ip,
                error = %crate::error_text::Chain(&*error),
                "connection ended with an error"
            );
        }
    }

    /// A head the HTTP/1.1 server answered itself (it never became a
    /// request): counted, and logged with what is known of it.
    fn head_refused(&self, client_ip: IpAddr, status: StatusCode, rejection: &str, detail: &str) {
        self.metrics.head_refused(&self.listener, status.as_u16());
        self.runtime.load().access_log.write_refused_head(
            client_ip,
            &self.listener,
            status.as_u16(),
            rejection,
            detail,
        );
    }

    /// Reads the PROXY header (when configured) and completes TLS (when
    /// configured).
    async fn handshake(&self, mut tcp: TcpStream) -> Result<Established, Refused> {
        let mut client = self.peer;
        let mut replay = Bytes::new();
        if self.settings.proxy_protocol {
            if !is_trusted(self.peer.ip(), &self.runtime.load().trusted_proxies) {
                return Err(Refused::UntrustedProxy);
            }
            let (header, rest) = proxy_protocol::read_header(&mut tcp)
                .await
                .map_err(Refused::ProxyHeader)?;
            replay = rest;
            if let Some(source) = header.source {
                client = source;
                if let Some(rule) = self.lists.denies(source.ip()) {
                    self.metrics.l7_denied_connection();
                    self.metrics
                        .refused_sources
                        .record(source.ip(), "deny_list");
                    return Err(Refused::Blocked {
                        client: source.ip(),
                        rule,
                    });
                }
            }
        }
        let io = Prefixed::new(tcp, replay);
        match &self.settings.tls {
            None => Ok(Established {
                stream: Stream::Plain(io),
                client,
                scheme: "http",
                h2: self.settings.http2,
                client_cert: None,
                tls_version: None,
            }),
            Some(acceptor) => {
                let tls = acceptor.accept(io).await.map_err(Refused::Tls)?;
                let session = tls.get_ref().1;
                let h2 = session.alpn_protocol() == Some(tls::ALPN_H2);
                let tls_version = session.protocol_version().map(tls::version_name);
                // Present only when the listener asked and the verifier
                // accepted it; read once for every request to come.
                let client_cert = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| ClientCertificate::parse(leaf).map(Arc::new))
                    .transpose()
                    .map_err(Refused::ClientCertificate)?;
                Ok(Established {
                    stream: Stream::Tls(Box::new(tls)),
                    client,
                    scheme: "https",
                    h2,
                    client_cert,
                    tls_version,
                })
            }
        }
    }
}

/// A connection closed because its client took no bytes of a response for
/// `send_timeout`: counted, and logged with the client (at info, as nginx
/// does: the client's doing, not something for the operator to fix).
fn send_timed_out(metrics: &Metrics, listener: &str, client_ip: IpAddr) {
    metrics.client_send_timeout(listener);
    tracing::info!(
        client.ip = %client_ip,
        listener,
        "client took no bytes of a response within send_timeout; connection closed"
    );
}

/// Response bodies as handed to hyper: the proxy's [`Body`] with a concrete
/// error type. With a `Box<dyn Error>` error, rustc's Send check of the
/// spawned connection future fails ("implementation of `From` is not general
/// enough", a higher-ranked lifetime limitation).
struct ResponseBody(Body);

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.0)
            .poll_frame(cx)
            .map(|frame| frame.map(|result| result.map_err(BodyError)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

#[derive(Debug)]
struct BodyError(BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// HTTP/2 carries the host in `:authority`; the HTTP/1.1 request upstream
/// needs a `Host` (RFC 9113 §8.3.1), and routing reads it from one place.
fn host_from_authority(req: &mut Request<Incoming>) {
    if req.version() != Version::HTTP_2 || req.headers().contains_key(HOST) {
        return;
    }
    if let Some(host) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(HOST, host);
    }
}
