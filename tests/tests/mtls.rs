//! Mutual TLS through the real `xgate` binary: listeners that ask for
//! client certificates (required or optional, CA and CRL files re-read on
//! reload), the `X-Client-Cert-*` headers upstream, and the `mtls` policy
//! that maps a certificate to a consumer. Every certificate, CA and CRL is
//! made here, at test time.
//!
//! Every wait is bounded; nothing asserts on elapsed time.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{date_time_ymd, ExtendedKeyUsagePurpose};
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xgate_tests::{
    http::{parse, RawResponse},
    ports::{any_port, free_port},
    process::{stderr, xgate, Daemon},
    tls::{alert, connect_presenting, ClientOptions, Leaf, TestCa},
    upstream::EchoUpstream,
    TempDir,
};

/// Upper bound for any single network wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

/// A CA for clients, its CA and CRL files, and a server certificate (from
/// another CA: the two roles are kept apart, as in production).
struct Pki {
    dir: TempDir,
    clients: TestCa,
    servers: TestCa,
    server: Leaf,
    ca_file: PathBuf,
    crl_file: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let clients = TestCa::named("xgate clients CA");
        let servers = TestCa::named("xgate servers CA");
        let server = servers.leaf(&["gateway.test"], dir.path(), "server");
        let ca_file = dir.path().join("clients-ca.pem");
        let crl_file = dir.path().join("clients.crl");
        clients.write_cert(&ca_file);
        clients.write_crl(&[], &crl_file);
        Self {
            dir,
            clients,
            servers,
            server,
            ca_file,
            crl_file,
        }
    }

    /// A client certificate of the clients' CA.
    fn client(&self, names: &[&str], common_name: &str, stem: &str) -> Leaf {
        self.clients.issue(
            TestCa::client_params(names, common_name),
            self.dir.path(),
            stem,
        )
    }

    /// Config: one TLS listener with `client_auth` (YAML flow mapping), an
    /// echo upstream, consumers, and three routes: `/mtls/` (mtls policy),
    /// `/anon/` (mtls with anonymous `guest`), `/open/` (no policy).
    fn config(&self, listen: SocketAddr, client_auth: &str, upstream: SocketAddr) -> String {
        format!(
            "listeners:\n\
             \x20 - address: '{listen}'\n\
             \x20   tls:\n\
             \x20     certificates: [{{cert: '{cert}', key: '{key}'}}]\n\
             \x20     client_auth: {client_auth}\n\
             upstreams:\n\
             \x20 echo: {{targets: ['{upstream}'], timeout: 10s, connect_timeout: 1s}}\n\
             consumers:\n\
             \x20 - {{username: alice, mtls_subjects: ['spiffe://xgate.test/alice']}}\n\
             \x20 - {{username: bob, mtls_subjects: [bob.clients.test]}}\n\
             \x20 - {{username: guest}}\n\
             routes:\n\
             \x20 - {{name: mtls, match: {{path_prefix: /mtls/}}, upstream: echo, policies: [{{type: mtls}}]}}\n\
             \x20 - {{name: anon, match: {{path_prefix: /anon/}}, upstream: echo, policies: [{{type: mtls, anonymous: guest}}]}}\n\
             \x20 - {{name: open, match: {{path_prefix: /open/}}, upstream: echo}}\n",
            cert = self.server.cert.display(),
            key = self.server.key.display(),
        )
    }

    fn client_auth(&self, mode: &str) -> String {
        format!(
            "{{mode: {mode}, ca_file: '{}', crl_files: ['{}']}}",
            self.ca_file.display(),
            self.crl_file.display()
        )
    }

    /// The certificates every listener must refuse in its handshake, with
    /// the alert each gets: untrusted CA (unknown, or an impostor with the
    /// trusted CA's name), expired, not yet valid, revoked (written to the
    /// CRL file here), and one only for servers. All carry alice's name.
    fn bad_certificates(&self) -> Vec<(&'static str, Leaf, AlertDescription)> {
        let names = ["URI:spiffe://xgate.test/alice"];
        let stranger = TestCa::named("stranger CA").issue(
            TestCa::client_params(&names, "alice"),
            self.dir.path(),
            "untrusted",
        );
        let impostor = TestCa::named("xgate clients CA").issue(
            TestCa::client_params(&names, "alice"),
            self.dir.path(),
            "impostor",
        );
        let mut params = TestCa::client_params(&names, "alice");
        (params.not_before, params.not_after) =
            (date_time_ymd(2000, 1, 1), date_time_ymd(2001, 1, 1));
        let expired = self.clients.issue(params, self.dir.path(), "expired");
        let mut params = TestCa::client_params(&names, "alice");
        (params.not_before, params.not_after) =
            (date_time_ymd(2090, 1, 1), date_time_ymd(2100, 1, 1));
        let not_yet = self.clients.issue(params, self.dir.path(), "not-yet-valid");
        let revoked = self.client(&names, "alice", "revoked");
        self.clients.write_crl(&[&revoked], &self.crl_file);
        let mut params = TestCa::client_params(&names, "alice");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_only = self.clients.issue(params, self.dir.path(), "server-only");
        // A server certificate of the servers' CA is no client certificate
        // either (untrusted for clients).
        let server_ca = self.servers.issue(
            TestCa::client_params(&names, "alice"),
            self.dir.path(),
            "servers-ca",
        );
        vec![
            ("untrusted CA", stranger, AlertDescription::UnknownCA),
            // The signature does not verify with the trusted CA's key.
            ("impostor CA", impostor, AlertDescription::DecryptError),
            ("expired", expired, AlertDescription::CertificateExpired),
            (
                "not yet valid",
                not_yet,
                AlertDescription::CertificateExpired,
            ),
            ("revoked", revoked, AlertDescription::CertificateRevoked),
            (
                "server-only EKU",
                server_only,
                AlertDescription::UnsupportedCertificate,
            ),
            (
                "issued by the servers' CA",
                server_ca,
                AlertDescription::UnknownCA,
            ),
        ]
    }
}

