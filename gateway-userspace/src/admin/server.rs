//! The admin API, served on a Unix socket: only root and the admin group
//! may reach it (see `access`).

use std::{
    convert::Infallible,
    os::unix::fs::MetadataExt,
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

use super::api::{AddRequest, Ban, RevokedTokens, Status};
use crate::{
    daemon::Reloader,
    duration,
    lists::{parse_cidr, ListError, SourceLists},
    telemetry::Metrics,
    token_server::RefreshTokens,
    xdp::ListKind,
};

pub(super) type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Admin requests are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct AdminState {
    pub lists: Arc<SourceLists>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The OAuth 2.0 token server's refresh tokens.
    pub refresh_tokens: Arc<RefreshTokens>,
    pub started: Instant,
    /// Why XDP is not attached, when it is not.
    pub xdp_off_reason: Option<String>,
    /// `admin.metrics_address`: where it listens, or why not.
    pub metrics_listener: String,
    /// Cluster mode's sync, when configured.
    pub cluster: Option<Arc<crate::lists::cluster::ClusterState>>,
    /// /metrics, /livez and /readyz.
    pub observed: Arc<super::health::Observed>,
    /// Who may connect.
    pub access: super::access::Access,
}

/// Binds the socket, refusing to steal it from a live daemon unless
/// `replace` (a takeover: the live daemon is on its way out).
pub async fn bind(
    path: &Path,
    replace: bool,
    access: &super::access::Access,
) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if !replace && tokio::net::UnixStream::connect(path).await.is_ok() {
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
    access.secure(path)?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    // After a takeover the path is the new daemon's socket: removed at the
    // end only while it is still this one.
    let ours = std::fs::metadata(&path).map(|m| m.ino()).ok();
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
            let refusal = refusal(&state.access, &stream);
            let service = service_fn(move |req| {
                let state = state.clone();
                let refusal = refusal.clone();
                async move {
                    Ok::<_, Infallible>(match refusal {
                        Some(message) => error(StatusCode::FORBIDDEN, &message),
                        None => route(&state, req).await,
                    })
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %crate::error_text::Chain(&error), "admin connection error");
            }
        });
    }
    if ours.is_some() && std::fs::metadata(&path).map(|m| m.ino()).ok() == ours {
        let _ = std::fs::remove_file(&path);
    }
}

/// Why the peer on `stream` may not use the API, if it may not (checked by
/// its credentials, whatever the socket file's mode).
fn refusal(access: &super::access::Access, stream: &tokio::net::UnixStream) -> Option<String> {
    let refused = match stream.peer_cred() {
        Ok(peer) if access.allows(peer.uid(), peer.gid()) => return None,
        Ok(peer) => {
            let message = access.refusal(peer.uid());
            tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "{message}");
            message
        }
        Err(error) => format!("admin API refused: the peer's credentials are unknown ({error})"),
    };
    Some(refused)
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
    if let Some(response) = state.observed.answer(req.method(), &path, req.headers()) {
        return response;
    }
    match (req.method().clone(), path.as_str(), list) {
        (Method::GET, "/status", _) => json(StatusCode::OK, &status(state)),
        (Method::POST, "/reload", _) => match state.reloader.reload().await {
            Ok(report) => json(StatusCode::OK, &report),
            Err(message) => error(StatusCode::BAD_REQUEST, &message),
        },
        (Method::POST, "/takeover", _) => takeover(state, req).await,
        (Method::GET | Method::PUT, "/log-level", _) => super::log_level::answer(req).await,
        (Method::GET, "/upstreams", _) => json(
            StatusCode::OK,
            &super::upstreams::list(&state.reloader.upstreams()),
        ),
        (Method::GET | Method::PUT, _, _) if path.starts_with(UPSTREAMS_OF) => {
            upstream(state, req, &path[UPSTREAMS_OF.len()..]).await
        }
        (Method::GET, "/oauth2/refresh-tokens", _) => json(
            StatusCode::OK,
            &state.refresh_tokens.by_client(crate::policy::unix_now()),
        ),
        (Method::GET, "/bans", _) => {
            let bans: Vec<Ban> = state.lists.bans().into_iter().map(Ban::from).collect();
            json(StatusCode::OK, &bans)
        }
        (Method::DELETE, _, _) if path.starts_with(BANS_OF) => {
            lift_ban(state, &path[BANS_OF.len()..])
        }
        (Method::DELETE, _, _) if path.starts_with(REFRESH_TOKENS_OF) => {
            revoke_refresh_tokens(state, &path[REFRESH_TOKENS_OF.len()..]).await
        }
        (Method::GET, _, Some(kind)) if rest.is_empty() => {
            json(StatusCode::OK, &state.lists.list(kind))
        }
        (Method::POST, _, Some(kind)) if rest.is_empty() => add(state, kind, req).await,
        (Method::DELETE, _, Some(kind)) if !rest.is_empty() => remove(state, kind, rest),
        (
            _,
            "/status"
            | "/reload"
            | "/takeover"
            | "/oauth2/refresh-tokens"
            | "/upstreams"
            | "/bans"
            | "/log-level",
            _,
        )
        | (_, _, Some(_)) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, &format!("no admin endpoint {path}")),
    }
}

