//! A real HTTP upstream for tests and the quickstart: HTTP/1.1 and HTTP/2
//! (prior knowledge, h2c) on the same port. It answers every request with a
//! JSON description of what it received (method, version, path, headers, body
//! size); `/status/<code>` answers with that status, `/delay/<ms>` waits
//! first, `/bytes/<n>` sends n bytes; an `Upgrade` request (WebSocket style)
//! gets `101 Switching Protocols` and then every byte echoed back.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinHandle};

/// A running echo upstream; aborting the handle (or dropping it via
/// [`EchoUpstream::stop`]) closes the listener.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoUpstream {
    /// Starts on `addr` (port 0 picks a free one) with the given name, which
    /// every response reports in `"upstream"` so tests can see balancing.
    pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let name = name.to_string();
        let task = tokio::spawn(serve(listener, name));
        Ok(Self { addr, task })
    }

    /// Stops accepting and closes the listening socket.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(echo(req, peer, &name).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(mut req: Request<Incoming>, peer: SocketAddr, name: &str) -> Response<Full<Bytes>> {
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
            .body(Full::new(Bytes::new()))
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
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
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
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .expect("valid response");
    }
    let doc = serde_json::json!({
        "upstream": name,
        "method": method,
        "version": version,
        "uri": uri,
        "path": path,
        "peer": peer.to_string(),
        "headers": headers,
        "body_bytes": body.len(),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(doc.to_string())))
        .expect("valid response")
}
