//! TLS termination: certificates loaded from PEM files and chosen per
//! handshake by SNI (exact names first, then `*.` wildcards, then the first
//! certificate as the default), and client certificates verified against
//! the listener's CAs and CRLs (`client_auth`). Files are read at start and
//! on every reload; a reload builds a new [`ServerConfig`] that only new
//! handshakes use.

use std::{collections::HashMap, fmt, sync::Arc};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    version::{TLS12, TLS13},
    ServerConfig, SupportedProtocolVersion,
};

pub use crate::tls::{ALPN_H2, ALPN_HTTP11};
use crate::{
    config::{ConfigError, Listener},
    tls::{client_verifier, load_certificate, provider, LoadedCertificate},
};

/// The name of a TLS version as OpenSSL and nginx's `$ssl_protocol` write
/// it (`TLSv1.3`), for the access log.
pub fn version_name(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        rustls::ProtocolVersion::TLSv1_1 => "TLSv1.1",
        rustls::ProtocolVersion::TLSv1_0 => "TLSv1.0",
        _ => "other",
    }
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
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            builder.with_client_cert_verifier(client_verifier(auth).map_err(|mut errors| {
                let error = errors.remove(0);
                ConfigError::new(
                    format!("listeners[{index}].tls.client_auth.{}", error.field),
                    error.message,
                )
            })?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
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
    use std::path::Path;

    use super::*;
    use crate::{
        config::{ClientAuth, ClientAuthMode},
        tls::test_client_ca,
    };

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

    fn auth(ca: &Path, crls: &[&Path]) -> ClientAuth {
        ClientAuth {
            mode: ClientAuthMode::Required,
            ca_file: ca.to_path_buf(),
            crl_files: crls.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    fn failures(auth: &ClientAuth) -> Vec<String> {
        match client_verifier(auth) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect(),
        }
    }

    #[test]
    fn client_cas_and_crls_load_from_pem_or_der() {
        let dir = std::env::temp_dir().join(format!("xgate-mtls-unit-{}", std::process::id()));
        let ca = test_client_ca(&dir);
        let (pem, der) = (dir.join("crl.pem"), dir.join("crl.der"));
        assert!(failures(&auth(&ca, &[])).is_empty());
        assert!(failures(&auth(&ca, &[&pem, &der])).is_empty());
        let mut optional = auth(&ca, &[&pem]);
        optional.mode = ClientAuthMode::Optional;
        assert!(!client_verifier(&optional).unwrap().client_auth_mandatory());
        assert!(client_verifier(&auth(&ca, &[]))
            .unwrap()
            .client_auth_mandatory());

        // Every unusable file is reported, each with its field.
        let missing = dir.join("missing.pem");
        let text = dir.join("text.pem");
        std::fs::write(&text, "no PEM here\n").unwrap();
        let garbage = dir.join("garbage.der");
        std::fs::write(&garbage, [0x30, 0x03, 0x02, 0x01, 0x01]).unwrap();
        let errors = failures(&auth(&missing, &[&pem, &text, &garbage, &missing]));
        let want = [
            format!("ca_file: cannot read {}", missing.display()),
            format!("crl_files[1]: no CRL found in {}", text.display()),
            format!(
                "crl_files[2]: {}: CRL 1 cannot be parsed",
                garbage.display()
            ),
            format!("crl_files[3]: cannot read {}", missing.display()),
        ];
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
        for (error, want) in errors.iter().zip(&want) {
            assert!(error.starts_with(want.as_str()), "{error} / {want}");
        }
        // A CA file without certificates, and a CRL as the CA.
        assert!(failures(&auth(&text, &[]))[0].starts_with("ca_file: no certificate found in"));
        let errors = failures(&auth(&pem, &[]));
        assert!(
            errors[0].starts_with("ca_file: no certificate found in"),
            "{errors:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
