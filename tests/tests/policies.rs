//! Authentication policies end to end through the real binary: consumers
//! and their identity headers, key-auth, jwt with consumer keys and with a
//! JWKS document that rotates, and what a broken policy config gets.

use std::time::Duration;

use serde_json::json;
use xgate_tests::{
    doc_server::DocServer,
    http::{send, RawResponse},
    jwt::{jwks, now, SigningKey},
    ports::{any_port, free_port},
    process::{stderr, xgate, Daemon},
    upstream::EchoUpstream,
    TempDir,
};

fn get(path: &str, extra: &[&str]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for line in extra {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

async fn call(listen: std::net::SocketAddr, path: &str, extra: &[&str]) -> RawResponse {
    send(listen, None, &get(path, extra))
        .await
        .expect("an answer")
}

fn headers(r: &RawResponse) -> serde_json::Value {
    r.json()["headers"].clone()
}

/// sha256 of "bob-key-0123456789", as `xgate hash-key` prints it.
fn bob_hash() -> String {
    let out = std::process::Command::new(xgate_tests::process::xgate_bin())
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"bob-key-0123456789\n")?;
            child.wait_with_output()
        })
        .expect("xgate hash-key");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn key_auth_identifies_consumers_and_nobody_can_forge_an_identity() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let hash = bob_hash();
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{hash}");
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             access_log: {{format: json, path: '{{dir}}/access.log'}}\n\
             consumers:\n\
             \x20 - {{username: alice, id: a-1, custom_id: crm-7, groups: [admins, ops], keys: [{{key: alice-key-0123456789}}]}}\n\
             \x20 - {{username: bob, keys: [{{id: bobs-laptop, key_hash: '{hash}'}}]}}\n\
             \x20 - {{username: carol, keys: [{{key: carol-key-0123456789, expires: '2001-01-01T00:00:00Z'}}]}}\n\
             \x20 - {{username: guest}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: api, match: {{path_prefix: /api}}, upstream: u,\n\
             \x20    policies: [{{type: key-auth, key_names: [apikey, x-api-key], in_query: true, hide_credentials: true}}]}}\n\
             \x20 - {{name: open, match: {{path_prefix: /open}}, upstream: u,\n\
             \x20    policies: [{{type: key-auth, anonymous: guest}}]}}\n\
             \x20 - {{name: public, match: {{path_prefix: /}}, upstream: u}}\n",
            upstream.addr
        ),
        None,
    );

    let missing = call(listen, "/api/x", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Key realm=\"xgate\"")
    );
    assert_eq!(missing.json()["message"], "no API key in the request");

    let alice = call(
        listen,
        "/api/x",
        &["apikey: alice-key-0123456789", "X-Consumer-Username: root"],
    )
    .await;
    assert_eq!(alice.status, 200);
    let h = headers(&alice);
    assert_eq!(h["x-consumer-username"], "alice");
    assert_eq!(h["x-consumer-id"], "a-1");
    assert_eq!(h["x-consumer-custom-id"], "crm-7");
    assert_eq!(h["x-consumer-groups"], "admins,ops");
    assert_eq!(h["x-credential-identifier"], "alice:keys[0]");
    assert!(h.get("apikey").is_none(), "hide_credentials: {h}");
    assert!(h.get("x-anonymous-consumer").is_none());

    // A hashed key, in the query: the parameter is taken out, the rest stays.
    let bob = call(listen, "/api/x?a=1&apikey=bob-key-0123456789&b=2", &[]).await;
    assert_eq!(bob.status, 200, "{:?}", bob.body);
    assert_eq!(headers(&bob)["x-consumer-username"], "bob");
    assert_eq!(headers(&bob)["x-credential-identifier"], "bobs-laptop");
    assert_eq!(bob.json()["uri"], "/api/x?a=1&b=2");

    for (what, extra, path) in [
        (
            "a wrong key",
            vec!["apikey: alice-key-0123456780"],
            "/api/x",
        ),
        (
            "an expired key",
            vec!["apikey: carol-key-0123456789"],
            "/api/x",
        ),
        (
            "two keys",
            vec![
                "apikey: alice-key-0123456789",
                "x-api-key: alice-key-0123456789",
            ],
            "/api/x",
        ),
        (
            "a key in the header and the query",
            vec!["apikey: alice-key-0123456789"],
            "/api/x?apikey=alice-key-0123456789",
        ),
    ] {
        let r = call(listen, path, &extra).await;
        assert_eq!(r.status, 401, "{what}");
        assert!(r.header("www-authenticate").is_some(), "{what}");
    }

    // No route lets a client speak for itself.
    let forged = call(
        listen,
        "/x",
        &[
            "X-Consumer-Username: alice",
            "X-Consumer-ID: a-1",
            "X-Credential-Identifier: k",
            "X-Anonymous-Consumer: false",
            "X-Client-Cert-Subject: CN=alice",
        ],
    )
    .await;
    let h = headers(&forged);
    for name in [
        "x-consumer-username",
        "x-consumer-id",
        "x-credential-identifier",
        "x-anonymous-consumer",
        "x-client-cert-subject",
    ] {
        assert!(h.get(name).is_none(), "{name} forged through: {h}");
    }

    let anonymous = call(listen, "/open", &[]).await;
    assert_eq!(anonymous.status, 200);
    assert_eq!(headers(&anonymous)["x-consumer-username"], "guest");
    assert_eq!(headers(&anonymous)["x-anonymous-consumer"], "true");
    let named = call(listen, "/open", &["apikey: alice-key-0123456789"]).await;
    assert_eq!(headers(&named)["x-consumer-username"], "alice");

    let metrics = daemon.admin_get("/metrics");
    for line in [
        "xgate_policy_decisions_total{route=\"api\",policy=\"key-auth\",result=\"allow\"} 2",
        "xgate_policy_decisions_total{route=\"api\",policy=\"key-auth\",result=\"deny\"} 5",
        "xgate_policy_decisions_total{route=\"open\",policy=\"key-auth\",result=\"anonymous\"} 1",
        "xgate_requests_total{route=\"api\",method=\"GET\",status=\"200\",consumer=\"alice\"} 1",
        "xgate_requests_total{route=\"api\",method=\"GET\",status=\"401\",consumer=\"-\"} 5",
        "xgate_requests_total{route=\"open\",method=\"GET\",status=\"200\",consumer=\"guest\"} 1",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    let log_path = daemon.dir.path().join("access.log");
    let mut consumers = Vec::new();
    for _ in 0..100 {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        consumers = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["consumer"].clone())
            .collect();
        if consumers.len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumers[1], "alice", "{consumers:?}");
    assert!(consumers[0].is_null());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let verdicts: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["verdicts"].clone())
        .collect();
    assert_eq!(verdicts[0], json!(["key-auth:deny"]), "{log}");
    assert_eq!(verdicts[1], json!(["key-auth:allow"]), "{log}");
}

