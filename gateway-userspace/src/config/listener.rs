//! `listeners[]`: where client traffic is accepted and how: TLS with SNI,
//! HTTP/2, the PROXY protocol, and the limits enforced on each connection
//! before a request reaches the router.

use std::{collections::HashMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Errors;

/// Largest request head (request line and headers) accepted; larger gets
/// 431. 64 KiB is above what browsers send with big cookies (Chrome caps a
/// cookie header near 8 KiB; nginx's default allows 4 x 8 KiB) while keeping
/// a client from making us buffer much per connection.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper will not run with a read buffer below 8 KiB.
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Every open connection may hold this much; beyond 1 MiB a header section
/// is an attack or a bug.
pub const MAX_MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Most headers per request (431 beyond). hyper's own default; real clients
/// send 10 to 30.
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const MAX_MAX_HEADERS: usize = 10_000;
/// Time a client has to send a complete request head (408 and close when it
/// has started one, plain close when it has sent nothing). Slow-loris
/// protection; also how long an idle keep-alive connection stays open.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the PROXY protocol header and the TLS handshake together. A
/// handshake is a few round trips; 10 s covers a slow mobile link without
/// letting a silent peer hold a connection.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to accept any more of a response (the time
/// between two writes that move bytes, not the whole response). nginx's
/// `send_timeout` default: a client on a bad mobile link stalls for
/// seconds, not a minute, while one that stopped reading would otherwise
/// hold its connection, an upstream connection and their buffers forever.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Streams an HTTP/2 client may have open at once on one connection
/// (SETTINGS_MAX_CONCURRENT_STREAMS; a stream beyond it is refused with
/// RST_STREAM REFUSED_STREAM). nginx's `http2_max_concurrent_streams`
/// default: browsers open 100 at most, and each open stream may hold an
/// upstream connection and its buffers.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// RFC 9113 asks that the limit be no lower than 100 for parallelism; below
/// 1 nothing could be served, and a million is no limit at all.
pub const MAX_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 10_000;

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Optional label used in logs and metrics.
    #[serde(default)]
    pub name: Option<String>,
    /// `IP:port` to bind, e.g. `0.0.0.0:8080` or `[::]:8080`.
    pub address: SocketAddr,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Offer HTTP/2: over TLS through ALPN, in plain text as h2c with prior
    /// knowledge. `false`: HTTP/1.1 only.
    #[serde(default = "default_http2")]
    pub http2: bool,
    /// Most HTTP/2 streams open at once on one connection (advertised as
    /// SETTINGS_MAX_CONCURRENT_STREAMS; more are refused).
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Expect a PROXY protocol (v1 or v2) header first on every connection,
    /// believed only from `trusted_proxies`.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Largest request head in bytes (431 beyond).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields per request (431 beyond).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time to send a complete request head (408 beyond).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(
        default = "default_header_read_timeout",
        with = "crate::duration::serde"
    )]
    pub header_read_timeout: Duration,
    /// Time for the PROXY header and the TLS handshake (closed beyond).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_handshake_timeout", with = "crate::duration::serde")]
    pub handshake_timeout: Duration,
    /// Policies of the routes that declare none, for requests on this
    /// listener (before the global `policy_defaults`).
    #[serde(default)]
    pub policy_defaults: Option<super::PolicyDefaults>,
    /// Longest wait for the client to take more of a response (closed
    /// beyond).
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_send_timeout", with = "crate::duration::serde")]
    pub send_timeout: Duration,
}

/// `listeners[].tls`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificates offered; chosen by SNI, the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// Oldest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Ask clients for a certificate (mutual TLS); absent: never asked.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

/// `listeners[].tls.client_auth`: which client certificates the handshake
/// accepts. The files are re-read on reload, like the certificates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// PEM certificates of the CAs that issue client certificates (trust
    /// anchors; intermediates come from the client).
    pub ca_file: PathBuf,
    /// Certificate revocation lists, PEM or DER. With any given, every
    /// certificate of a client's chain below the CA must be covered by its
    /// issuer's list.
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
}

