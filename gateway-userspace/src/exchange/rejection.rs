//! Every way a request can fail before or at the upstream, and the one place
//! that turns each into an HTTP response. Internal detail goes to the log,
//! never to the client.

use std::{error::Error as _, net::SocketAddr};

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;

#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("no route matched")]
    NoRoute,
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("ambiguous or malformed request: {0}")]
    BadRequest(&'static str),
    /// An authentication policy refused the request: 401 with its
    /// challenge, or 403 when the caller lacks a scope.
    #[error("authentication failed: {description}")]
    Unauthenticated {
        status: StatusCode,
        challenge: http::HeaderValue,
        description: &'static str,
    },
    /// A policy other than authentication refused the request (acl, opa,
    /// ip-restriction, rate limits, ...): its own status, message and
    /// headers (`Retry-After`, ...).
    #[error("refused by a policy: {message}")]
    Denied {
        status: StatusCode,
        /// Short machine-readable kind for logs and metrics
        /// (`acl_denied`, `rate_limited`).
        reason: &'static str,
        /// What the client is told.
        message: std::borrow::Cow<'static, str>,
        headers: Option<Box<http::HeaderMap>>,
    },
    #[error("CONNECT, and no route allows it")]
    MethodNotAllowed,
    #[error("request target longer than the limit")]
    UriTooLong,
    #[error("request body larger than the limit")]
    PayloadTooLarge,
    /// The request body failed on the client's side (malformed chunk, cut
    /// off, reset) while it went to a target: the client's fault, never
    /// the target's.
    #[error("request body failed on the client's side: {0}")]
    RequestBody(#[source] super::BoxError),
    #[error("client {0} is on the blocklist")]
    Blocked(std::net::IpAddr),
    #[error("cannot connect to upstream {target}: {source}")]
    UpstreamConnect {
        target: SocketAddr,
        timed_out: bool,
        source: crate::upstream::SendError,
    },
    #[error("upstream {target} sent no response headers within {timeout_ms} ms")]
    UpstreamTimeout {
        target: SocketAddr,
        timeout_ms: u128,
    },
    /// The upstream has no target to send to: its DNS names resolve to
    /// nothing (yet).
    #[error("upstream {upstream} has no targets (its DNS names do not resolve)")]
    NoTargets { upstream: String },
    /// A circuit breaker limit of the upstream is reached: shed at once.
    #[error("upstream {upstream} is at its {limit} ({max}); request shed")]
    UpstreamOverloaded {
        upstream: String,
        limit: &'static str,
        max: usize,
    },
    /// Every target of the upstream is forced down by the operator.
    #[error("every target of upstream {upstream} is forced down")]
    AllTargetsDown { upstream: String },
    #[error("upstream {target} failed: {source}")]
    UpstreamFailed {
        target: SocketAddr,
        source: crate::upstream::SendError,
    },
}

impl Rejection {
    /// Status, the fixed message the client gets, and a short kind for logs
    /// and metrics: the one table that maps rejections to responses.
    fn describe(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Rejection::NoRoute => (StatusCode::NOT_FOUND, "no route matched", "no_route"),
            Rejection::MissingHost => (
                StatusCode::BAD_REQUEST,
                "missing Host header",
                "missing_host",
            ),
            Rejection::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad request", "bad_request"),
            Rejection::Unauthenticated {
                status,
                description,
                ..
            } => (
                *status,
                description,
                if *status == StatusCode::FORBIDDEN {
                    "forbidden"
                } else {
                    "unauthenticated"
                },
            ),
            Rejection::Denied { status, reason, .. } => (*status, "denied", reason),
            Rejection::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                "method_not_allowed",
            ),
            Rejection::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "request target too long",
                "uri_too_long",
            ),
            Rejection::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                "payload_too_large",
            ),
            Rejection::RequestBody(_) => (
                StatusCode::BAD_REQUEST,
                "bad request body",
                "bad_request_body",
            ),
            Rejection::Blocked(_) => (StatusCode::FORBIDDEN, "forbidden", "blocked"),
            Rejection::UpstreamConnect {
                timed_out: true, ..
            }
            | Rejection::UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timed out",
                "upstream_timeout",
            ),
            Rejection::UpstreamConnect { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream unavailable",
                "upstream_unavailable",
            ),
            Rejection::UpstreamFailed { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream error", "upstream_error")
            }
            Rejection::NoTargets { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no upstream available",
                "no_targets",
            ),
            Rejection::UpstreamOverloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream overloaded",
                "upstream_overloaded",
            ),
            Rejection::AllTargetsDown { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no upstream available",
                "upstream_down",
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.describe().0
    }

    fn public_message(&self) -> &'static str {
        self.describe().1
    }

    /// Short machine-readable kind (`no_route`, `upstream_timeout`, ...).
    pub fn kind(&self) -> &'static str {
        self.describe().2
    }

    /// Whether `T` is somewhere in this rejection's cause chain.
    pub fn caused_by<T: std::error::Error + 'static>(&self) -> bool {
        let mut current = self.source();
        while let Some(e) = current {
            if e.is::<T>() {
                return true;
            }
            current = e.source();
        }
        false
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let public_message = self.public_message();
        match self {
            Rejection::Unauthenticated { challenge, .. } => {
                let mut response = json_response(status, public_message);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge);
                response
            }
            Rejection::Denied {
                message, headers, ..
            } => {
                let mut response = json_response(status, &message);
                if let Some(headers) = headers {
                    response.headers_mut().extend(*headers);
                }
                response
            }
            _ => json_response(status, public_message),
        }
    }

    /// Classifies a client error from a request to `target`.
    pub fn from_client_error(target: SocketAddr, error: crate::upstream::SendError) -> Self {
        if error.is_connect() {
            let timed_out = chain_has_timeout(&error);
            Rejection::UpstreamConnect {
                target,
                timed_out,
                source: error,
            }
        } else {
            Rejection::UpstreamFailed {
                target,
                source: error,
            }
        }
    }
}

fn chain_has_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// `{"message": "..."}` with the given status, as Kong answers.
pub fn json_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response parts are valid")
}
