//! Listeners: accept, apply the connection guard, serve HTTP/1.1, drain on
//! shutdown.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::watch};

use super::{handle, ConnInfo, RuntimeHandle};
use crate::{lists::SourceLists, telemetry::Metrics};

/// A client must finish sending request headers within this time, or the
/// connection is closed (slow-loris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one listener until `shutdown` flips, then lets open connections
/// finish for up to `drain`.
pub async fn serve(
    name: String,
    listener: TcpListener,
    runtime: Arc<RuntimeHandle>,
    lists: Arc<SourceLists>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
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
            tracing::debug!(client.ip = %peer.ip(), %rule, "connection refused by blocklist");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let open = metrics.connection_opened(&name);
        let conn_info = ConnInfo {
            peer,
            client: peer,
            scheme: "http",
        };
        let runtime = runtime.clone();
        let service = service_fn(move |req| {
            let runtime = runtime.load();
            async move { Ok::<_, Infallible>(handle(runtime, req, conn_info).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _open = open;
            if let Err(error) = connection.await {
                tracing::debug!(client.ip = %peer.ip(), %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
}
