//! TLS termination: certificates loaded from PEM files and chosen per
//! handshake by SNI (exact names first, then `*.` wildcards, then the first
//! certificate as the default), and client certificates verified against
//! the listener's CAs and CRLs (`client_auth`). Files are read at start and
//! on every reload; a reload builds a new [`ServerConfig`] that only new
//! handshakes use.

use std::{collections::HashMap, fmt, path::Path, sync::Arc};

use rustls::{
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, CertificateRevocationListDer},
    server::{danger::ClientCertVerifier, ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    version::{TLS12, TLS13},
    Error as TlsError, InconsistentKeys, RootCertStore, ServerConfig, SupportedProtocolVersion,
};

use crate::config::{ClientAuth, ClientAuthMode, ConfigError, Listener};

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

/// A `client_auth` file that cannot be used: `field` completes the config
/// path (`ca_file`, `crl_files[1]`), the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ClientAuthError {
    pub field: String,
    pub message: String,
}

/// Reads the CA and CRL files of `client_auth` and builds the verifier the
/// handshake uses: chains to one of the CAs, validity dates, the
/// client-auth extended key usage when the certificate has one, and
/// revocation when CRLs are given. Every unusable file is reported.
pub fn client_verifier(
    auth: &ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, Vec<ClientAuthError>> {
    let mut errors = Vec::new();
    let roots = load_client_cas(&auth.ca_file).unwrap_or_else(|message| {
        errors.push(ClientAuthError {
            field: "ca_file".into(),
            message,
        });
        RootCertStore::empty()
    });
    let mut crls = Vec::new();
    for (i, file) in auth.crl_files.iter().enumerate() {
        match load_crls(file) {
            Ok(list) => crls.extend(list),
            Err(message) => errors.push(ClientAuthError {
                field: format!("crl_files[{i}]"),
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).with_crls(crls);
    if auth.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| {
        vec![ClientAuthError {
            field: "ca_file".into(),
            message: format!("{}: {e}", auth.ca_file.display()),
        }]
    })
}

/// The trust anchors in a PEM file: at least one, each usable.
fn load_client_cas(file: &Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|e| format!("{}: not valid PEM: {e}", file.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "no certificate found in {} (expected PEM 'BEGIN CERTIFICATE' blocks)",
            file.display()
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, certificate) in certificates.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| {
            format!(
                "{}: certificate {} cannot be a CA: {e}",
                file.display(),
                i + 1
            )
        })?;
    }
    Ok(roots)
}

/// The revocation lists in a file: PEM (`BEGIN X509 CRL` blocks, as
/// `openssl ca -gencrl` writes) or one DER list (as CAs publish them).
fn load_crls(file: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    // A DER list starts with its SEQUENCE tag; text is taken for PEM.
    let crls = if bytes.first() != Some(&0x30) {
        let crls = rustls_pemfile::crls(&mut bytes.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not valid PEM: {e}", file.display()))?;
        if crls.is_empty() {
            return Err(format!(
                "no CRL found in {} (expected a PEM 'BEGIN X509 CRL' block or a DER file)",
                file.display()
            ));
        }
        crls
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    for (i, crl) in crls.iter().enumerate() {
        webpki::OwnedCertRevocationList::from_der(crl)
            .map_err(|e| format!("{}: CRL {} cannot be parsed: {e}", file.display(), i + 1))?;
    }
    Ok(crls)
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

/// For tests: a CA certificate in `<dir>/ca.pem` and an empty CRL it
/// signed in `<dir>/crl.pem` and `<dir>/crl.der`.
#[cfg(test)]
pub(crate) fn test_client_ca(dir: &Path) -> std::path::PathBuf {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
    };
    std::fs::create_dir_all(dir).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let crl = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: SerialNumber::from(1),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca)
    .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("crl.pem"), crl.pem().unwrap()).unwrap();
    std::fs::write(dir.join("crl.der"), crl.der()).unwrap();
    dir.join("ca.pem")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientAuth;

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