/// What became of a request: refused in the TLS handshake (with the alert
/// xgate sent), or answered.
#[derive(Debug)]
enum Outcome {
    Refused(Option<AlertDescription>),
    Answered(RawResponse),
}

impl Outcome {
    fn response(self) -> RawResponse {
        match self {
            Outcome::Answered(response) => response,
            Outcome::Refused(alert) => panic!("refused in the handshake ({alert:?})"),
        }
    }

    /// The headers the upstream received.
    fn upstream_headers(self) -> serde_json::Value {
        let response = self.response();
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        response.json()["headers"].clone()
    }
}

/// GET `path` over HTTP/1.1 on a new TLS connection, presenting `client`,
/// with extra header lines.
async fn get(
    addr: SocketAddr,
    client: Option<&Leaf>,
    options: &ClientOptions<'_>,
    path: &str,
    extra: &[&str],
) -> Outcome {
    let connected = tokio::time::timeout(
        WAIT,
        connect_presenting(addr, "gateway.test", options, client),
    )
    .await
    .expect("handshake within WAIT");
    let mut stream = match connected {
        Ok(stream) => stream,
        // TLS 1.2: the server's verdict comes before the handshake ends.
        Err(error) => return Outcome::Refused(alert(&error)),
    };
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(&format!("{line}\r\n"));
    }
    request.push_str("\r\n");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        stream.write_all(request.as_bytes()).await?;
        stream.read_to_end(&mut raw).await
    })
    .await
    .expect("answer or close within WAIT");
    match read {
        // TLS 1.3: the client finished first; the verdict is the next
        // thing it reads.
        Err(error) if raw.is_empty() => Outcome::Refused(alert(&error)),
        _ => Outcome::Answered(parse(&raw).expect("an HTTP response")),
    }
}

/// The same over HTTP/2 (ALPN `h2`): the status and the upstream's view.
async fn h2_get(addr: SocketAddr, client: &Leaf, ca: &TestCa, path: &str) -> serde_json::Value {
    let options = ClientOptions {
        alpn: &[b"h2"],
        ..ClientOptions::verifying(ca)
    };
    let stream = connect_presenting(addr, "gateway.test", &options, Some(client))
        .await
        .expect("TLS");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2");
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(format!("https://gateway.test{path}"))
        .header("x-client-cert-subject", "CN=mallory")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("response within WAIT")
        .expect("response");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()
}

fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Client-sent copies of the headers xgate owns.
const FORGED: &[&str] = &[
    "X-Client-Cert-Subject: CN=mallory",
    "X-Client-Cert-SAN: DNS:mallory.test",
    "X-Client-Cert-Fingerprint: 00",
    "X-Client-Cert-Verified: SUCCESS",
    "X-Consumer-Username: mallory",
];

#[tokio::test]
async fn a_client_certificate_maps_to_its_consumer_and_forged_headers_are_replaced() {
    let pki = Pki::new("mtls-map");
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &pki.config(listen, &pki.client_auth("required"), upstream.addr),
        None,
    );
    let alice = pki.client(
        &["URI:spiffe://xgate.test/alice", "email:alice@example.test"],
        "alice",
        "alice",
    );
    let fingerprint = sha256_hex(&alice.der);
    let options = ClientOptions::verifying(&pki.servers);

    let seen = get(listen, Some(&alice), &options, "/mtls/x", FORGED)
        .await
        .upstream_headers();
    assert_eq!(seen["x-consumer-username"], "alice", "{seen}");
    assert_eq!(seen["x-credential-identifier"], fingerprint.as_str());
    assert_eq!(seen["x-client-cert-fingerprint"], fingerprint.as_str());
    assert_eq!(seen["x-client-cert-subject"], "CN=alice,O=xgate tests");
    assert_eq!(
        seen["x-client-cert-san"],
        "URI:spiffe://xgate.test/alice,email:alice@example.test"
    );
    assert!(seen.get("x-client-cert-verified").is_none(), "{seen}");

    // A route without policies gets the certificate's headers all the
    // same, and no consumer.
    let seen = get(listen, Some(&alice), &options, "/open/x", FORGED)
        .await
        .upstream_headers();
    assert_eq!(seen["x-client-cert-fingerprint"], fingerprint.as_str());
    assert_eq!(seen["x-client-cert-subject"], "CN=alice,O=xgate tests");
    assert!(seen.get("x-consumer-username").is_none(), "{seen}");
    assert!(seen.get("x-client-cert-verified").is_none(), "{seen}");

    // By DNS name, which consumer_by tries first.
    let bob = pki.client(&["DNS:Bob.Clients.test"], "bob", "bob");
    let seen = get(listen, Some(&bob), &options, "/mtls/x", &[])
        .await
        .upstream_headers();
    assert_eq!(seen["x-consumer-username"], "bob");
    assert_eq!(seen["x-client-cert-san"], "DNS:Bob.Clients.test");

    // HTTP/2 connections carry the certificate to their streams too.
    let seen = h2_get(listen, &alice, &pki.servers, "/mtls/x").await;
    assert_eq!(seen["version"], "HTTP/1.1", "upstream leg");
    let headers = &seen["headers"];
    assert_eq!(headers["x-consumer-username"], "alice", "{seen}");
    assert_eq!(headers["x-client-cert-subject"], "CN=alice,O=xgate tests");
    assert_eq!(headers["x-client-cert-fingerprint"], fingerprint.as_str());
}

