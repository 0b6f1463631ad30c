//! The oidc policy end to end against real third-party OpenID providers on
//! loopback (see `xgate_tests::idp`): oauth2-mock-server for discovery,
//! JWKS and RS256 tokens; oidc-provider for opaque tokens and introspection.

use serde_json::json;
use xgate_tests::{
    doc_server::DocServer,
    http::{send, RawResponse},
    idp::Idp,
    ports::{any_port, free_port},
    process::Daemon,
    upstream::EchoUpstream,
    TempDir,
};

async fn call(listen: std::net::SocketAddr, path: &str, token: Option<&str>) -> RawResponse {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    send(
        listen,
        None,
        &format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n{auth}\r\n"),
    )
    .await
    .expect("an answer")
}

fn headers(r: &RawResponse) -> serde_json::Value {
    r.json()["headers"].clone()
}

fn body(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The refusal says why in its challenge.
fn assert_refused(r: &RawResponse, why: &str) {
    assert_eq!(r.status, 401, "{why}: {}", body(r));
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains(why),
        "expected `{why}` in: {challenge}"
    );
}

/// A client_credentials token of oauth2-mock-server.
async fn token(idp: &Idp, form: &str) -> String {
    idp.client_credentials(None, form).await
}

/// `xgate_oidc_introspections_total{issuer,result}`, 0 when not yet seen.
fn introspections(daemon: &Daemon, issuer: &str, result: &str) -> u64 {
    let metrics = daemon.admin_get("/metrics");
    let prefix =
        format!("xgate_oidc_introspections_total{{issuer=\"{issuer}\",result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a counter value"))
}

#[tokio::test]
async fn discovered_keys_verify_a_providers_jwts_and_a_claim_names_the_consumer() {
    let idp = Idp::oauth2_mock_server().await;
    let other = Idp::oauth2_mock_server().await;
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let oidc = format!(
        "type: oidc, issuer: '{}', audiences: [orders], required_scopes: [orders:read], \
         claims_to_headers: {{scope: x-scope}}, hide_credentials: true",
        idp.issuer()
    );
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             consumers: [{{username: orders-svc}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: api, match: {{path_prefix: /api}}, upstream: u, policies: [{{{oidc}}}]}}\n\
             \x20 - {{name: open, match: {{path_prefix: /open}}, upstream: u,\n\
             \x20    policies: [{{{oidc}, consumer_optional: true}}]}}\n",
            upstream.addr
        ),
        None,
    );
    let good = token(&idp, "client_id=orders-svc&aud=orders&scope=orders:read").await;
    let r = call(listen, "/api", Some(&good)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let h = headers(&r);
    assert_eq!(h["x-consumer-username"], "orders-svc");
    assert_eq!(h["x-credential-identifier"], "orders-svc");
    assert_eq!(h["x-scope"], "orders:read");
    assert!(h.get("authorization").is_none(), "hide_credentials: {h}");

    let missing = call(listen, "/api", None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"xgate\"")
    );

    let wrong_aud = token(&idp, "client_id=orders-svc&aud=payments&scope=orders:read").await;
    assert_refused(
        &call(listen, "/api", Some(&wrong_aud)).await,
        "wrong audience",
    );
    let no_aud = token(&idp, "client_id=orders-svc&scope=orders:read").await;
    assert_refused(
        &call(listen, "/api", Some(&no_aud)).await,
        "token lacks a required claim",
    );
    // Another provider's token: its key is not in this issuer's JWKS.
    let foreign = token(&other, "client_id=orders-svc&aud=orders&scope=orders:read").await;
    assert_refused(
        &call(listen, "/api", Some(&foreign)).await,
        "no key for this token",
    );
    let stranger = token(&idp, "client_id=stranger&aud=orders&scope=orders:read").await;
    assert_refused(
        &call(listen, "/api", Some(&stranger)).await,
        "token names no known consumer",
    );
    // consumer_optional: through without a consumer, the claim identifying
    // the caller.
    let r = call(listen, "/open", Some(&stranger)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(headers(&r).get("x-consumer-username").is_none());
    assert_eq!(headers(&r)["x-credential-identifier"], "stranger");

    let no_scope = token(&idp, "client_id=orders-svc&aud=orders&scope=orders:write").await;
    let r = call(listen, "/api", Some(&no_scope)).await;
    assert_eq!(r.status, 403, "{}", body(&r));
    assert!(r
        .header("www-authenticate")
        .is_some_and(|c| c.contains("insufficient_scope")));
    // An opaque token, and no client to introspect it with.
    assert_refused(
        &call(listen, "/api", Some("an-opaque-token")).await,
        "malformed token",
    );
}

