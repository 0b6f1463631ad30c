//! What is known about one request as it moves through the proxy: filled in
//! by each step, read by the access log.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::ConnInfo;

#[derive(Debug)]
pub struct RequestContext {
    pub conn: ConnInfo,
    /// The client's address: the connection's, or taken from
    /// X-Forwarded-For when the connection is from a trusted proxy.
    pub client_ip: IpAddr,
    /// From a trusted proxy's X-Request-Id, else generated.
    pub request_id: String,
    pub started: Instant,
    /// Name of the matched route.
    pub route: Option<String>,
    /// The upstream target the (last) attempt went to.
    pub upstream_target: Option<SocketAddr>,
    /// Time the upstream took to send response headers (last attempt).
    pub upstream_duration: Option<Duration>,
    /// What each policy decided, in order (`"blocklist:deny"`, ...).
    pub verdicts: Vec<&'static str>,
    /// Why the request was refused, when it was.
    pub rejection: Option<&'static str>,
}

impl RequestContext {
    pub fn new(conn: ConnInfo) -> Self {
        Self {
            conn,
            client_ip: conn.client.ip(),
            request_id: String::new(),
            started: Instant::now(),
            route: None,
            upstream_target: None,
            upstream_duration: None,
            verdicts: Vec::new(),
            rejection: None,
        }
    }
}
