//! Certificates and keys from PEM files, for both sides of the daemon's
//! TLS: the listeners' certificates and the CAs and CRLs they verify client
//! certificates with (`proxy::tls` builds the server side from these), and
//! TLS as a client (`client`). Config validation reads files through here
//! too, so it needs neither the listeners nor the upstream client.

pub mod client;

use std::{path::Path, sync::Arc};

use rustls::{
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, CertificateRevocationListDer},
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    sign::CertifiedKey,
    Error as TlsError, InconsistentKeys, RootCertStore,
};

use crate::config::{ClientAuth, ClientAuthMode};

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
pub(crate) fn provider() -> Arc<CryptoProvider> {
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
