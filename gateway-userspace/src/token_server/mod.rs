//! The gateway as an OAuth 2.0 authorization server: a token endpoint
//! (RFC 6749: `client_credentials` and `refresh_token` grants) for the
//! clients of `consumers[].oauth2_clients`, a revocation endpoint (RFC
//! 7009), and the JWK set of the key that signs the access tokens, so that
//! xgate's own jwt policy and any upstream can verify them.
//!
//! - `form`: the request's parameters and client credentials
//! - `grants`: what a request gets, apart from HTTP
//! - `refresh`: refresh tokens, single use, kept in `state_dir`
//! - `signing`: the signing key and its JWKS
//!
//! The proxy asks [`TokenServer::endpoint`] before routing and hands the
//! request to [`TokenServer::answer`] (`proxy/local.rs`).

pub(crate) mod form;
mod grants;
mod refresh;
mod signing;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as HttpBody;

use self::{form::Form, grants::Grants};
pub use self::{
    refresh::{ClientTokens, RefreshTokens},
    signing::SigningKey,
};
use crate::{
    config::Config,
    policy::{consumers::OAuth2Client, Consumers},
};

/// A token request is a few hundred bytes; this leaves room for long scope
/// lists, and an attacker's megabyte costs nothing.
const MAX_FORM_BYTES: usize = 8 * 1024;
/// A form of a few hundred bytes comes in one packet; a client that
/// trickles it would hold its task as long as it liked.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Verifiers may keep the key set this long; the key changes only when the
/// config names another one.
const JWKS_CACHE_CONTROL: &str = "public, max-age=300";

/// Every way a request to an endpoint fails (RFC 6749 §5.2, RFC 7009
/// §2.2.1), and the one place that turns each into a response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// 401 with a Basic challenge, however the client authenticated.
    #[error("invalid_client: {0}")]
    InvalidClient(&'static str),
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("invalid_scope: {0}")]
    InvalidScope(&'static str),
    #[error("unsupported_token_type")]
    UnsupportedTokenType,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("request body too large")]
    BodyTooLarge,
    /// Detail is logged where it happens, never sent.
    #[error("server_error")]
    ServerError,
}

impl OAuthError {
    /// Status, `error` and `error_description`.
    fn describe(&self) -> (StatusCode, &'static str, &'static str) {
        use OAuthError::*;
        let bad = StatusCode::BAD_REQUEST;
        match self {
            InvalidRequest(d) => (bad, "invalid_request", d),
            InvalidClient(d) => (StatusCode::UNAUTHORIZED, "invalid_client", d),
            InvalidGrant(d) => (bad, "invalid_grant", d),
            UnauthorizedClient(d) => (bad, "unauthorized_client", d),
            UnsupportedGrantType => (
                bad,
                "unsupported_grant_type",
                "supported: client_credentials, refresh_token",
            ),
            InvalidScope(d) => (bad, "invalid_scope", d),
            UnsupportedTokenType => (
                bad,
                "unsupported_token_type",
                "access tokens cannot be revoked; they expire",
            ),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "method not allowed",
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body too large",
            ),
            ServerError => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the request could not be completed",
            ),
        }
    }

    /// The `error` code, for the access log.
    pub fn code(&self) -> &'static str {
        self.describe().1
    }

    pub fn into_response(self) -> Response<Bytes> {
        let (status, error, description) = self.describe();
        let body = serde_json::json!({"error": error, "error_description": description});
        let mut response = json(status, body.to_string());
        let headers = response.headers_mut();
        match self {
            OAuthError::InvalidClient(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"xgate\""),
                );
            }
            OAuthError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}

/// A JSON response that no cache keeps (RFC 6749 §5.1).
fn json(status: StatusCode, body: String) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::PRAGMA, "no-cache")
        .body(Bytes::from(body))
        .expect("static response parts are valid")
}

/// The endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Revoke,
    Jwks,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Token, Endpoint::Revoke, Endpoint::Jwks];

    /// Its `route` in metrics and the access log.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Token => "oauth2_server:token",
            Endpoint::Revoke => "oauth2_server:revoke",
            Endpoint::Jwks => "oauth2_server:jwks",
        }
    }
}

/// What an endpoint answered, and about whom.
pub struct Answer {
    pub response: Response<Bytes>,
    /// The client that authenticated, when one did.
    pub client: Option<Arc<OAuth2Client>>,
    /// The `error` code of a refusal.
    pub error: Option<&'static str>,
}

impl From<OAuthError> for Answer {
    fn from(error: OAuthError) -> Self {
        Self {
            error: Some(error.code()),
            response: error.into_response(),
            client: None,
        }
    }
}

pub struct TokenServer {
    grants: Grants,
    consumers: Arc<Consumers>,
    refresh: Arc<RefreshTokens>,
    require_https: bool,
    paths: [(String, Endpoint); 3],
    /// Listener names that serve the endpoints; `None`: all.
    listeners: Option<Vec<String>>,
    jwks: Bytes,
}

