//! TLS to an upstream's targets: one client configuration per upstream,
//! built from `upstreams.<name>.tls` when the config is compiled (its
//! session cache shared by every connection, so new connections resume
//! sessions), and the handshake on each new connection.

use std::{io, net::SocketAddr, path::Path, sync::Arc};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{
    config::{ConfigError, UpstreamProtocol, UpstreamTls},
    tls::client::{self as tls_client, Verify, ALPN_H2, ALPN_HTTP11, SYSTEM_CA_BUNDLE},
};

pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    /// `tls.server_name`; `None`: each target's IP address.
    server_name: Option<ServerName<'static>>,
}

impl TlsConnector {
    /// The connector of `tls` (under config path `base`), every file read.
    /// ALPN offers what `protocol` speaks. Errors carry their paths, all of
    /// them at once.
    pub fn new(
        base: &str,
        tls: &UpstreamTls,
        protocol: UpstreamProtocol,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let server_name = tls.server_name.as_deref().and_then(|name| {
            ServerName::try_from(name.to_string())
                .map_err(|_| {
                    errors.push(ConfigError::new(
                        format!("{base}.server_name"),
                        format!("'{name}' is neither a DNS name nor an IP address"),
                    ))
                })
                .ok()
        });
        let verify = match (tls.verify, &tls.ca_file) {
            (false, Some(_)) => {
                errors.push(ConfigError::new(
                    format!("{base}.ca_file"),
                    "only used with `verify: true`",
                ));
                None
            }
            (false, None) => Some(Verify::Nothing),
            (true, Some(path)) => tls_client::load_roots(path)
                .map_err(|e| errors.push(ConfigError::new(format!("{base}.ca_file"), e)))
                .ok()
                .map(Verify::Roots),
            (true, None) => tls_client::load_roots(Path::new(SYSTEM_CA_BUNDLE))
                .map_err(|e| {
                    errors.push(ConfigError::new(
                        format!("{base}.ca_file"),
                        format!("not set, and the system's CA bundle cannot be used: {e}"),
                    ))
                })
                .ok()
                .map(Verify::Roots),
        };
        let identity = match (&tls.client_cert, &tls.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                errors.push(ConfigError::new(
                    format!("{base}.client_key"),
                    "required with `client_cert`",
                ));
                None
            }
            (None, Some(_)) => {
                errors.push(ConfigError::new(
                    format!("{base}.client_cert"),
                    "required with `client_key`",
                ));
                None
            }
            (Some(cert), Some(key)) => tls_client::load_identity(cert, key)
                .map_err(|e| {
                    errors.push(ConfigError::new(
                        format!("{base}.client_{}", e.file),
                        e.message,
                    ))
                })
                .ok(),
        };
        let Some(verify) = verify.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let alpn = match protocol {
            UpstreamProtocol::Http1 => ALPN_HTTP11,
            UpstreamProtocol::Http2 => ALPN_H2,
        };
        let config = tls_client::config(verify, identity, &[alpn]);
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The name `target`'s certificate must be valid for.
    fn server_name(&self, target: SocketAddr) -> ServerName<'static> {
        match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::IpAddress(target.ip().into()),
        }
    }

    /// The TLS handshake on a new connection to `target`. A failure names
    /// the server name and rustls's reason (an unknown issuer, a name the
    /// certificate is not valid for, an expired certificate, ...).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        target: SocketAddr,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = self.server_name(target);
        self.connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("TLS handshake for {}: {error}", name.to_str()),
                )
            })
    }
}
