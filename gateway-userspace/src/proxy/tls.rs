//! TLS termination: certificates loaded from PEM files and chosen per
//! handshake by SNI (exact names first, then `*.` wildcards, then the first
//! certificate as the default). Files are read at start and on every reload;
//! a reload builds a new [`ServerConfig`] that only new handshakes use.

use std::{collections::HashMap, fmt, path::Path, sync::Arc};

use rustls::{
    crypto::{ring, CryptoProvider},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    version::{TLS12, TLS13},
    Error as TlsError, InconsistentKeys, ServerConfig, SupportedProtocolVersion,
};

use crate::config::{ConfigError, Listener};

/// ALPN identifiers, in the server's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A certificate chain with its key, ready to serve, and the DNS names its
/// leaf is valid for (lower case; wildcards as `*.example.com`).
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
}

/// Which of the two files of a certificate is at fault, and why. The message
/// names the file; `file` completes the config path (`...certificates[0].key`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CertificateError {
    pub file: &'static str,
    pub message: String,
}

impl CertificateError {
    fn cert(message: String) -> Self {
        Self {
            file: "cert",
            message,
        }
    }
    fn key(message: String) -> Self {
        Self {
            file: "key",
            message,
        }
    }
}

/// The crypto provider for every listener: ring (no C toolchain needed),
/// set explicitly rather than through a process-wide default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads a PEM chain and its private key, checks that they belong together,
/// and collects the leaf's DNS names.
pub fn load_certificate(cert: &Path, key: &Path) -> Result<LoadedCertificate, CertificateError> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| CertificateError::cert(format!("cannot read {}: {e}", cert.display())))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::cert(format!("{}: not valid PEM: {e}", cert.display())))?;
    let Some(leaf) = chain.first() else {
        return Err(CertificateError::cert(format!(
            "no certificate found in {} (expected a PEM 'BEGIN CERTIFICATE' block)",
            cert.display()
        )));
    };
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| {
            CertificateError::cert(format!(
                "{}: the first certificate cannot be parsed: {e}",
                cert.display()
            ))
        })?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();

    let key_pem = std::fs::read(key)
        .map_err(|e| CertificateError::key(format!("cannot read {}: {e}", key.display())))?;
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| CertificateError::key(format!("{}: not valid PEM: {e}", key.display())))?
        .ok_or_else(|| {
            CertificateError::key(format!(
                "no private key found in {} (expected a PEM PKCS#8, RSA or EC private key)",
                key.display()
            ))
        })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| {
            CertificateError::key(format!("{}: unusable private key: {e}", key.display()))
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(CertificateError::key(format!(
                "the private key in {} does not match the certificate in {}",
                key.display(),
                cert.display()
            )))
        }
        Err(e) => {
            return Err(CertificateError::cert(format!(
                "{}: unusable certificate: {e}",
                cert.display()
            )))
        }
    }
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        names,
    })
}

/// Builds the TLS configuration of listener `index` from its files. `Ok(None)`
/// when the listener has no `tls`. Errors carry the config path.
pub fn server_config(
    index: usize,
    listener: &Listener,
) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let Some(tls) = &listener.tls else {
        return Ok(None);
    };
    let mut certificates = Vec::with_capacity(tls.certificates.len());
    for (j, files) in tls.certificates.iter().enumerate() {
        let loaded = load_certificate(&files.cert, &files.key).map_err(|e| {
            ConfigError::new(
                format!("listeners[{index}].tls.certificates[{j}].{}", e.file),
                e.message,
            )
        })?;
        certificates.push(loaded);
    }
    let resolver = SniResolver::new(certificates).ok_or_else(|| {
        ConfigError::new(
            format!("listeners[{index}].tls.certificates"),
            "at least one certificate is required",
        )
    })?;
    let versions: &[&SupportedProtocolVersion] = if tls.min_version.includes_tls12() {
        &[&TLS13, &TLS12]
    } else {
        &[&TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        // Client-certificate authentication (a later issue) goes here as
        // `with_client_cert_verifier`.
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if listener.http2 {
        vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
    } else {
        vec![ALPN_HTTP11.to_vec()]
    };
    Ok(Some(Arc::new(config)))
}

/// Picks a certificate by SNI. An exact DNS name wins over a wildcard; for
/// a name several certificates share, the first listed wins; no SNI, or a
/// name no certificate has, gets the first certificate.
pub struct SniResolver {
    certificates: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    /// `None` without certificates.
    pub fn new(loaded: Vec<LoadedCertificate>) -> Option<Self> {
        if loaded.is_empty() {
            return None;
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, certificate) in loaded.iter().enumerate() {
            for name in &certificate.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Some(Self {
            certificates: loaded.into_iter().map(|c| c.key).collect(),
            exact,
            wildcard,
        })
    }

    /// Index of the certificate served for `server_name`.
    pub fn select(&self, server_name: Option<&str>) -> usize {
        let Some(name) = server_name else {
            return 0;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return i;
        }
        // A wildcard covers exactly one label: `*.example.com` matches
        // `a.example.com`, not `example.com` nor `a.b.example.com`.
        name.split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("certificates", &self.certificates.len())
            .field("exact", &self.exact)
            .field("wildcard", &self.wildcard)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certificates[self.select(hello.server_name())].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver over names only: selection never looks at the keys.
    fn resolver(names: &[&[&str]]) -> SniResolver {
        let certificates: Vec<Arc<CertifiedKey>> = Vec::new();
        let mut r = SniResolver {
            certificates,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, list) in names.iter().enumerate() {
            for name in *list {
                match name.strip_prefix("*.") {
                    Some(parent) => r.wildcard.entry(parent.to_string()).or_insert(i),
                    None => r.exact.entry(name.to_string()).or_insert(i),
                };
            }
        }
        r
    }

    #[test]
    fn exact_beats_wildcard_and_unknown_gets_the_default() {
        let r = resolver(&[
            &["default.test"],
            &["*.example.test"],
            &["api.example.test"],
        ]);
        assert_eq!(r.select(Some("api.example.test")), 2);
        assert_eq!(r.select(Some("API.Example.Test.")), 2, "case and root dot");
        assert_eq!(r.select(Some("www.example.test")), 1);
        assert_eq!(r.select(Some("example.test")), 0, "wildcard needs a label");
        assert_eq!(r.select(Some("a.b.example.test")), 0, "one label only");
        assert_eq!(r.select(Some("other.test")), 0);
        assert_eq!(r.select(None), 0);
    }

    #[test]
    fn first_listed_certificate_wins_a_shared_name() {
        let r = resolver(&[&["a.test"], &["b.test", "a.test"]]);
        assert_eq!(r.select(Some("a.test")), 0);
        assert_eq!(r.select(Some("b.test")), 1);
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let missing = Path::new("/nonexistent/xgate/cert.pem");
        let error = load_certificate(missing, missing).err().expect("fails");
        assert_eq!(error.file, "cert");
        assert!(
            error
                .message
                .starts_with("cannot read /nonexistent/xgate/cert.pem"),
            "{error}"
        );

        let dir = std::env::temp_dir().join(format!("xgate-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = load_certificate(&empty, missing).err().expect("fails");
        assert_eq!(error.file, "cert");
        assert!(
            error.message.starts_with("no certificate found in"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
