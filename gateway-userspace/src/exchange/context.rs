//! What is known about one request as it moves through the proxy (filled in
//! by each step, read by the access log), and about its connection.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use http::HeaderValue;

use super::{ClientCertificate, ConnTimer, Forwarding};
use crate::telemetry::RouteMetrics;

#[derive(Debug)]
pub struct RequestContext {
    pub conn: Arc<ConnInfo>,
    /// The client's address: the connection's, or taken from
    /// X-Forwarded-For when the connection is from a trusted proxy.
    pub client_ip: IpAddr,
    /// From a trusted proxy's X-Request-Id, else generated (empty until
    /// the forwarding path sets it).
    pub request_id: HeaderValue,
    pub started: Instant,
    /// The path routing saw, when normalizing changed what the client sent.
    pub normalized_path: Option<String>,
    /// The matched route: its name and metric handles.
    pub route: Option<Arc<RouteMetrics>>,
    /// The upstream target the (last) attempt went to.
    pub upstream_target: Option<SocketAddr>,
    /// Time the upstream took to send response headers (last attempt).
    pub upstream_duration: Option<Duration>,
    /// The status the (last) upstream attempt answered with.
    pub upstream_status: Option<u16>,
    /// Attempts after the first.
    pub retries: u32,
    /// Who the request is from, when an authentication policy found out.
    pub identity: Option<crate::policy::Identity>,
    /// What each policy decided, in order (`"blocklist:deny"`, ...).
    pub verdicts: Vec<&'static str>,
    /// Why the request was refused, when it was.
    pub rejection: Option<&'static str>,
    /// Headers the policies add to the response, whether it comes from the
    /// upstream or is a refusal (`RateLimit-*`, ...).
    pub response_headers: http::HeaderMap,
}

impl RequestContext {
    pub fn new(conn: Arc<ConnInfo>) -> Self {
        Self {
            client_ip: conn.client.ip(),
            conn,
            request_id: HeaderValue::from_static(""),
            started: Instant::now(),
            normalized_path: None,
            route: None,
            upstream_target: None,
            upstream_duration: None,
            upstream_status: None,
            retries: 0,
            identity: None,
            verdicts: Vec::new(),
            rejection: None,
            response_headers: http::HeaderMap::new(),
        }
    }

    /// The request id as text (empty before it is set).
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    /// The consumer the request was authenticated as.
    pub fn consumer(&self) -> Option<&crate::policy::Consumer> {
        self.identity.as_ref()?.consumer.as_deref()
    }

    /// The matched route's name, `-` when none matched.
    pub fn route_name(&self) -> &str {
        self.route.as_deref().map_or("-", RouteMetrics::name)
    }
}

/// The client side of one connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client as the connection itself says: the PROXY protocol header's
    /// source when a trusted peer sent one, else `peer`.
    pub client: SocketAddr,
    /// The forwarding headers' values for `client` and the scheme (`http`
    /// or `https`), made once.
    pub forwarding: Forwarding,
    /// HTTP/1: the connection's timer (see `conn_timer`); HTTP/2 streams
    /// use tokio's.
    pub timer: Option<ConnTimer>,
    /// The listener's name: which `policy_defaults` apply.
    pub listener: Arc<str>,
    /// The certificate the client presented and the handshake verified
    /// (listeners with `tls.client_auth`).
    pub client_cert: Option<Arc<ClientCertificate>>,
    /// The TLS version the handshake agreed (`TLSv1.3`); none on plain
    /// connections.
    pub tls_version: Option<&'static str>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        client: SocketAddr,
        scheme: &'static str,
        timer: Option<ConnTimer>,
    ) -> Self {
        Self {
            peer,
            client,
            forwarding: Forwarding::new(client.ip(), scheme),
            timer,
            listener: Arc::from(""),
            client_cert: None,
            tls_version: None,
        }
    }

    /// Notes the listener the connection came in on.
    pub fn on_listener(mut self, listener: Arc<str>) -> Self {
        self.listener = listener;
        self
    }

    /// Notes the TLS version the handshake agreed.
    pub fn with_tls_version(mut self, tls_version: Option<&'static str>) -> Self {
        self.tls_version = tls_version;
        self
    }

    /// Notes the client certificate the handshake verified.
    pub fn with_client_cert(mut self, client_cert: Option<Arc<ClientCertificate>>) -> Self {
        self.client_cert = client_cert;
        self
    }
}