#[tokio::test]
async fn jwt_with_consumer_keys_and_a_rotating_jwks() {
    let dir = TempDir::new("jwt");
    let rsa = SigningKey::rsa(dir.path(), "alice-rsa");
    let first = SigningKey::ec(dir.path(), "first");
    let second = SigningKey::ec(dir.path(), "second");
    let idp = DocServer::start(&jwks(&[&first])).await;
    std::fs::write(dir.path().join("alice.pub"), &rsa.public_pem).unwrap();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             consumers:\n\
             \x20 - {{username: alice, jwt: [{{issuer: alice-app, algorithm: RS256, public_key_file: '{}'}}]}}\n\
             \x20 - {{username: svc-billing}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: consumer-keys, match: {{path_prefix: /c}}, upstream: u,\n\
             \x20    policies: [{{type: jwt, audiences: [api], claims_to_headers: {{sub: x-user}}, hide_credentials: true}}]}}\n\
             \x20 - {{name: idp, match: {{path_prefix: /idp}}, upstream: u,\n\
             \x20    policies: [{{type: jwt, issuers: ['https://idp.test'], consumer_claim: client_id,\n\
             \x20      token_sources: [header, 'cookie:session'],\n\
             \x20      jwks: {{url: '{}', refresh_interval: 1h, min_refetch_interval: 1s}}}}]}}\n",
            dir.path().join("alice.pub").display(),
            upstream.addr,
            idp.url("/jwks.json"),
        ),
        None,
    );
    let bearer = |t: &str| format!("Authorization: Bearer {t}");

    // RS256 with alice's own key, found by iss.
    let claims = json!({"iss": "alice-app", "aud": "api", "sub": "u-42", "exp": now() + 300});
    let token = rsa.sign(&claims);
    let r = call(listen, "/c", &[&bearer(&token)]).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(headers(&r)["x-consumer-username"], "alice");
    assert_eq!(headers(&r)["x-user"], "u-42");
    assert!(
        headers(&r).get("authorization").is_none(),
        "hide_credentials"
    );
    // Wrong audience, expired, signed by another key: each a 401 that says
    // why in its challenge.
    for (what, token, error) in [
        (
            "wrong aud",
            rsa.sign(&json!({"iss": "alice-app", "aud": "other", "exp": now() + 300})),
            "wrong audience",
        ),
        (
            "expired",
            rsa.sign(&json!({"iss": "alice-app", "aud": "api", "exp": now() - 3600})),
            "token expired",
        ),
        (
            "foreign key",
            first.sign(&json!({"iss": "alice-app", "aud": "api", "exp": now() + 300})),
            "algorithm not allowed for this key",
        ),
    ] {
        let r = call(listen, "/c", &[&bearer(&token)]).await;
        assert_eq!(r.status, 401, "{what}");
        let challenge = r.header("www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\"") && challenge.contains(error),
            "{what}: {challenge}"
        );
    }

    // JWKS: the provider's first key works; the consumer comes from a claim.
    let idp_claims = json!({"iss": "https://idp.test", "client_id": "svc-billing", "sub": "svc", "exp": now() + 300});
    let r = call(listen, "/idp", &[&bearer(&first.sign(&idp_claims))]).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(headers(&r)["x-consumer-username"], "svc-billing");
    // The same token in a cookie.
    let r = call(
        listen,
        "/idp",
        &[&format!("Cookie: a=b; session={}", first.sign(&idp_claims))],
    )
    .await;
    assert_eq!(r.status, 200);
    let unknown = call(
        listen,
        "/idp",
        &[&bearer(&first.sign(
            &json!({"iss": "https://idp.test", "client_id": "nobody", "exp": now() + 300}),
        ))],
    )
    .await;
    assert_eq!(unknown.status, 401, "a token naming no consumer");

    // Rotation: the provider publishes a second key; a token signed with it
    // is accepted without a restart (one refetch for the unknown kid).
    idp.set(&jwks(&[&first, &second]));
    // (Past min_refetch_interval since the start-up fetch.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fetches = idp.fetches();
    let r = call(listen, "/idp", &[&bearer(&second.sign(&idp_claims))]).await;
    assert_eq!(
        r.status,
        200,
        "rotated key: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(idp.fetches(), fetches + 1);

    // Made-up kids cannot make xgate hammer the provider: at most one fetch
    // per min_refetch_interval, however many arrive.
    let fetches = idp.fetches();
    let stranger = SigningKey::ec(dir.path(), "stranger");
    for _ in 0..20 {
        let r = call(listen, "/idp", &[&bearer(&stranger.sign(&idp_claims))]).await;
        assert_eq!(r.status, 401);
    }
    assert!(
        idp.fetches() <= fetches + 2,
        "{} fetches for 20 unknown kids",
        idp.fetches() - fetches
    );

    // The provider goes down: the last good keys stay.
    idp.set_down(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = call(listen, "/idp", &[&bearer(&stranger.sign(&idp_claims))]).await;
    let r = call(
        listen,
        "/idp",
        &[&bearer(&second.sign(
            &json!({"iss": "https://idp.test", "client_id": "svc-billing", "exp": now() + 301}),
        ))],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "last good keys kept while the JWKS endpoint is down"
    );
}

#[tokio::test]
async fn a_broken_policy_config_is_refused_with_its_path_and_the_old_one_keeps_serving() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let good = format!(
        "listeners: [{{address: '{listen}'}}]\n\
         consumers: [{{username: alice, keys: [{{key: alice-key-0123456789}}]}}]\n\
         upstreams: {{u: {{targets: ['{}']}}}}\n\
         routes: [{{match: {{path_prefix: /}}, upstream: u, policies: [{{type: key-auth}}]}}]\n",
        upstream.addr
    );
    let daemon = Daemon::start(&good, None);
    let bad = good
        .replace("{type: key-auth}", "{type: key-auth, anonymous: nobody}, {type: jwt, token_sources: [body]}")
        .replace("keys: [{key: alice-key-0123456789}]", "keys: [{key: short}], jwt: [{issuer: x, algorithm: RS256, public_key_file: /nonexistent.pem}]");
    let out = daemon.reload_with(&bad);
    assert!(!out.status.success());
    let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    for expected in [
        "routes[0].policies[0].anonymous: 'nobody' is not a consumer's username",
        "routes[0].policies[1].token_sources[0]",
        "consumers[0].keys[0].key: is shorter than 8 characters",
        "consumers[0].jwt[0]: cannot read /nonexistent.pem",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    let r = call(listen, "/", &["apikey: alice-key-0123456789"]).await;
    assert_eq!(r.status, 200, "the old config still serves");

    // `xgate validate` says the same.
    let dir = TempDir::new("validate");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, &bad).unwrap();
    let out = xgate(&["validate", "-c", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("consumers[0].jwt[0]: cannot read /nonexistent.pem"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn acl_admits_by_consumer_group_after_authentication() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             consumers:\n\
             \x20 - {{username: alice, groups: [admins, ops], keys: [{{key: alice-key-0123456789}}]}}\n\
             \x20 - {{username: bob, groups: [users], keys: [{{key: bob-key-0123456789}}]}}\n\
             \x20 - {{username: mallory, groups: [users, banned], keys: [{{key: mallory-key-0123456789}}]}}\n\
             \x20 - {{username: guest, groups: [users]}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: ops, match: {{path_prefix: /ops}}, upstream: u,\n\
             \x20    policies: [{{type: acl, allow: [admins], hide_groups_header: true}}, {{type: key-auth}}]}}\n\
             \x20 - {{name: app, match: {{path_prefix: /app}}, upstream: u,\n\
             \x20    policies: [{{type: key-auth, anonymous: guest}}, {{type: acl, deny: [banned]}}]}}\n",
            upstream.addr
        ),
        None,
    );

    // Declared first, the acl still runs after authentication: a missing
    // key is a 401 with its challenge, not the acl's 403.
    let missing = call(listen, "/ops", &[]).await;
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").is_some());

    let alice = call(listen, "/ops", &["apikey: alice-key-0123456789"]).await;
    assert_eq!(alice.status, 200);
    assert_eq!(headers(&alice)["x-consumer-username"], "alice");
    assert!(
        headers(&alice).get("x-consumer-groups").is_none(),
        "hide_groups_header: {}",
        headers(&alice)
    );
    let bob = call(listen, "/ops", &["apikey: bob-key-0123456789"]).await;
    assert_eq!(bob.status, 403);
    assert_eq!(
        bob.json()["message"],
        "consumer group not allowed on this route"
    );

    let bob = call(listen, "/app", &["apikey: bob-key-0123456789"]).await;
    assert_eq!(bob.status, 200);
    assert_eq!(headers(&bob)["x-consumer-groups"], "users");
    let mallory = call(listen, "/app", &["apikey: mallory-key-0123456789"]).await;
    assert_eq!(mallory.status, 403);
    // The anonymous consumer's groups count like anyone's.
    let guest = call(listen, "/app", &[]).await;
    assert_eq!(guest.status, 200);
    assert_eq!(headers(&guest)["x-consumer-username"], "guest");

    let metrics = daemon.admin_get("/metrics");
    for line in [
        "xgate_policy_decisions_total{route=\"ops\",policy=\"acl\",result=\"allow\"} 1",
        "xgate_policy_decisions_total{route=\"ops\",policy=\"acl\",result=\"deny\"} 1",
        "xgate_policy_decisions_total{route=\"app\",policy=\"acl\",result=\"deny\"} 1",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
}

#[test]
fn an_acl_naming_no_consumer_group_is_refused() {
    let dir = TempDir::new("acl-typo");
    let path = dir.path().join("xgate.yaml");
    std::fs::write(
        &path,
        "listeners: [{address: '127.0.0.1:1'}]\n\
         consumers: [{username: alice, groups: [admins]}]\n\
         upstreams: {u: {targets: ['127.0.0.1:2']}}\n\
         routes:\n\
         \x20 - {match: {path_prefix: /}, upstream: u, policies: [{type: key-auth}, {type: acl, allow: [admin]}]}\n",
    )
    .unwrap();
    let out = xgate(&["-c", path.to_str().unwrap(), "validate"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("routes[0].policies[1].allow[0]")
            && err.contains("'admin' is no consumer's group"),
        "{err}"
    );
}