#[tokio::test]
async fn required_mode_refuses_every_bad_certificate_in_the_handshake() {
    let pki = Pki::new("mtls-required");
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let bad = pki.bad_certificates();
    let _daemon = Daemon::start(
        &pki.config(listen, &pki.client_auth("required"), upstream.addr),
        None,
    );
    let options = ClientOptions::verifying(&pki.servers);
    let alice = pki.client(&["URI:spiffe://xgate.test/alice"], "alice", "alice");
    // The control: the same names from a good certificate pass.
    let seen = get(listen, Some(&alice), &options, "/mtls/x", &[])
        .await
        .upstream_headers();
    assert_eq!(seen["x-consumer-username"], "alice");

    for (what, leaf, expected) in &bad {
        match get(listen, Some(leaf), &options, "/open/x", &[]).await {
            Outcome::Refused(alert) => assert_eq!(alert, Some(*expected), "{what}"),
            Outcome::Answered(r) => panic!("{what}: answered {}", r.status),
        }
    }
    // Over TLS 1.2 the refusal ends the handshake itself.
    let tls12 = ClientOptions {
        versions: &[&rustls::version::TLS12],
        ..ClientOptions::verifying(&pki.servers)
    };
    let (_, revoked, _) = bad.iter().find(|(w, ..)| *w == "revoked").unwrap();
    assert!(matches!(
        get(listen, Some(revoked), &tls12, "/open/x", &[]).await,
        Outcome::Refused(Some(AlertDescription::CertificateRevoked))
    ));
    assert!(matches!(
        get(listen, Some(&alice), &tls12, "/open/x", &[]).await,
        Outcome::Answered(RawResponse { status: 200, .. })
    ));

    // No certificate at all.
    assert!(matches!(
        get(listen, None, &options, "/open/x", &[]).await,
        Outcome::Refused(Some(AlertDescription::CertificateRequired))
    ));

    // A valid certificate whose names are no consumer's: the handshake
    // passes, the policy refuses.
    let stranger = pki.client(&["DNS:carol.clients.test"], "carol", "carol");
    let response = get(listen, Some(&stranger), &options, "/mtls/x", &[])
        .await
        .response();
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["message"], "unknown client certificate");
    assert_eq!(
        response.header("www-authenticate"),
        Some("Mutual realm=\"xgate\"")
    );
    let seen = get(listen, Some(&stranger), &options, "/anon/x", &[])
        .await
        .upstream_headers();
    assert_eq!(seen["x-consumer-username"], "guest");
    assert_eq!(seen["x-anonymous-consumer"], "true");
    assert_eq!(seen["x-client-cert-san"], "DNS:carol.clients.test");
}

#[tokio::test]
async fn optional_mode_lets_clients_without_a_certificate_reach_the_policies() {
    let pki = Pki::new("mtls-optional");
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let bad = pki.bad_certificates();
    let _daemon = Daemon::start(
        &pki.config(listen, &pki.client_auth("optional"), upstream.addr),
        None,
    );
    let options = ClientOptions::verifying(&pki.servers);

    // No certificate: anonymous where the policy has one, 401 where not,
    // and nothing of a certificate upstream (forged copies stripped).
    let seen = get(listen, None, &options, "/anon/x", FORGED)
        .await
        .upstream_headers();
    assert_eq!(seen["x-consumer-username"], "guest", "{seen}");
    assert_eq!(seen["x-anonymous-consumer"], "true");
    for name in ["subject", "san", "fingerprint", "verified"] {
        assert!(
            seen.get(format!("x-client-cert-{name}")).is_none(),
            "{seen}"
        );
    }
    assert!(seen.get("x-credential-identifier").is_none(), "{seen}");
    let response = get(listen, None, &options, "/mtls/x", &[]).await.response();
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["message"], "no client certificate");
    assert_eq!(
        response.header("www-authenticate"),
        Some("Mutual realm=\"xgate\"")
    );
    let seen = get(listen, None, &options, "/open/x", FORGED)
        .await
        .upstream_headers();
    assert!(seen.get("x-client-cert-subject").is_none(), "{seen}");

    // A good certificate is its consumer; one of nobody's is 401.
    let alice = pki.client(&["URI:spiffe://xgate.test/alice"], "alice", "alice");
    let seen = get(listen, Some(&alice), &options, "/anon/x", &[])
        .await
        .upstream_headers();
    assert_eq!(seen["x-consumer-username"], "alice");
    assert!(seen.get("x-anonymous-consumer").is_none(), "{seen}");
    let stranger = pki.client(&["DNS:carol.clients.test"], "carol", "carol");
    let response = get(listen, Some(&stranger), &options, "/mtls/x", &[])
        .await
        .response();
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["message"], "unknown client certificate");

    // A certificate presented is verified all the same: optional means
    // "may present none", not "may present a bad one".
    for (what, leaf, expected) in &bad {
        match get(listen, Some(leaf), &options, "/anon/x", &[]).await {
            Outcome::Refused(alert) => assert_eq!(alert, Some(*expected), "{what}"),
            Outcome::Answered(r) => panic!("{what}: answered {}", r.status),
        }
    }
}

