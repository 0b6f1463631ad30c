//! A real HTTP/1.1 upstream for tests and the quickstart: it answers every
//! request with a JSON description of what it received (method, path,
//! headers, body size), and `/status/<code>` with that status.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
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
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>, peer: SocketAddr, name: &str) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
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
    let doc = serde_json::json!({
        "upstream": name,
        "method": method,
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