#[tokio::test]
async fn tokens_whose_issuer_is_not_the_configured_one_are_refused() {
    // The provider's keys are published under a discovery document naming
    // issuer X, but the tokens name issuer Y: the keys verify them, the
    // issuer check must not.
    let doc = DocServer::start("{}").await;
    let idp = Idp::oauth2_mock_server_for("https://elsewhere.test").await;
    doc.set(
        &json!({"issuer": doc.url(""), "jwks_uri": format!("{}/jwks", idp.issuer())}).to_string(),
    );
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: api, match: {{path_prefix: /}}, upstream: u,\n\
             \x20    policies: [{{type: oidc, issuer: '{}', consumer_optional: true}}]}}\n",
            upstream.addr,
            doc.url(""),
        ),
        None,
    );
    let token = idp.client_credentials(None, "client_id=svc").await;
    assert_refused(&call(listen, "/", Some(&token)).await, "wrong issuer");
}

#[tokio::test]
async fn when_the_keys_move_the_provider_is_discovered_again() {
    let doc = DocServer::start("{}").await;
    let issuer = doc.url("");
    let first = Idp::oauth2_mock_server_for(&issuer).await;
    let point_at = |idp: &Idp| {
        json!({"issuer": issuer, "jwks_uri": format!("{}/jwks", idp.issuer())}).to_string()
    };
    doc.set(&point_at(&first));
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: api, match: {{path_prefix: /}}, upstream: u,\n\
             \x20    policies: [{{type: oidc, issuer: '{issuer}', consumer_optional: true,\n\
             \x20      jwks_refresh_interval: 1h, min_refetch_interval: 0s}}]}}\n",
            upstream.addr,
        ),
        None,
    );
    let token = first.client_credentials(None, "client_id=svc").await;
    let r = call(listen, "/", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let discoveries = doc.fetches();

    // The provider moves: new keys at a new place, the old place gone.
    let mut first = first;
    first.kill();
    let second = Idp::oauth2_mock_server_for(&issuer).await;
    doc.set(&point_at(&second));
    let token = second.client_credentials(None, "client_id=svc").await;
    let r = call(listen, "/", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(
        doc.fetches() > discoveries,
        "discovery was not fetched again"
    );
}

/// The oidc-provider config of these tests: introspection as the client
/// `xgate`, the consumer named by `client_id`.
fn introspecting(issuer: &str, secret: &str, ttl: &str) -> String {
    format!(
        "type: oidc, issuer: '{issuer}', consumer_claim: client_id, \
         required_scopes: [orders:read], client_id: xgate, {secret}, \
         introspection: {{enabled: auto, cache_ttl: {ttl}}}"
    )
}

#[tokio::test]
async fn opaque_tokens_are_introspected_once_and_inactive_ones_refused() {
    let idp = Idp::oidc_provider().await;
    let issuer = idp.issuer();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let dir = TempDir::new("oidc");
    std::fs::write(dir.path().join("secret"), "xgate-introspection-secret\n").unwrap();
    let daemon = Daemon::start_in_dir(
        dir,
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             consumers: [{{username: billing}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: api, match: {{path_prefix: /api}}, upstream: u,\n\
             \x20    policies: [{{{}}}]}}\n\
             \x20 - {{name: badclient, match: {{path_prefix: /bad}}, upstream: u,\n\
             \x20    policies: [{{{}}}]}}\n",
            upstream.addr,
            introspecting(&issuer, "client_secret_file: '{dir}/secret'", "5m"),
            introspecting(&issuer, "client_secret: not-the-secret", "5m"),
        ),
        None,
    );
    let token = idp
        .client_credentials(Some("billing:billing-client-secret"), "scope=orders:read")
        .await;
    assert!(!token.contains('.'), "an opaque token: {token}");

    let r = call(listen, "/api", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(headers(&r)["x-consumer-username"], "billing");
    assert_eq!(introspections(&daemon, &issuer, "active"), 1);
    // The same token again: answered from the cache.
    let r = call(listen, "/api", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(introspections(&daemon, &issuer, "active"), 1);

    assert_refused(
        &call(listen, "/api", Some("made-up-opaque-token")).await,
        "token is not active",
    );
    let revoked = idp
        .client_credentials(Some("billing:billing-client-secret"), "scope=orders:read")
        .await;
    let r = idp
        .post_form(
            "/token/revocation",
            Some("billing:billing-client-secret"),
            &format!("token={revoked}"),
        )
        .await;
    assert_eq!(r.status, 200, "revocation: {}", body(&r));
    assert_refused(
        &call(listen, "/api", Some(&revoked)).await,
        "token is not active",
    );
    assert_eq!(introspections(&daemon, &issuer, "inactive"), 2);

    // The provider refuses a gateway that cannot authenticate itself.
    assert_refused(
        &call(listen, "/bad", Some(&token)).await,
        "the token could not be checked",
    );
    assert_eq!(introspections(&daemon, &issuer, "error"), 1);
}

#[tokio::test]
async fn while_the_provider_is_down_cached_answers_serve_until_their_ttl() {
    let mut idp = Idp::oidc_provider().await;
    let issuer = idp.issuer();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             consumers: [{{username: billing}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: api, match: {{path_prefix: /}}, upstream: u, policies: [{{{}}}]}}\n",
            upstream.addr,
            introspecting(&issuer, "client_secret: xgate-introspection-secret", "4s"),
        ),
        None,
    );
    let credentials = Some("billing:billing-client-secret");
    let cached = idp
        .client_credentials(credentials, "scope=orders:read")
        .await;
    let fresh = idp
        .client_credentials(credentials, "scope=orders:read")
        .await;
    let r = call(listen, "/", Some(&cached)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let introspected_at = std::time::Instant::now();

    idp.kill();
    let r = call(listen, "/", Some(&cached)).await;
    assert_eq!(r.status, 200, "a cached answer: {}", body(&r));
    assert_refused(
        &call(listen, "/", Some(&fresh)).await,
        "the token could not be checked",
    );
    assert_eq!(introspections(&daemon, &issuer, "active"), 1);
    assert_eq!(introspections(&daemon, &issuer, "error"), 1);

    // Past cache_ttl the answer is no longer believed.
    tokio::time::sleep(std::time::Duration::from_secs(5).saturating_sub(introspected_at.elapsed()))
        .await;
    assert_refused(
        &call(listen, "/", Some(&cached)).await,
        "the token could not be checked",
    );
}

#[tokio::test]
async fn when_the_introspection_endpoint_moves_the_provider_is_discovered_again() {
    let doc = DocServer::start("{}").await;
    let issuer = doc.url("");
    let idp = Idp::oidc_provider_for(&issuer).await;
    let gone = free_port();
    let point_at = |addr: std::net::SocketAddr| {
        json!({"issuer": issuer, "introspection_endpoint": format!("http://{addr}/token/introspection")})
            .to_string()
    };
    doc.set(&point_at(gone));
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             consumers: [{{username: billing}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: api, match: {{path_prefix: /}}, upstream: u,\n\
             \x20    policies: [{{{}, min_refetch_interval: 0s}}]}}\n",
            upstream.addr,
            introspecting(&issuer, "client_secret: xgate-introspection-secret", "5m"),
        ),
        None,
    );
    let token = idp
        .client_credentials(Some("billing:billing-client-secret"), "scope=orders:read")
        .await;
    assert_refused(
        &call(listen, "/", Some(&token)).await,
        "the token could not be checked",
    );
    let discoveries = doc.fetches();

    // The document now names the live endpoint: the failing call makes
    // xgate discover again and ask there.
    doc.set(&point_at(idp.addr));
    let r = call(listen, "/", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(headers(&r)["x-consumer-username"], "billing");
    assert!(
        doc.fetches() > discoveries,
        "discovery was not fetched again"
    );
    assert_eq!(introspections(&daemon, &issuer, "active"), 1);
}