impl TokenServer {
    /// The server of `config.oauth2_server`, if it has one. Reads the
    /// signing key, or makes one in `state_dir` the first time.
    pub fn compile(
        config: &Config,
        consumers: Arc<Consumers>,
        refresh: &Arc<RefreshTokens>,
    ) -> Result<Option<Self>, String> {
        let Some(server) = &config.oauth2_server else {
            return Ok(None);
        };
        let signing = match &server.signing_key_file {
            Some(file) => SigningKey::from_file(file),
            None => SigningKey::generated(&config.state_dir),
        }
        .map_err(|e| format!("oauth2_server signing key: {e}"))?;
        let jwks = Bytes::from(signing.jwks().to_string());
        tracing::debug!(
            kid = signing.kid(),
            alg = signing.algorithm(),
            "OAuth 2.0 token server"
        );
        Ok(Some(Self {
            grants: Grants::new(server, signing, refresh.clone()),
            consumers,
            refresh: refresh.clone(),
            require_https: server.require_https,
            paths: [
                (server.token_path.clone(), Endpoint::Token),
                (server.revoke_path.clone(), Endpoint::Revoke),
                (server.jwks_path.clone(), Endpoint::Jwks),
            ],
            listeners: server.listeners.clone(),
            jwks,
        }))
    }

    /// The endpoint a request to `path` on `listener` is for, if any.
    pub fn endpoint(&self, path: &str, listener: &str) -> Option<Endpoint> {
        let (_, endpoint) = self.paths.iter().find(|(p, _)| p == path)?;
        self.listeners
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == listener))
            .then_some(*endpoint)
    }

    /// Answers a request to `endpoint`. `secure`: it came over TLS (here,
    /// or to a trusted proxy that says so).
    pub async fn answer<B>(
        &self,
        endpoint: Endpoint,
        parts: &Parts,
        body: B,
        secure: bool,
    ) -> Answer
    where
        B: HttpBody<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if endpoint == Endpoint::Jwks {
            return self.jwks(parts);
        }
        if parts.method != Method::POST {
            return OAuthError::MethodNotAllowed { allow: "POST" }.into();
        }
        if self.require_https && !secure {
            // The secret has crossed the network in the clear already;
            // at least it is not honoured.
            return OAuthError::InvalidRequest("this endpoint is served over HTTPS only").into();
        }
        let form = match read_form(parts, body).await {
            Ok(form) => form,
            Err(error) => return error.into(),
        };
        let client = match form::credentials(&parts.headers, &form)
            .and_then(|credentials| Grants::authenticate(&self.consumers, &credentials))
        {
            Ok(client) => client.clone(),
            Err(error) => return error.into(),
        };
        let now = crate::policy::unix_now();
        let result = match endpoint {
            Endpoint::Token => self.grants.token(&client, &form, now).map(|issued| {
                tracing::debug!(client_id = %client.client_id, scope = %issued.scope, "token issued");
                json(
                    StatusCode::OK,
                    serde_json::to_string(&issued).expect("serializable"),
                )
            }),
            Endpoint::Revoke => self
                .grants
                .revoke(&client, &form)
                .map(|()| json(StatusCode::OK, String::new())),
            Endpoint::Jwks => unreachable!("answered above"),
        };
        // Whatever the outcome (a replay revokes a family too), the change
        // is on disk before the client hears of it.
        let result = match (self.refresh.persist().await, result) {
            (Ok(()), result) => result,
            (Err(error), Ok(_)) => {
                tracing::error!(%error, "refresh tokens not saved: the request fails");
                Err(OAuthError::ServerError)
            }
            (Err(error), Err(refusal)) => {
                tracing::error!(%error, "refresh tokens not saved");
                Err(refusal)
            }
        };
        match result {
            Ok(response) => Answer {
                response,
                client: Some(client),
                error: None,
            },
            Err(error) => Answer {
                client: Some(client),
                ..error.into()
            },
        }
    }

    fn jwks(&self, parts: &Parts) -> Answer {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return OAuthError::MethodNotAllowed { allow: "GET, HEAD" }.into();
        }
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, JWKS_CACHE_CONTROL)
            .body(self.jwks.clone())
            .expect("static response parts are valid");
        Answer {
            response,
            client: None,
            error: None,
        }
    }
}

/// The request's form, bounded in size and time.
async fn read_form<B>(parts: &Parts, body: B) -> Result<Form, OAuthError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let form_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_FORM_BYTES as u64) {
        return Err(OAuthError::BodyTooLarge);
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_FORM_BYTES).collect(),
    )
    .await
    .map_err(|_| OAuthError::InvalidRequest("the body did not arrive in time"))?;
    let body = collected
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                OAuthError::BodyTooLarge
            } else {
                OAuthError::InvalidRequest("the body could not be read")
            }
        })?
        .to_bytes();
    Form::parse(&body)
}
