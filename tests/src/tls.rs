//! TLS for tests: a throwaway CA that issues leaf certificates (server
//! certificates for given DNS names, client certificates with any names,
//! dates and key usages) and revocation lists (rcgen, written as PEM files
//! for xgate's config), and clients that either verify the server against
//! that CA or accept anything and report what was presented, with or
//! without a client certificate; and server configurations for test
//! upstreams (optionally requiring a client certificate from a CA).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use gateway_userspace::tls::client::NoVerification;
use rcgen::{
    string::Ia5String, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::{
    crypto::{ring, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The next serial number: unique per CA, so a CRL names one leaf.
    serial: AtomicU64,
}

/// A leaf certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// What a client sees on the wire, to tell certificates apart.
    pub der: CertificateDer<'static>,
    /// The key PEM, e.g. to pair it with another certificate.
    pub key_pem: String,
    /// The key (PKCS#8 DER), for a client that presents this certificate.
    pub key_der: Vec<u8>,
    /// What a CRL revokes it by.
    pub serial: u64,
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

    /// A CA with this common name. Chains are built by name: a CA that
    /// shares another's name is an impostor of it (its certificates fail
    /// on the signature), one with a name of its own is unknown.
    pub fn named(common_name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        Self {
            issuer,
            serial: AtomicU64::new(1),
        }
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
        self.issue(params, dir, stem)
    }

    /// Parameters of a client certificate: `names` typed as in
    /// X-Client-Cert-SAN (`DNS:a.test`, `URI:spiffe://x`, `email:a@b`),
    /// subject `CN=<common_name>,O=xgate tests`, the clientAuth extended
    /// key usage. Change any of it before [`TestCa::issue`].
    pub fn client_params(names: &[&str], common_name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|name| {
                let (kind, value) = name.split_once(':').expect("typed name");
                let value = Ia5String::try_from(value).expect("ASCII name");
                match kind {
                    "DNS" => SanType::DnsName(value),
                    "URI" => SanType::URI(value),
                    "email" => SanType::Rfc822Name(value),
                    other => panic!("unknown name type {other}"),
                }
            })
            .collect();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "xgate tests");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params
    }

    /// Signs `params` (with a serial number of this CA's) and writes
    /// `<dir>/<stem>.crt` and `<dir>/<stem>.key`.
    pub fn issue(&self, mut params: CertificateParams, dir: &Path, stem: &str) -> Leaf {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let leaf = Leaf {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            serial,
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, &leaf.key_pem).expect("write key");
        leaf
    }

    /// Writes this CA's certificate (PEM) to `path`, for a `ca_file`.
    pub fn write_cert(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).expect("write CA certificate");
    }

    /// Like [`TestCa::write_cert`], returning the path.
    pub fn write_pem(&self, path: &Path) -> PathBuf {
        self.write_cert(path);
        path.to_path_buf()
    }

    /// Writes a CRL (PEM) of this CA that revokes `revoked` to `path`.
    pub fn write_crl(&self, revoked: &[&Leaf], path: &Path) {
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|leaf| RevokedCertParams {
                    serial_number: SerialNumber::from(leaf.serial),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("sign CRL");
        std::fs::write(path, crl.pem().expect("CRL PEM")).expect("write CRL");
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
        self.config_presenting(None)
    }

    /// The config of a client that presents `client_cert` when the server
    /// asks for one.
    pub fn config_presenting(&self, client_cert: Option<&Leaf>) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(self.versions)
            .expect("ring supports these versions");
        let builder = match self.ca {
            Some(ca) => builder.with_root_certificates(ca.roots()),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(NoVerification::new()),
        };
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![leaf.der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
                )
                .expect("client certificate and key match"),
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
    connect_presenting(addr, server_name, options, None).await
}

/// Like [`connect`], presenting `client_cert` if the server asks. Over TLS
/// 1.3 the client's side of the handshake is done before the server has
/// looked at the certificate: a refusal arrives as an alert on the first
/// read (see [`alert`]).
pub async fn connect_presenting(
    addr: SocketAddr,
    server_name: &str,
    options: &ClientOptions<'_>,
    client_cert: Option<&Leaf>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(options.config_presenting(client_cert))
        .connect(name, tcp)
        .await
}

/// The TLS alert the peer sent, if that is what `error` is.
pub fn alert(error: &std::io::Error) -> Option<rustls::AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
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
