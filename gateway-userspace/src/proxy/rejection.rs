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
    #[error("cannot connect to upstream {target}: {source}")]
    UpstreamConnect {
        target: SocketAddr,
        timed_out: bool,
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream {target} sent no response headers within {timeout_ms} ms")]
    UpstreamTimeout {
        target: SocketAddr,
        timeout_ms: u128,
    },
    #[error("upstream {target} failed: {source}")]
    UpstreamFailed {
        target: SocketAddr,
        source: hyper_util::client::legacy::Error,
    },
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::MissingHost => StatusCode::BAD_REQUEST,
            Rejection::UpstreamConnect {
                timed_out: true, ..
            }
            | Rejection::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Rejection::UpstreamConnect { .. } | Rejection::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// What the client is told: a fixed message per kind.
    fn public_message(&self) -> &'static str {
        match self {
            Rejection::NoRoute => "no route matched",
            Rejection::MissingHost => "missing Host header",
            Rejection::UpstreamConnect {
                timed_out: true, ..
            }
            | Rejection::UpstreamTimeout { .. } => "upstream timed out",
            Rejection::UpstreamConnect { .. } => "upstream unavailable",
            Rejection::UpstreamFailed { .. } => "upstream error",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, detail = ?self.source(), "request failed");
        }
        json_response(status, self.public_message())
    }

    /// Classifies a client error from a request to `target`.
    pub fn from_client_error(target: SocketAddr, error: hyper_util::client::legacy::Error) -> Self {
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
