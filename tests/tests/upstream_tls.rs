//! TLS to upstreams end to end: the real `xgate` binary proxying to echo
//! upstreams that speak TLS with certificates from a CA made for the test:
//! verification (CA, name, dates), `verify: false`, client certificates,
//! HTTP/2 by ALPN, and pooled TLS connections.

use std::net::SocketAddr;

use xgate_tests::{
    http::{get, send, KeepAlive, RawResponse},
    ports::any_port,
    process::{stderr, upstreams_config, xgate, Daemon},
    tls::{server_config, Leaf, TestCa},
    upstream::EchoUpstream,
    TempDir,
};

/// A CA and a directory for its files.
struct Pki {
    ca: TestCa,
    dir: TempDir,
    /// The CA's certificate as a `ca_file`.
    ca_file: String,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let ca = TestCa::new();
        let dir = TempDir::new(tag);
        let ca_file = ca
            .write_pem(&dir.path().join("ca.pem"))
            .display()
            .to_string();
        Self { ca, dir, ca_file }
    }

    fn leaf(&self, names: &[&str], stem: &str) -> Leaf {
        self.ca.leaf(names, self.dir.path(), stem)
    }

    /// An echo upstream on loopback presenting a certificate for `names`.
    async fn upstream(&self, names: &[&str], name: &str) -> EchoUpstream {
        let leaf = self.leaf(names, name);
        EchoUpstream::start_tls(any_port(), name, server_config(&leaf, None))
            .await
            .unwrap()
    }
}

fn ok_json(response: &RawResponse) -> serde_json::Value {
    assert_eq!(response.status, 200, "{response:?}");
    response.json()
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_its_ca_file() {
    let pki = Pki::new("tls-verified");
    // Without `server_name`, the target's IP address is the name verified
    // (and no SNI is sent: SNI carries DNS names only).
    let by_ip = pki.upstream(&["127.0.0.1"], "by-ip").await;
    let by_name = pki.upstream(&["api.internal"], "by-name").await;
    let (daemon, gw) = Daemon::with_upstreams(&[
        (
            "ip",
            format!(
                "{{targets: ['{}'], tls: {{ca_file: '{}'}}}}",
                by_ip.addr, pki.ca_file
            ),
        ),
        (
            "name",
            format!(
                "{{targets: ['{}'], tls: {{ca_file: '{}', server_name: api.internal}}}}",
                by_name.addr, pki.ca_file
            ),
        ),
    ]);
    let doc = ok_json(&get(gw, "/ip/x", &[]).await);
    assert_eq!(doc["upstream"], "by-ip");
    assert_eq!(doc["path"], "/x");
    assert_eq!(doc["tls"]["sni"], serde_json::Value::Null);
    assert_eq!(doc["tls"]["alpn"], "http/1.1");
    assert_eq!(doc["tls"]["client_cert"], false);

    let doc = ok_json(&get(gw, "/name/x", &[]).await);
    assert_eq!(doc["upstream"], "by-name");
    assert_eq!(doc["tls"]["sni"], "api.internal");

    // An upload much larger than a TLS record and a socket buffer: every
    // byte of it reaches the target, none left in TLS's buffer.
    let body = "u".repeat(3 * 1024 * 1024);
    let response = send(gw, None, &post("/ip/upload", &body)).await.unwrap();
    assert_eq!(ok_json(&response)["body_bytes"], body.len());
    assert!(!daemon.log().contains("UNSAFE"), "{}", daemon.log());
}

#[tokio::test]
async fn tls_connections_are_pooled_and_reused() {
    let pki = Pki::new("tls-pooled");
    let echo = pki.upstream(&["127.0.0.1"], "echo").await;
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "echo",
        format!(
            "{{targets: ['{}'], tls: {{ca_file: '{}'}}}}",
            echo.addr, pki.ca_file
        ),
    )]);
    // One client connection: one proxy worker, one pool.
    let mut client = KeepAlive::connect(gw).await.unwrap();
    for _ in 0..10 {
        assert_eq!(ok_json(&client.get("/echo/x").await)["upstream"], "echo");
    }
    assert_eq!(
        echo.connections(),
        1,
        "ten requests, one TLS connection (one handshake)"
    );
}