/// Whether a client must present a certificate.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// A handshake without a valid client certificate fails. The default:
    /// whoever writes `client_auth` wants certificates, and a missing one
    /// should fail closed.
    #[default]
    Required,
    /// A client may present none (policies decide); one it presents must
    /// be valid, or the handshake fails.
    Optional,
}

/// One certificate chain and its private key, both PEM. Re-read on reload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The leaf certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
    pub key: PathBuf,
}

/// `"1.2"` or `"1.3"`; older versions are never offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

impl TlsVersion {
    /// Whether TLS 1.2 is accepted (1.3 always is).
    pub fn includes_tls12(self) -> bool {
        self == TlsVersion::V1_2
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Accepts `"1.2"` and also an unquoted `1.2`, which YAML reads as a number.
impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"1.2\" or \"1.3\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsVersion, E> {
                match v.trim() {
                    "1.2" => Ok(TlsVersion::V1_2),
                    "1.3" => Ok(TlsVersion::V1_3),
                    other => Err(E::custom(format!(
                        "unsupported TLS version '{other}'; use \"1.2\" or \"1.3\""
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn default_http2() -> bool {
    true
}
fn default_http2_max_concurrent_streams() -> u32 {
    DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS
}
fn default_max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_max_headers() -> usize {
    DEFAULT_MAX_HEADERS
}
fn default_header_read_timeout() -> Duration {
    DEFAULT_HEADER_READ_TIMEOUT
}
fn default_handshake_timeout() -> Duration {
    DEFAULT_HANDSHAKE_TIMEOUT
}
fn default_send_timeout() -> Duration {
    DEFAULT_SEND_TIMEOUT
}

pub(super) fn validate(listeners: &[Listener], errors: &mut Errors) {
    if listeners.is_empty() {
        errors.push("listeners", "at least one listener is required");
    }
    let mut names = HashMap::new();
    for (i, listener) in listeners.iter().enumerate() {
        let base = format!("listeners[{i}]");
        if let Some(clash) = super::binds::clash(listeners, i) {
            errors.push(format!("{base}.address"), clash);
        }
        if let Some(name) = &listener.name {
            if let Some(first) = names.insert(name.as_str(), i) {
                errors.push(
                    format!("{base}.name"),
                    format!("'{name}' is already the name of listeners[{first}]"),
                );
            }
        }
        if !(MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES).contains(&listener.max_header_bytes) {
            errors.push(
                format!("{base}.max_header_bytes"),
                format!("must be {MIN_MAX_HEADER_BYTES} to {MAX_MAX_HEADER_BYTES}"),
            );
        }
        if !(1..=MAX_HTTP2_MAX_CONCURRENT_STREAMS).contains(&listener.http2_max_concurrent_streams)
        {
            errors.push(
                format!("{base}.http2_max_concurrent_streams"),
                format!("must be 1 to {MAX_HTTP2_MAX_CONCURRENT_STREAMS}"),
            );
        }
        if !(1..=MAX_MAX_HEADERS).contains(&listener.max_headers) {
            errors.push(
                format!("{base}.max_headers"),
                format!("must be 1 to {MAX_MAX_HEADERS}"),
            );
        }
        for (field, value) in [
            ("header_read_timeout", listener.header_read_timeout),
            ("handshake_timeout", listener.handshake_timeout),
            ("send_timeout", listener.send_timeout),
        ] {
            if value.is_zero() {
                errors.push(format!("{base}.{field}"), "must be greater than zero");
            }
        }
        if let Some(tls) = &listener.tls {
            validate_tls(&format!("{base}.tls"), tls, errors);
        }
    }
}

/// Reads every certificate and key, as a start or a reload would, so that
/// `xgate validate` and a failed reload name the file that is wrong.
fn validate_tls(base: &str, tls: &Tls, errors: &mut Errors) {
    if tls.certificates.is_empty() {
        errors.push(
            format!("{base}.certificates"),
            "at least one certificate is required",
        );
    }
    if let Some(client_auth) = &tls.client_auth {
        if let Err(failures) = crate::tls::client_verifier(client_auth) {
            for error in failures {
                errors.push(format!("{base}.client_auth.{}", error.field), error.message);
            }
        }
    }
    for (j, files) in tls.certificates.iter().enumerate() {
        let path = format!("{base}.certificates[{j}]");
        match crate::tls::load_certificate(&files.cert, &files.key) {
            Err(error) => errors.push(format!("{path}.{}", error.file), error.message),
            Ok(loaded) if j > 0 && loaded.names.is_empty() => errors.push(
                format!("{path}.cert"),
                format!(
                    "{} has no DNS names (subject alternative names), so SNI can never select it; \
                     only the first certificate, the default, may lack them",
                    files.cert.display()
                ),
            ),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::Config, *};

    fn listener(fields: &str) -> Result<Listener, Vec<String>> {
        let yaml = format!("listeners: [{{address: '127.0.0.1:8080'{fields}}}]\n");
        Config::from_yaml(&yaml, "test.yaml")
            .map(|c| c.listeners[0].clone())
            .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults() {
        let l = listener("").unwrap();
        assert!(l.tls.is_none());
        assert!(l.http2);
        assert!(!l.proxy_protocol);
        assert_eq!(l.max_header_bytes, 64 * 1024);
        assert_eq!(l.max_headers, 100);
        assert_eq!(l.header_read_timeout, Duration::from_secs(30));
        assert_eq!(l.handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.send_timeout, Duration::from_secs(60));
        assert_eq!(
            listener(", send_timeout: 1s").unwrap().send_timeout,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn min_version_quoted_or_not() {
        let tls = |v: &str| listener(&format!(", tls: {{certificates: [], min_version: {v}}}"));
        // Each parses; the empty certificate list is the only error.
        for text in ["'1.3'", "1.3", "1.2"] {
            let errors = tls(text).unwrap_err();
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            assert!(
                errors[0].ends_with("at least one certificate is required"),
                "{errors:?}"
            );
        }
        let errors = tls("'1.1'").unwrap_err();
        assert!(
            errors[0].contains("unsupported TLS version '1.1'"),
            "{errors:?}"
        );
        assert_eq!(TlsVersion::default(), TlsVersion::V1_2);
        assert!(TlsVersion::V1_2.includes_tls12() && !TlsVersion::V1_3.includes_tls12());
    }

    #[test]
    fn client_auth_files_are_checked_with_their_path() {
        let errors = listener(
            ", tls: {certificates: [], client_auth: {ca_file: /nonexistent/ca.pem, \
             crl_files: [/nonexistent/a.crl]}}",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        for want in [
            "listeners[0].tls.certificates: at least one certificate is required",
            "listeners[0].tls.client_auth.ca_file: cannot read /nonexistent/ca.pem",
            "listeners[0].tls.client_auth.crl_files[0]: cannot read /nonexistent/a.crl",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{want}: {errors:#?}"
            );
        }

        let auth: ClientAuth = serde_yaml::from_str("ca_file: ca.pem").unwrap();
        assert_eq!(
            auth.mode,
            ClientAuthMode::Required,
            "fails closed by default"
        );
        assert!(auth.crl_files.is_empty());
        let auth: ClientAuth = serde_yaml::from_str("{mode: optional, ca_file: ca.pem}").unwrap();
        assert_eq!(auth.mode, ClientAuthMode::Optional);
        assert!(serde_yaml::from_str::<ClientAuth>("{mode: sometimes, ca_file: ca.pem}").is_err());
    }

    #[test]
    fn limits_are_checked_with_their_path() {
        let errors = listener(
            ", max_header_bytes: 4096, max_headers: 0, header_read_timeout: 0s, handshake_timeout: 0ms, \
             send_timeout: 0s, http2_max_concurrent_streams: 0",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "listeners[0].max_header_bytes: must be 8192 to 1048576",
                "listeners[0].http2_max_concurrent_streams: must be 1 to 10000",
                "listeners[0].max_headers: must be 1 to 10000",
                "listeners[0].header_read_timeout: must be greater than zero",
                "listeners[0].handshake_timeout: must be greater than zero",
                "listeners[0].send_timeout: must be greater than zero",
            ]
        );
        assert!(listener(", max_header_bytes: 8192, max_headers: 1").is_ok());
        assert_eq!(
            listener("").unwrap().http2_max_concurrent_streams,
            DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS
        );
        assert!(listener(", http2_max_concurrent_streams: 10001").is_err());
    }
}
