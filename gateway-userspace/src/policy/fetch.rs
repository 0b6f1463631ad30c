//! GET of a small document over HTTP or HTTPS (a JWKS, a discovery
//! document), and POST of a small form (token introspection): one
//! connection per request, bounded in time and size. HTTPS verifies the
//! server against the system's CA bundle, or the file given.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::tls::client as tls_client;

/// A key set or discovery document is a few KiB; this bounds a bad one.
const MAX_DOCUMENT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher trusting the CAs in `ca_file`, or the system's.
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, String> {
        let roots = match ca_file {
            Some(path) => tls_client::load_roots(path)?,
            // Without a system bundle, HTTPS fails at connect time with a
            // clear error; plain HTTP still works.
            None => tls_client::load_roots(Path::new(tls_client::SYSTEM_CA_BUNDLE)).unwrap_or_else(
                |error| {
                    tracing::debug!(%error, "no system CA bundle");
                    rustls::RootCertStore::empty()
                },
            ),
        };
        let tls = tls_client::config(tls_client::Verify::Roots(roots), None, &[]);
        Ok(Self {
            tls: Arc::new(tls),
            timeout,
        })
    }

    /// The body of a 200 answer to `GET url`.
    pub async fn get(&self, url: &Uri) -> Result<Bytes, String> {
        self.send(url, Method::GET, None, Bytes::new()).await
    }

    /// The body of a 200 answer to a POST of the form `body`
    /// (`application/x-www-form-urlencoded`), with `authorization`.
    pub async fn post_form(
        &self,
        url: &Uri,
        authorization: Option<&HeaderValue>,
        body: String,
    ) -> Result<Bytes, String> {
        self.send(url, Method::POST, authorization, Bytes::from(body))
            .await
    }

    async fn send(
        &self,
        url: &Uri,
        method: Method,
        authorization: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Bytes, String> {
        tokio::time::timeout(
            self.timeout,
            self.send_inner(url, method, authorization, body),
        )
        .await
        .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    async fn send_inner(
        &self,
        url: &Uri,
        method: Method,
        authorization: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Bytes, String> {
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http(s) URL".into()),
        };
        let host = url.host().ok_or("no host in the URL")?;
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = TcpStream::connect((bare_host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, url.authority().expect("has a host").as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "xgate");
        if method == Method::POST {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = if https {
            let name = rustls::pki_types::ServerName::try_from(bare_host.to_string())
                .map_err(|e| format!("server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(TokioIo::new(tls), request).await?
        } else {
            send(TokioIo::new(stream), request).await?
        };
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| format!("reading the body: {e}"))
    }
}

async fn send<I>(
    io: I,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// One fetch of a document at a time, and one that a request asks for (a
/// JWT with an unknown `kid`, an endpoint that failed) at most every
/// `min_interval`, so made-up input cannot turn into a flood of fetches.
/// Callers that wait while a fetch runs share its result.
pub struct FetchGate {
    /// When the last fetch started (any cause).
    last_attempt: std::sync::Mutex<Option<std::time::Instant>>,
    fetching: tokio::sync::Mutex<()>,
    min_interval: Duration,
}

impl FetchGate {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            last_attempt: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            min_interval,
        }
    }

    /// Runs `fetch` unless one started while this caller waited or within
    /// `min_interval`.
    pub async fn on_demand<F: std::future::Future<Output = ()>>(&self, fetch: impl FnOnce() -> F) {
        let started_waiting = std::time::Instant::now();
        let _one = self.fetching.lock().await;
        let recent = self
            .last_attempt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at >= started_waiting || at.elapsed() < self.min_interval);
        if !recent {
            self.run(fetch).await;
        }
    }

    /// Runs `fetch` now (after any fetch in progress): a scheduled refresh.
    pub async fn now<F: std::future::Future<Output = ()>>(&self, fetch: impl FnOnce() -> F) {
        let _one = self.fetching.lock().await;
        self.run(fetch).await;
    }

    async fn run<F: std::future::Future<Output = ()>>(&self, fetch: impl FnOnce() -> F) {
        *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
        fetch().await;
    }
}