/// Each of these fails the handshake, which counts as a failure to connect:
/// a 502 `upstream unavailable`, retried (here on the same, only target),
/// and routed around when another target is there.
#[tokio::test]
async fn certificates_that_do_not_verify_are_refused() {
    let pki = Pki::new("tls-refused");
    let stranger = TestCa::named("stranger CA");
    let untrusted = EchoUpstream::start_tls(
        any_port(),
        "untrusted",
        server_config(
            &stranger.leaf(&["127.0.0.1"], pki.dir.path(), "untrusted"),
            None,
        ),
    )
    .await
    .unwrap();
    let misnamed = pki.upstream(&["api.internal"], "misnamed").await;
    let expired_leaf = pki
        .ca
        .leaf_with(&["127.0.0.1"], pki.dir.path(), "expired", |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
    let expired =
        EchoUpstream::start_tls(any_port(), "expired", server_config(&expired_leaf, None))
            .await
            .unwrap();
    let plain = EchoUpstream::start(any_port(), "plain").await.unwrap();
    let good = pki.upstream(&["127.0.0.1"], "good").await;
    let tls = |target: SocketAddr, extra: &str| {
        format!(
            "{{targets: ['{target}'], tls: {{ca_file: '{}'{extra}}}}}",
            pki.ca_file
        )
    };
    let (daemon, gw) = Daemon::with_upstreams(&[
        ("untrusted", tls(untrusted.addr, "")),
        (
            "misnamed",
            tls(misnamed.addr, ", server_name: other.internal"),
        ),
        ("expired", tls(expired.addr, "")),
        ("plain", tls(plain.addr, "")),
        (
            "mixed",
            format!(
                "{{targets: ['{}', '{}'], tls: {{ca_file: '{}'}}}}",
                untrusted.addr, good.addr, pki.ca_file
            ),
        ),
    ]);
    for (route, server, reason) in [
        ("untrusted", &untrusted, "UnknownIssuer"),
        ("misnamed", &misnamed, "not valid for name"),
        ("expired", &expired, "expired"),
        ("plain", &plain, "TLS handshake for 127.0.0.1"),
    ] {
        let r = get(gw, &format!("/{route}/x"), &[]).await;
        assert_eq!(r.status, 502, "{route}: {r:?}");
        assert_eq!(r.json()["message"], "upstream unavailable", "{route}");
        // Retried like a refused connect: the request never left.
        assert_eq!(server.connections(), 2, "{route}");
        let log = daemon.log();
        assert!(
            log.lines()
                .any(|l| l.contains(&server.addr.to_string()) && l.contains(reason)),
            "{route}: no `{reason}` for {} in the log:\n{log}",
            server.addr
        );
    }
    // Round robin sends some requests to the untrusted target first; each
    // is retried on the good one.
    let before = untrusted.connections();
    for _ in 0..6 {
        assert_eq!(ok_json(&get(gw, "/mixed/x", &[]).await)["upstream"], "good");
    }
    assert!(
        untrusted.connections() > before,
        "tried the untrusted target"
    );
}

#[tokio::test]
async fn verify_false_accepts_any_certificate_and_says_so_loudly() {
    let pki = Pki::new("tls-insecure");
    let stranger = TestCa::named("stranger CA");
    let echo = EchoUpstream::start_tls(
        any_port(),
        "insecure",
        server_config(
            &stranger.leaf(&["somewhere.else"], pki.dir.path(), "insecure"),
            None,
        ),
    )
    .await
    .unwrap();
    let yaml = upstreams_config(
        any_port(),
        &[(
            "insecure",
            format!("{{targets: ['{}'], tls: {{verify: false}}}}", echo.addr),
        )],
    );
    let path = pki.dir.path().join("insecure.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = xgate(&["validate", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let warning =
        "WARNING: upstreams.insecure.tls.verify: false: the targets' certificates are NOT verified";
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));

    let (daemon, gw) = Daemon::with_upstreams(&[(
        "insecure",
        format!("{{targets: ['{}'], tls: {{verify: false}}}}", echo.addr),
    )]);
    assert_eq!(
        ok_json(&get(gw, "/insecure/x", &[]).await)["upstream"],
        "insecure"
    );
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("UNSAFE SETTING")
            && l.contains("upstreams.insecure.tls.verify")),
        "{log}"
    );
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let pki = Pki::new("tls-mtls");
    let clients = TestCa::named("xgate test client CA");
    let server_leaf = pki.leaf(&["127.0.0.1"], "server");
    let echo = EchoUpstream::start_tls(
        any_port(),
        "strict",
        server_config(&server_leaf, Some(&clients)),
    )
    .await
    .unwrap();
    let ours = clients.leaf(&["gateway.internal"], pki.dir.path(), "client");
    let foreign = pki.leaf(&["gateway.internal"], "foreign-client");
    let with = |leaf: Option<&Leaf>| {
        let identity = leaf
            .map(|l| {
                format!(
                    ", client_cert: '{}', client_key: '{}'",
                    l.cert.display(),
                    l.key.display()
                )
            })
            .unwrap_or_default();
        format!(
            "{{targets: ['{}'], retries: 0, tls: {{ca_file: '{}'{identity}}}}}",
            echo.addr, pki.ca_file
        )
    };
    let (_daemon, gw) = Daemon::with_upstreams(&[
        ("mtls", with(Some(&ours))),
        ("anonymous", with(None)),
        ("foreign", with(Some(&foreign))),
    ]);
    let doc = ok_json(&get(gw, "/mtls/x", &[]).await);
    assert_eq!(doc["tls"]["client_cert"], true);
    // The server refuses these; under TLS 1.3 the client learns it only
    // once it has sent its request, so they are plain upstream errors.
    for route in ["anonymous", "foreign"] {
        let r = get(gw, &format!("/{route}/x"), &[]).await;
        assert_eq!(r.status, 502, "{route}: {r:?}");
    }
}

