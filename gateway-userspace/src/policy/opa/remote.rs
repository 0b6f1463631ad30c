//! A remote policy: `POST <url>/v1/data/<decision>` with `{"input": ...}`
//! to an OPA-compatible server, over keep-alive connections pooled per
//! proxy worker (a pooled connection's task runs on the worker that opened
//! it), HTTP or HTTPS (rustls, the server verified against `ca_file` or the
//! system's CAs). Answers are `{"result": ...}`; no `result` is undefined.

use std::{
    future::Future,
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection, HttpConnector},
        Client,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{config::opa::OpaServer, tls::client as tls_client, workers};

/// A decision is a small document; this bounds a broken server's answer.
const MAX_ANSWER: usize = 1024 * 1024;

pub struct Remote {
    url: Uri,
    clients: Vec<Client<Connector, Full<Bytes>>>,
    timeout: Duration,
}

impl Remote {
    pub fn new(config: &OpaServer, decision: &str) -> Result<Self, String> {
        let base = config.url.trim_end_matches('/');
        let url: Uri = format!("{base}/v1/data/{decision}")
            .parse()
            .map_err(|e| format!("server.url: {e}"))?;
        let tls = if url.scheme_str() == Some("https") {
            let roots = match &config.ca_file {
                Some(path) => tls_client::load_roots(path)?,
                None => tls_client::load_roots(Path::new(tls_client::SYSTEM_CA_BUNDLE))
                    .map_err(|e| format!("server.ca_file not set, and the system's CAs: {e}"))?,
            };
            let config = tls_client::config(
                tls_client::Verify::Roots(roots),
                None,
                &[tls_client::ALPN_HTTP11],
            );
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = Connector { http, tls };
        let clients = (0..workers::count())
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(config.pool_idle_timeout)
                    .build(connector.clone())
            })
            .collect();
        Ok(Self {
            url,
            clients,
            timeout: config.timeout,
        })
    }

    /// The decision's value for `input` (`None`: undefined).
    pub async fn ask(&self, input: &regorus::Value) -> Result<Option<serde_json::Value>, String> {
        // `{"input": <the document>}`
        let mut body = Vec::with_capacity(1024);
        body.extend_from_slice(b"{\"input\":");
        serde_json::to_writer(&mut body, input).map_err(|e| format!("input: {e}"))?;
        body.push(b'}');
        tokio::time::timeout(self.timeout, self.send(Bytes::from(body)))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    async fn send(&self, body: Bytes) -> Result<Option<serde_json::Value>, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "xgate")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let client = &self.clients[workers::current() % self.clients.len()];
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{}: {e:?}", self.url))?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        let mut answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| format!("answer is not JSON: {e}"))?;
        match answer.as_object_mut() {
            Some(object) => Ok(object.remove("result")),
            None => Err("answer is not a JSON object".into()),
        }
    }
}

/// Opens plain or TLS connections to the policy server.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = PolicyConnection;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PolicyConnection>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let tcp = tower_service::Service::call(&mut http, uri)
                .await
                .map_err(io::Error::other)?
                .into_inner();
            match tls {
                None => Ok(PolicyConnection::Plain(TokioIo::new(tcp))),
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(host)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let stream = tls.connect(name, tcp).await?;
                    Ok(PolicyConnection::Tls(Box::new(TokioIo::new(stream))))
                }
            }
        })
    }
}

/// A connection as hyper's pool takes it.
enum PolicyConnection {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for PolicyConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

macro_rules! either {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            PolicyConnection::Plain($io) => $e,
            PolicyConnection::Tls($io) => {
                let $io = &mut **$io;
                $e
            }
        }
    };
}

impl hyper::rt::Read for PolicyConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl hyper::rt::Write for PolicyConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, io => Pin::new(io).poll_shutdown(cx))
    }
}
