//! The admin API, served on a Unix socket (mode 0600): only the local
//! operator (root) may reach it.

use std::{
    convert::Infallible,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::{net::UnixListener, sync::watch};

use super::api::{AddRequest, Status};
use crate::{
    blocklist::{parse_cidr, Blocklist},
    duration,
    telemetry::Metrics,
};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Admin requests are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct AdminState {
    pub blocklist: Arc<Blocklist>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    pub listeners: Vec<SocketAddr>,
    pub routes: usize,
    /// Why XDP is not attached, when it is not.
    pub xdp_off_reason: Option<String>,
}

/// Binds the socket, refusing to steal it from a live daemon.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another xgate daemon is already serving the admin API at {}",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind admin socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection error");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/status") => json(StatusCode::OK, &status(state)),
        (Method::GET, "/metrics") => {
            let counters = state
                .blocklist
                .xdp_status()
                .and_then(Result::ok)
                .map(|s| s.counters);
            let text = state.metrics.render(counters.as_ref());
            respond(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (Method::GET, "/blocklist") => json(StatusCode::OK, &state.blocklist.list()),
        (Method::POST, "/blocklist") => add(state, req).await,
        (Method::DELETE, p) if p.starts_with("/blocklist/") => {
            remove(state, &p["/blocklist/".len()..])
        }
        (_, "/status" | "/metrics" | "/blocklist") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no admin endpoint {path}")),
    }
}

fn status(state: &AdminState) -> Status {
    let (xdp, xdp_error) = match state.blocklist.xdp_status() {
        Some(Ok(s)) => (Some(s), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, state.xdp_off_reason.clone()),
    };
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        listeners: state.listeners.clone(),
        routes: state.routes,
        blocklist_entries: state.blocklist.list().len(),
        l7_denied_connections: state.metrics.l7_denied_connections(),
        xdp,
        xdp_off_reason: xdp_error,
    }
}

async fn add(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let request: AddRequest = match read_json(req).await {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let cidr = match parse_cidr(&request.cidr) {
        Ok(c) => c,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let ttl = match request.ttl.as_deref().map(duration::parse).transpose() {
        Ok(t) => t,
        Err(message) => return error(StatusCode::BAD_REQUEST, &format!("ttl: {message}")),
    };
    match state.blocklist.add(cidr, request.reason, ttl) {
        Ok(entry) => json(StatusCode::CREATED, &entry),
        Err(e) => blocklist_error(e),
    }
}

fn remove(state: &AdminState, raw: &str) -> Response<Body> {
    let cidr = match parse_cidr(raw) {
        Ok(c) => c,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match state.blocklist.remove(cidr) {
        Ok(entry) => json(StatusCode::OK, &entry),
        Err(e) => blocklist_error(e),
    }
}

fn blocklist_error(e: crate::blocklist::BlocklistError) -> Response<Body> {
    use crate::blocklist::BlocklistError as E;
    let status = match &e {
        E::Invalid(_) => StatusCode::BAD_REQUEST,
        E::Duplicate { .. } | E::FromConfig(_) => StatusCode::CONFLICT,
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::Kernel(_) | E::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if !e.is_client_error() {
        tracing::error!(error = %e, "blocklist change failed");
    }
    error(status, &e.to_string())
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, String> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("cannot read request body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_string(value).expect("serializable"),
    )
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response parts")
}