/// `POST /takeover {"socket": PATH}`: hands the listening sockets to the
/// `xgate run --takeover` process listening on PATH; this daemon then
/// drains and exits.
async fn takeover(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Takeover {
        socket: PathBuf,
    }
    let request: Takeover = match read_json(req).await {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match state.reloader.hand_over(&request.socket) {
        Ok(listeners) => json(
            StatusCode::OK,
            &serde_json::json!({ "handed_over": listeners }),
        ),
        Err(message) => error(StatusCode::CONFLICT, &message),
    }
}

/// `GET /upstreams/NAME`, `PUT /upstreams/NAME/targets/TARGET/state`.
const UPSTREAMS_OF: &str = "/upstreams/";

async fn upstream(state: &AdminState, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let upstreams = state.reloader.upstreams();
    let result = if req.method() == Method::GET {
        super::upstreams::one(&upstreams, rest)
    } else {
        match read_json(req).await {
            Ok(request) => super::upstreams::set_state(&upstreams, rest, request),
            Err(message) => Err((
                StatusCode::BAD_REQUEST,
                format!("{message} (expected {{\"state\": \"up\" | \"down\" | \"auto\"}})"),
            )),
        }
    };
    match result {
        Ok(status) => json(StatusCode::OK, &status),
        Err((status, message)) => error(status, &message),
    }
}

/// `DELETE /bans/<address or CIDR>`.
const BANS_OF: &str = "/bans/";

/// Lifts the ban on a CIDR, or the one covering an address.
fn lift_ban(state: &AdminState, raw: &str) -> Response<Body> {
    let net = match parse_cidr(raw) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match state.lists.lift_ban(net) {
        Ok(entry) => json(StatusCode::OK, &Ban::from(entry)),
        Err(e) => list_error(e),
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

/// Rows of the top dropped sources in `GET /status` (`xgate status`).
const TOP_DROPPED_SOURCES: usize = 10;

fn status(state: &AdminState) -> Status {
    let (xdp, xdp_error) = match state.lists.xdp_status() {
        Some(Ok(s)) => (Some(s), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, state.xdp_off_reason.clone()),
    };
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        listeners: state.reloader.listener_addresses(),
        routes: state.reloader.route_count(),
        blocklist_entries: state.lists.list(ListKind::Deny).len(),
        allowlist_entries: state.lists.list(ListKind::Allow).len(),
        bans: state.lists.bans().len(),
        cluster: state.cluster.as_ref().map(|c| c.status()),
        l7_denied_connections: state.metrics.l7_denied_connections(),
        top_dropped_sources: crate::telemetry::dropped_sources::top(
            &state.lists,
            &state.metrics.refused_sources,
            TOP_DROPPED_SOURCES,
        ),
        reloads: state.metrics.reloads(),
        xdp,
        xdp_off_reason: xdp_error,
        metrics_listener: Some(state.metrics_listener.clone()),
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
    match state
        .lists
        .add_reporting(kind, cidr, request.reason, ttl, request.force)
    {
        Ok(mut added) => {
            if let Some(note) = crate::config::ipv4_mapped_note(&request.cidr) {
                added.warnings.insert(0, note);
            }
            json(StatusCode::CREATED, &added)
        }
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
        ListError::NotFound { .. } | ListError::NoBan(_) => StatusCode::NOT_FOUND,
        ListError::Kernel(_) | ListError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if !e.is_client_error() {
        tracing::error!(error = %e, "list change failed");
    }
    error(status, &e.to_string())
}

pub(super) async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, String> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("cannot read request body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))
}

pub(super) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_string(value).expect("serializable"),
    )
}

pub(super) fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response parts")
}
