//! The CLI's side of the admin API: one HTTP/1.1 request over the Unix socket.

use std::path::Path;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Sends `method path` with an optional JSON body; returns status and JSON.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return anyhow!(
                "permission denied on the admin socket {}: it is for root and the members of \
                 the admin group (admin.group, by default xgate); run as root or join that group",
                socket.display()
            );
        }
        anyhow!(
            "cannot reach the xgate daemon at {}: {e}\n\
             Is `xgate run` running, and is this its admin.socket? (set it with --admin-socket or --config)",
            socket.display()
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin API handshake failed")?;
    tokio::spawn(connection);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "xgate-admin")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))?;
    let response = sender
        .send_request(request)
        .await
        .context("admin API request failed")?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })
    };
    Ok((status, value))
}

/// Like [`call`], but turns an error status into an error with the server's
/// message.
pub async fn call_ok(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let (status, value) = call(socket, method, path, body).await?;
    if status.is_success() {
        Ok(value)
    } else {
        let message = value
            .get("error")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        Err(anyhow!("{message}"))
    }
}

/// Fetches `/metrics` (plain text).
pub async fn metrics(socket: &Path) -> anyhow::Result<String> {
    let (status, value) = call(socket, Method::GET, "/metrics", None).await?;
    match (status.is_success(), value) {
        (true, serde_json::Value::String(text)) => Ok(text),
        (_, other) => Err(anyhow!("unexpected /metrics answer ({status}): {other}")),
    }
}