#[tokio::test]
async fn http2_over_tls_is_chosen_by_alpn() {
    let pki = Pki::new("tls-h2");
    let echo = pki.upstream(&["127.0.0.1"], "h2").await;
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "h2",
        format!(
            "{{targets: ['{}'], protocol: http2, tls: {{ca_file: '{}'}}}}",
            echo.addr, pki.ca_file
        ),
    )]);
    let mut client = KeepAlive::connect(gw).await.unwrap();
    for _ in 0..3 {
        let doc = ok_json(&client.get("/h2/x").await);
        assert_eq!(doc["version"], "HTTP/2.0");
        assert_eq!(doc["tls"]["alpn"], "h2");
    }
    assert_eq!(echo.connections(), 1, "one multiplexed TLS connection");
    // More than one flow-control window.
    let body = "y".repeat(200_000);
    let doc = ok_json(&send(gw, None, &post("/h2/upload", &body)).await.unwrap());
    assert_eq!(doc["version"], "HTTP/2.0");
    assert_eq!(doc["body_bytes"], 200_000);
}

/// A WebSocket-style upgrade to a TLS upstream: the tunnel carries the
/// bytes over the target's TLS connection, both ways.
#[tokio::test]
async fn an_upgrade_tunnels_through_the_targets_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new("tls-upgrade");
    let echo = pki.upstream(&["127.0.0.1"], "ws").await;
    let (_daemon, gw) = Daemon::with_upstreams(&[(
        "ws",
        format!(
            "{{targets: ['{}'], tls: {{ca_file: '{}'}}}}",
            echo.addr, pki.ca_file
        ),
    )]);
    let mut stream = tokio::net::TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(
            b"GET /ws/chat HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("a 101 head"));
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-upstream: ws"),
        "{head}"
    );

    let big: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = stream.into_split();
    let to_send = big.clone();
    let send = async move {
        writer.write_all(&to_send).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let receive = async {
        let mut echoed = Vec::new();
        reader.read_to_end(&mut echoed).await.unwrap();
        echoed
    };
    let ((), echoed) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("the echo and the close, not a hang");
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big, "bytes changed in the tunnel");
}

#[test]
fn validate_names_the_tls_files_it_cannot_read() {
    let dir = TempDir::new("tls-validate");
    let yaml = upstreams_config(
        any_port(),
        &[(
            "api",
            "{targets: ['127.0.0.1:9443'], tls: {ca_file: /nonexistent/ca.pem, \
             client_cert: /nonexistent/client.crt, client_key: /nonexistent/client.key}}"
                .to_string(),
        )],
    );
    let path = dir.path().join("xgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = xgate(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let errors = stderr(&out);
    assert!(errors.contains("2 errors"), "{errors}");
    assert!(
        errors.contains("upstreams.api.tls.ca_file: cannot read /nonexistent/ca.pem:"),
        "{errors}"
    );
    assert!(
        errors.contains("upstreams.api.tls.client_cert: cannot read /nonexistent/client.crt:"),
        "{errors}"
    );
}