/// The status of `GET /mtls/x` presenting `leaf`, or the handshake's alert.
async fn status(
    addr: SocketAddr,
    leaf: &Leaf,
    options: &ClientOptions<'_>,
) -> Result<u16, Option<AlertDescription>> {
    match get(addr, Some(leaf), options, "/mtls/x", &[]).await {
        Outcome::Answered(response) => Ok(response.status),
        Outcome::Refused(alert) => Err(alert),
    }
}

#[tokio::test]
async fn ca_and_crl_files_are_read_again_on_reload() {
    let pki = Pki::new("mtls-reload");
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &pki.config(listen, &pki.client_auth("required"), upstream.addr),
        None,
    );
    let options = ClientOptions::verifying(&pki.servers);
    let alice = pki.client(&["URI:spiffe://xgate.test/alice"], "alice", "alice");
    let status = |leaf| status(listen, leaf, &options);
    assert_eq!(status(&alice).await, Ok(200));

    // Revoked in a new CRL: refused after the reload.
    pki.clients.write_crl(&[&alice], &pki.crl_file);
    let out = daemon.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        status(&alice).await,
        Err(Some(AlertDescription::CertificateRevoked))
    );

    // A new CA (and its CRL) replaces the old one.
    let next = TestCa::named("xgate clients CA 2");
    next.write_cert(&pki.ca_file);
    next.write_crl(&[], &pki.crl_file);
    let out = daemon.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let alice2 = next.issue(
        TestCa::client_params(&["URI:spiffe://xgate.test/alice"], "alice"),
        pki.dir.path(),
        "alice2",
    );
    assert_eq!(status(&alice2).await, Ok(200));
    assert_eq!(status(&alice).await, Err(Some(AlertDescription::UnknownCA)));

    // A broken CRL fails the reload, names the file, and keeps what runs.
    std::fs::write(&pki.crl_file, "-----BEGIN X509 CRL-----\ngarbage\n").unwrap();
    let out = daemon.cli(&["reload"]);
    assert!(!out.status.success(), "reload with a broken CRL succeeded");
    let message = stderr(&out);
    assert!(
        message.contains("listeners[0].tls.client_auth.crl_files[0]")
            && message.contains(&pki.crl_file.display().to_string()),
        "{message}"
    );
    assert_eq!(status(&alice2).await, Ok(200));
}

#[test]
fn xgate_validate_reports_client_auth_files_and_mtls_policies() {
    let pki = Pki::new("mtls-validate");
    let garbage = pki.dir.path().join("garbage.crl");
    std::fs::write(&garbage, [0x30, 0x03, 0x02, 0x01, 0x01]).unwrap();
    let missing = pki.dir.path().join("missing-ca.pem");
    let auth = format!(
        "{{ca_file: '{}', crl_files: ['{}', '{}']}}",
        missing.display(),
        pki.crl_file.display(),
        garbage.display()
    );
    let yaml = pki.config(
        "127.0.0.1:8443".parse().unwrap(),
        &auth,
        "127.0.0.1:9".parse().unwrap(),
    );
    let path = pki.dir.path().join("xgate.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = xgate(&["validate", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let message = stderr(&out);
    for want in [
        format!(
            "listeners[0].tls.client_auth.ca_file: cannot read {}",
            missing.display()
        ),
        format!(
            "listeners[0].tls.client_auth.crl_files[1]: {}: CRL 1 cannot be parsed",
            garbage.display()
        ),
    ] {
        assert!(message.contains(&want), "{want}\n{message}");
    }
    assert!(!message.contains("crl_files[0]"), "{message}");

    // The same config with usable files is valid.
    let good = pki.config(
        "127.0.0.1:8443".parse().unwrap(),
        &pki.client_auth("optional"),
        "127.0.0.1:9".parse().unwrap(),
    );
    std::fs::write(&path, good).unwrap();
    let out = xgate(&["validate", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}
