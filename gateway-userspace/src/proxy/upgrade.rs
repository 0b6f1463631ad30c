//! HTTP/1.1 protocol upgrades (WebSocket, or any other `Upgrade:`) passed
//! through: the request keeps its Upgrade/Connection headers on the way up,
//! the upstream's 101 is relayed, and then the two upgraded connections are
//! joined, bytes copied both ways until either side closes.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{
    header::{CONNECTION, UPGRADE},
    request, HeaderMap, HeaderValue, Response, StatusCode,
};
use tokio::{io::AsyncWriteExt, sync::oneshot};

use super::{
    conn_io::{Prefixed, Stream},
    drain::ConnectionScope,
    http1::ClientUpgrade,
    RequestContext,
};
use crate::upstream::Upgraded;

/// A client's request to switch protocols, taken off the request before
/// the hop-by-hop headers are stripped.
pub(super) struct UpgradeRequest {
    protocol: HeaderValue,
    downstream: Downstream,
    scope: Option<ConnectionScope>,
}

/// The client's side of the tunnel, once the server has written the 101.
type Downstream = oneshot::Receiver<(Prefixed<Stream>, Bytes)>;

impl UpgradeRequest {
    /// `Some` when the request asks to upgrade: the HTTP/1.1 server saw
    /// `Connection: upgrade` and an `Upgrade` header (it then leaves a
    /// [`ClientUpgrade`] in the extensions). HTTP/2 requests
    /// never qualify (RFC 9113 §8.2.2 forbids Upgrade there), and neither
    /// does `Upgrade: h2c`: an upstream that accepted it would speak HTTP/2
    /// with the client through the tunnel, every later request bypassing
    /// routing and policies ("h2c smuggling"). Such a request is forwarded
    /// as a plain one, its Upgrade header stripped.
    pub(super) fn take(parts: &mut request::Parts) -> Option<Self> {
        let protocol = parts.headers.get(UPGRADE)?.clone();
        if asks_for_h2c(&protocol) {
            return None;
        }
        let downstream = parts
            .extensions
            .remove::<ClientUpgrade<Prefixed<Stream>>>()?
            .take()?;
        Some(Self {
            protocol,
            downstream,
            scope: parts.extensions.remove::<ConnectionScope>(),
        })
    }

    /// Puts back on the upstream request what hop-by-hop stripping removed.
    pub(super) fn restore_request_headers(&self, headers: &mut HeaderMap) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, self.protocol.clone());
    }

    /// When the upstream agreed (101), starts the tunnel between the two
    /// connections (it runs once the server has sent the 101 to the client) and
    /// returns what the client's 101 needs back after stripping. Any other
    /// status is relayed as a normal response and the upgrade dropped.
    pub(super) fn relay<B>(
        self,
        response: &mut Response<B>,
        ctx: &RequestContext,
    ) -> Option<Switched> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return None;
        }
        let protocol = response
            .headers()
            .get(UPGRADE)
            .cloned()
            .unwrap_or_else(|| self.protocol.clone());
        let Some(upstream) = response.extensions_mut().remove::<Upgraded>() else {
            tracing::warn!(
                upstream.target = %ctx.upstream_target.map_or_else(|| "-".to_string(), |t| t.to_string()),
                "101 from a client that cannot switch protocols"
            );
            return None;
        };
        tokio::spawn(tunnel(
            self.downstream,
            upstream,
            self.scope,
            ctx.client_ip,
            ctx.upstream_target,
        ));
        Some(Switched { protocol })
    }
}

fn asks_for_h2c(protocols: &HeaderValue) -> bool {
    protocols
        .to_str()
        .map(|list| {
            list.split(',').any(|p| {
                p.trim()
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .eq_ignore_ascii_case("h2c")
            })
        })
        .unwrap_or(true)
}

/// The upstream switched protocols; the client must be told which.
pub(super) struct Switched {
    protocol: HeaderValue,
}

impl Switched {
    pub(super) fn restore_response_headers(&self, headers: &mut HeaderMap) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, self.protocol.clone());
    }
}

/// Joins the client and upstream connections. The connection scope keeps
/// the listener's drain waiting for the tunnel and cuts it at the drain
/// deadline.
async fn tunnel(
    downstream: Downstream,
    upstream: Upgraded,
    scope: Option<ConnectionScope>,
    client: IpAddr,
    target: Option<SocketAddr>,
) {
    let target = target.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
    let Some((mut up, early)) = upstream.take() else {
        return;
    };
    let mut down = match downstream.await {
        // What the client sent right behind its request is replayed first.
        Ok((stream, early)) => Prefixed::new(stream, early),
        Err(_) => {
            tracing::debug!(client.ip = %client, upstream.target = %target, "upgrade did not complete: the client connection ended first");
            return;
        }
    };
    // What the target sent right behind its 101 came in with the response.
    if !early.is_empty() {
        if let Err(error) = down.write_all(&early).await {
            tracing::debug!(client.ip = %client, upstream.target = %target, %error, "upgrade did not complete");
            return;
        }
    }
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    let result = match scope {
        Some(mut scope) => tokio::select! {
            result = copy => result,
            () = scope.closed() => {
                tracing::debug!(client.ip = %client, upstream.target = %target, "tunnel cut at the drain deadline");
                return;
            }
        },
        None => copy.await,
    };
    match result {
        Ok((to_upstream, to_client)) => tracing::debug!(
            client.ip = %client, upstream.target = %target, to_upstream, to_client, "tunnel closed"
        ),
        Err(error) => tracing::debug!(
            client.ip = %client, upstream.target = %target, %error, "tunnel ended with an error"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2c_is_never_tunnelled() {
        for value in ["h2c", "H2C", "websocket, h2c", "h2c/1"] {
            assert!(asks_for_h2c(&HeaderValue::from_static(value)), "{value}");
        }
        for value in ["websocket", "WebSocket", "TLS/1.2"] {
            assert!(!asks_for_h2c(&HeaderValue::from_static(value)), "{value}");
        }
    }
}
