//! TLS as a client, for every connection the daemon opens: to upstream
//! targets and the policy fetcher's (JWKS). The trusted CAs are loaded and
//! the rustls configuration is built here only, so the two cannot come to
//! trust differently.

use std::{path::Path, sync::Arc};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        ResolvesClientCert,
    },
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    sign::CertifiedKey,
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Shared with the listeners: the ALPN identifiers, and which file of a
/// certificate and key pair is at fault.
pub use super::{CertificateError, ALPN_H2, ALPN_HTTP11};

/// Where Debian (and most distributions) keep the trusted CAs.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// ring, as for the listeners: no C toolchain needed, and set explicitly
/// rather than through a process-wide default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The CA certificates in a PEM bundle. Errors name the file; a file with
/// no certificate in it is one (it would make every handshake fail).
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in rustls_pemfile::certs(&mut pem.as_slice()).enumerate() {
        let cert = cert.map_err(|e| format!("{}: not valid PEM: {e}", path.display()))?;
        roots.add(cert).map_err(|e| {
            format!(
                "{}: certificate {} cannot be used as a CA: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "no certificate found in {} (expected PEM 'BEGIN CERTIFICATE' blocks)",
            path.display()
        ));
    }
    Ok(roots)
}

/// A certificate chain and its private key to present (mutual TLS), read
/// and checked as a listener's are; the error says which file is at fault.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertificateError> {
    super::load_certificate(cert, key).map(|loaded| loaded.key)
}

/// How the server's certificate is checked.
pub enum Verify {
    /// It must chain to one of these CAs and be valid for the server name.
    Roots(RootCertStore),
    /// Not at all (`verify: false`). The handshake's signatures are still
    /// checked, so the session is encrypted, but to whoever answered.
    Nothing,
}

/// A client configuration: TLS 1.2 and 1.3 on ring, the given trust, a
/// certificate to present when the server asks (mutual TLS), and the ALPN
/// protocols to offer, in order of preference.
pub fn config(verify: Verify, identity: Option<Arc<CertifiedKey>>, alpn: &[&[u8]]) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match verify {
        Verify::Roots(roots) => builder.with_root_certificates(roots),
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(NoVerification::new()),
    };
    let mut config = match identity {
        Some(key) => builder.with_client_cert_resolver(Arc::new(Identity(key))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The one certificate a client presents, whatever the server hints.
#[derive(Debug)]
struct Identity(Arc<CertifiedKey>);

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any certificate for any name; the handshake's signatures are
/// still verified. (`verify: false`, and the tests' clients that want to
/// see which certificate a server presents.)
#[derive(Debug)]
pub struct NoVerification(Arc<CryptoProvider>);

impl NoVerification {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(provider()))
    }
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("xgate-tls-client-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_bundle_without_certificates_is_refused_with_its_path() {
        let missing = Path::new("/nonexistent/ca.pem");
        let error = load_roots(missing).unwrap_err();
        assert!(
            error.starts_with("cannot read /nonexistent/ca.pem:"),
            "{error}"
        );
        let empty = temp("empty.pem", "# nothing here\n");
        let error = load_roots(&empty).unwrap_err();
        assert_eq!(
            error,
            format!(
                "no certificate found in {} (expected PEM 'BEGIN CERTIFICATE' blocks)",
                empty.display()
            )
        );
        let garbage = temp(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        );
        let error = load_roots(&garbage).unwrap_err();
        assert!(
            error.starts_with(&format!(
                "{}: certificate 1 cannot be used as a CA",
                garbage.display()
            )),
            "{error}"
        );
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(garbage);
    }
}
