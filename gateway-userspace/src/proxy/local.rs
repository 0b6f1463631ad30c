//! Requests the gateway answers itself, before routing: the endpoints of
//! the OAuth 2.0 token server (`token_server`). They are found by the
//! normalized path (exact) and the listener; a route with the same path
//! never sees those requests, and no route policy runs on them (the token
//! endpoint authenticates its clients itself).

use std::sync::Arc;

use bytes::Bytes;
use http::{request::Parts, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as HttpBody;

use super::{headers::X_FORWARDED_PROTO, Body, BoxError, RequestContext};
use crate::{
    config::Config,
    policy::{Consumers, Identity},
    telemetry::{Metrics, RouteMetrics},
    token_server::{Endpoint, RefreshTokens, TokenServer},
};

pub(super) struct Local {
    token_server: TokenServer,
    /// Each endpoint's metrics, in [`Endpoint::ALL`] order: the endpoint is
    /// the `route` label.
    metrics: Vec<(Endpoint, Arc<RouteMetrics>)>,
}

impl Local {
    /// What `config` has the gateway answer itself; `None`: nothing.
    pub fn compile(
        config: &Config,
        consumers: Arc<Consumers>,
        refresh_tokens: &Arc<RefreshTokens>,
        metrics: &Metrics,
    ) -> Result<Option<Self>, String> {
        let Some(token_server) = TokenServer::compile(config, consumers, refresh_tokens)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            token_server,
            metrics: Endpoint::ALL
                .iter()
                .map(|e| (*e, Arc::new(metrics.route(e.name()))))
                .collect(),
        }))
    }

    /// The endpoint a request is for, if the gateway answers it itself.
    pub fn find(&self, parts: &Parts, listener: &str) -> Option<Endpoint> {
        self.token_server.endpoint(parts.uri.path(), listener)
    }

    /// Answers the request to `endpoint`, noting in `ctx` what the access
    /// log and metrics show: the endpoint as the route, the client's
    /// consumer, the `error` code of a refusal.
    pub async fn answer<B>(
        &self,
        endpoint: Endpoint,
        parts: Parts,
        body: B,
        peer_trusted: bool,
        ctx: &mut RequestContext,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        ctx.route = self
            .metrics
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|(_, m)| m.clone());
        let secure = is_secure(&parts, ctx.conn.forwarding.scheme(), peer_trusted);
        let answer = self
            .token_server
            .answer(endpoint, &parts, body, secure)
            .await;
        if let Some(client) = answer.client {
            ctx.identity = Some(Identity {
                consumer: Some(client.consumer.clone()),
                credential: Some(client.credential.clone()),
                anonymous: false,
            });
        }
        ctx.rejection = answer.error;
        answer
            .response
            .map(|bytes| Full::new(bytes).map_err(|never| match never {}).boxed())
    }
}

/// Whether the request came over TLS: to this listener, or to a trusted
/// proxy that says so. The last X-Forwarded-Proto value is the one the
/// trusted peer set; earlier ones may be the client's.
fn is_secure(parts: &Parts, scheme: &str, peer_trusted: bool) -> bool {
    if scheme == "https" {
        return true;
    }
    peer_trusted
        && parts
            .headers
            .get_all(X_FORWARDED_PROTO)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(protos: &[&str]) -> Parts {
        let mut request = Request::builder().uri("/oauth2/token");
        for proto in protos {
            request = request.header("x-forwarded-proto", *proto);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn tls_here_or_at_a_trusted_proxy() {
        assert!(is_secure(&parts(&[]), "https", false));
        assert!(!is_secure(&parts(&[]), "http", true));
        assert!(is_secure(&parts(&["https"]), "http", true));
        // Only a trusted peer's word counts, and only its own value.
        assert!(!is_secure(&parts(&["https"]), "http", false));
        assert!(!is_secure(&parts(&["https, http"]), "http", true));
        assert!(!is_secure(&parts(&["https", "http"]), "http", true));
        assert!(is_secure(&parts(&["http, HTTPS"]), "http", true));
    }
}
