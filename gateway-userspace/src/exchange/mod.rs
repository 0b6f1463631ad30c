//! One request exchange as both ends of the proxy see it: the body type,
//! the rejections and the one place that turns them into responses, what
//! is known about the request and its connection, the forwarding headers,
//! and the connection's timer. The server side (`proxy`) and the client
//! side (`upstream`) both build on this module; neither imports the other's
//! internals for it.
//!
//! - `rejection`: every way a request can fail, mapped to a response
//! - `context`: the request's context and its connection's
//! - `headers`: hop-by-hop rules, the client's address, forwarding headers
//! - `client_cert`: the client certificate a TLS handshake verified
//! - `conn_timer`: a connection's cheap deadlines

pub mod client_cert;
pub mod conn_timer;
mod context;
pub mod headers;
mod rejection;
#[cfg(test)]
pub(crate) mod test_body;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub use self::{
    client_cert::ClientCertificate,
    conn_timer::{within, ConnTimer},
    context::{ConnInfo, RequestContext},
    headers::{proxy_owned, ForwardFields, Forwarding},
    rejection::{json_response, Rejection},
};

/// Errors a body may end with (hyper's, a limit's, a timeout's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type in both directions: bodies stream through; errors are small.
pub type Body = BoxBody<Bytes, BoxError>;
