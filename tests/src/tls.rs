//! TLS for tests: a throwaway CA that issues leaf certificates for given DNS
//! names or IP addresses (rcgen, written as PEM files for xgate's config),
//! clients that either verify the server against that CA or accept anything
//! and report what was presented, and server configurations for test
//! upstreams (optionally requiring a client certificate from a CA).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// What a client sees on the wire, to tell certificates apart.
    pub der: CertificateDer<'static>,
    /// The key PEM, e.g. to pair it with another certificate.
    pub key_pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        Self::named("xgate test CA")
    }

    /// A CA with another name: one that did not issue a certificate, not
    /// one that signed it with another key.
    pub fn named(common_name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        Self { issuer }
    }

    /// Issues a certificate for `names` (DNS names, `*.` wildcards allowed,
    /// or IP addresses) and writes `<dir>/<stem>.crt` and `<dir>/<stem>.key`.
    pub fn leaf(&self, names: &[&str], dir: &Path, stem: &str) -> Leaf {
        self.leaf_with(names, dir, stem, |_| {})
    }

    /// Like [`TestCa::leaf`], with `adjust` changing the parameters first
    /// (validity dates, key usages).
    pub fn leaf_with(
        &self,
        names: &[&str],
        dir: &Path,
        stem: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("xgate test {stem}"));
        adjust(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let leaf = Leaf {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, &leaf.key_pem).expect("write key");
        leaf
    }

    /// Writes the CA's certificate to `path` (PEM): a `ca_file`.
    pub fn write_pem(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.issuer.pem()).expect("write CA");
        path.to_path_buf()
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.issuer.der().clone())
            .expect("CA is a valid root");
        roots
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A server configuration presenting `leaf`, offering ALPN `h2` and
/// `http/1.1`, and requiring a client certificate issued by `client_ca`
/// when given.
pub fn server_config(leaf: &Leaf, client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports these versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                .build()
                .expect("client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("leaf key");
    let mut config = builder
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("leaf and key match");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What a client offers.
pub struct ClientOptions<'a> {
    /// Verify against this CA (names included); `None` accepts any
    /// certificate, to see which one an unknown name gets.
    pub ca: Option<&'a TestCa>,
    pub versions: &'a [&'static SupportedProtocolVersion],
    pub alpn: &'a [&'a [u8]],
    pub sni: bool,
}

impl<'a> ClientOptions<'a> {
    /// Verifying, TLS 1.2 and 1.3, no ALPN, SNI on.
    pub fn verifying(ca: &'a TestCa) -> Self {
        Self {
            ca: Some(ca),
            versions: rustls::ALL_VERSIONS,
            alpn: &[],
            sni: true,
        }
    }

    /// Accepts any certificate.
    pub fn insecure() -> Self {
        Self {
            ca: None,
            versions: rustls::ALL_VERSIONS,
            alpn: &[],
            sni: true,
        }
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(self.versions)
            .expect("ring supports these versions");
        let mut config = match self.ca {
            Some(ca) => builder
                .with_root_certificates(ca.roots())
                .with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
                .with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = self.sni;
        Arc::new(config)
    }
}

/// Connects to `addr` and completes a TLS handshake for `server_name`.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    options: &ClientOptions<'_>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(options.config())
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server presented.
pub fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server presented a certificate")
        .clone()
        .into_owned()
}

/// The ALPN protocol the server chose.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// Accepts any certificate; signatures are still checked so the handshake
/// is real.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
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
