//! What is known about one request as it moves through the proxy: filled in
//! by each step, read by the access log.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use super::ConnInfo;

#[derive(Debug)]
pub struct RequestContext {
    pub conn: ConnInfo,
    /// The client's address: the peer's, or taken from X-Forwarded-For when
    /// the peer is a trusted proxy.
    pub client_ip: IpAddr,
    pub started: Instant,
    /// Name of the matched route.
    pub route: Option<String>,
    /// The upstream target the (last) attempt went to.
    pub upstream_target: Option<SocketAddr>,
}

impl RequestContext {
    pub fn new(conn: ConnInfo) -> Self {
        Self {
            conn,
            client_ip: conn.client.ip(),
            started: Instant::now(),
            route: None,
            upstream_target: None,
        }
    }
}
