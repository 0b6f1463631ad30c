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

use super::api::{AddRequest, RevokedTokens, Status};
use crate::{
    daemon::Reloader,
    duration,
    lists::{parse_cidr, ListError, SourceLists},
    telemetry::Metrics,
    token_server::RefreshTokens,
    xdp::ListKind,
};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Admin requests are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct AdminState {
    pub lists: Arc<SourceLists>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The OAuth 2.0 token server's refresh tokens.
    pub refresh_tokens: Arc<RefreshTokens>,
    pub started: Instant,
    pub listeners: Vec<SocketAddr>,
    /// Why XDP is not attached, when it is not.
    pub xdp_off_reason: Option<String>,
    /// /metrics, /livez and /readyz.
    pub observed: Arc<super::health::Observed>,
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
                tracing::debug!(error = %crate::error_text::Chain(&error), "admin connection error");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    // `/blocklist[/CIDR]` and `/allowlist[/CIDR]` share handlers.
    let trimmed = path.trim_start_matches('/');
    let (head, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let list = match head {
        "blocklist" => Some(ListKind::Deny),
        "allowlist" => Some(ListKind::Allow),
        _ => None,
    };
    if let Some(response) = state.observed.answer(req.method(), &path) {
        return response;
    }
    match (req.method().clone(), path.as_str(), list) {
        (Method::GET, "/status", _) => json(StatusCode::OK, &status(state)),
        (Method::POST, "/reload", _) => match state.reloader.reload() {
            Ok(report) => json(StatusCode::OK, &report),
            Err(message) => error(StatusCode::BAD_REQUEST, &message),
        },
        (Method::GET, "/oauth2/refresh-tokens", _) => json(
            StatusCode::OK,
            &state.refresh_tokens.by_client(crate::policy::unix_now()),
        ),
        (Method::DELETE, _, _) if path.starts_with(REFRESH_TOKENS_OF) => {
            revoke_refresh_tokens(state, &path[REFRESH_TOKENS_OF.len()..]).await
        }
        (Method::GET, _, Some(kind)) if rest.is_empty() => {
            json(StatusCode::OK, &state.lists.list(kind))
        }
        (Method::POST, _, Some(kind)) if rest.is_empty() => add(state, kind, req).await,
        (Method::DELETE, _, Some(kind)) if !rest.is_empty() => remove(state, kind, rest),
        (_, "/status" | "/reload" | "/oauth2/refresh-tokens", _) | (_, _, Some(_)) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no admin endpoint {path}")),
    }
}

/// `DELETE /oauth2/refresh-tokens/<client_id>`.
const REFRESH_TOKENS_OF: &str = "/oauth2/refresh-tokens/";

/// Revokes every refresh token of a client; answered once that is on disk.
async fn revoke_refresh_tokens(state: &AdminState, client_id: &str) -> Response<Body> {
    if client_id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no client_id in the path");
    }
    let revoked = state.refresh_tokens.revoke_client(client_id);
    if let Err(message) = state.refresh_tokens.persist().await {
        tracing::error!(error = %message, "revoked refresh tokens not saved");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("revoked until a restart only: {message}"),
        );
    }
    tracing::info!(client_id, revoked, "refresh tokens revoked by the admin");
    json(
        StatusCode::OK,
        &RevokedTokens {
            client_id: client_id.to_string(),
            revoked,
        },
    )
}

fn status(state: &AdminState) -> Status {
    let (xdp, xdp_error) = match state.lists.xdp_status() {
        Some(Ok(s)) => (Some(s), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, state.xdp_off_reason.clone()),
    };
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        listeners: state.listeners.clone(),
        routes: state.reloader.route_count(),
        blocklist_entries: state.lists.list(ListKind::Deny).len(),
        allowlist_entries: state.lists.list(ListKind::Allow).len(),
        l7_denied_connections: state.metrics.l7_denied_connections(),
        reloads: state.metrics.reloads(),
        xdp,
        xdp_off_reason: xdp_error,
    }
}

async fn add(state: &AdminState, kind: ListKind, req: Request<Incoming>) -> Response<Body> {
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
    match state.lists.add(kind, cidr, request.reason, ttl) {
        Ok(entry) => json(StatusCode::CREATED, &entry),
        Err(e) => list_error(e),
    }
}

fn remove(state: &AdminState, kind: ListKind, raw: &str) -> Response<Body> {
    let cidr = match parse_cidr(raw) {
        Ok(c) => c,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match state.lists.remove(kind, cidr) {
        Ok(entry) => json(StatusCode::OK, &entry),
        Err(e) => list_error(e),
    }
}

fn list_error(e: ListError) -> Response<Body> {
    let status = match &e {
        ListError::Invalid(_) => StatusCode::BAD_REQUEST,
        ListError::Duplicate { .. } | ListError::FromConfig { .. } => StatusCode::CONFLICT,
        ListError::NotFound { .. } => StatusCode::NOT_FOUND,
        ListError::Kernel(_) | ListError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if !e.is_client_error() {
        tracing::error!(error = %e, "list change failed");
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
