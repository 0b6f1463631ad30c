//! The gateway as an OAuth 2.0 authorization server, on the real binary:
//! tokens from `oauth2_server`'s token endpoint are accepted by xgate's own
//! jwt policy (keys from xgate's own JWKS endpoint), client authentication
//! and grant errors as RFC 6749 has them, refresh tokens that rotate, die
//! when replayed or revoked and outlive a restart, and HTTPS required
//! unless turned off.
//!
//! Every wait is bounded; nothing asserts on elapsed time.

use std::net::SocketAddr;

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine,
};
use serde_json::Value;
use xgate_tests::{
    http::{exchange, form_post, get, send, RawResponse},
    ports::{any_port, free_port},
    process::{stderr, Daemon},
    tls::{connect, ClientOptions, TestCa},
    upstream::EchoUpstream,
};

const ISSUER: &str = "https://gateway.test";
const SVC_SECRET: &str = "svc-secret-0123456789";
/// `poster`'s secret; the config holds only its SHA-256.
const POSTER_SECRET: &str = "poster+secret/0123456789";
const TOKEN: &str = "/oauth2/token";
const REVOKE: &str = "/oauth2/revoke";

/// A plain listener named `plain` (plus `listeners`, YAML items), an echo
/// upstream behind `/api/` guarded by the jwt policy with xgate's own JWKS,
/// two clients of consumer `billing`, and `oauth2_server` with `server`
/// lines added.
fn config(plain: SocketAddr, upstream: SocketAddr, listeners: &str, server: &[&str]) -> String {
    let hash = gateway_userspace::policy::consumers::sha256(POSTER_SECRET.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let server: String = server.iter().map(|l| format!("  {l}\n")).collect();
    format!(
        "listeners:\n  - {{name: plain, address: '{plain}'}}\n{listeners}\
         upstreams:\n  echo: {{targets: ['{upstream}']}}\n\
         routes:\n  \
           - match: {{path_prefix: /api/}}\n    upstream: echo\n    policies:\n      \
             - type: jwt\n        issuers: ['{ISSUER}']\n        audiences: [orders]\n        \
               consumer_claim: sub\n        required_scopes: [read]\n        \
               jwks: {{url: 'http://{plain}/.well-known/jwks.json', min_refetch_interval: 0s}}\n\
         consumers:\n  \
           - username: billing\n    oauth2_clients:\n      \
             - {{client_id: svc, client_secret: '{SVC_SECRET}', scopes: [read, write], refresh: true}}\n      \
             - {{client_id: poster, client_secret_hash: 'sha256:{hash}', scopes: [read]}}\n\
         oauth2_server:\n  issuer: '{ISSUER}'\n  audience: orders\n{server}"
    )
}

/// `Authorization: Basic` for `id:secret`, form-encoded first as RFC 6749
/// §2.3.1 says.
fn basic(id: &str, secret: &str) -> String {
    let encode = |s: &str| {
        s.replace('%', "%25")
            .replace('+', "%2B")
            .replace('/', "%2F")
    };
    format!(
        "Authorization: Basic {}",
        STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
    )
}

async fn post(addr: SocketAddr, path: &str, form: &str, extra: &[&str]) -> RawResponse {
    send(addr, None, &form_post(path, form, extra))
        .await
        .expect("request")
}

/// A token response, checked for what RFC 6749 §5.1 asks of every one.
fn issued(response: &RawResponse) -> Value {
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body = response.json();
    assert_eq!(body["token_type"], "Bearer", "{body}");
    body
}

/// An RFC 6749 §5.2 error, its status and `error` code checked.
fn refused(response: &RawResponse, status: u16, error: &str) {
    assert_eq!(
        response.status,
        status,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["error"], error);
    assert_eq!(response.header("cache-control"), Some("no-store"));
}

async fn client_credentials(addr: SocketAddr, form: &str) -> Value {
    issued(&post(addr, TOKEN, form, &[&basic("svc", SVC_SECRET)]).await)
}

async fn refresh(addr: SocketAddr, token: &str) -> RawResponse {
    post(
        addr,
        TOKEN,
        &format!("grant_type=refresh_token&refresh_token={token}"),
        &[&basic("svc", SVC_SECRET)],
    )
    .await
}

async fn api(addr: SocketAddr, access_token: &str) -> RawResponse {
    get(
        addr,
        "/api/orders",
        &[&format!("Authorization: Bearer {access_token}")],
    )
    .await
}

/// A JWT's header or payload.
fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[tokio::test]
async fn client_credentials_tokens_pass_xgates_own_jwt_policy() {
    let upstream = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let plain = free_port();
    let daemon = Daemon::start(
        &config(plain, upstream.addr, "", &["require_https: false"]),
        None,
    );

    // client_secret_basic; no scope asked: every allowed one.
    let token = client_credentials(plain, "grant_type=client_credentials").await;
    assert_eq!(token["scope"], "read write");
    assert_eq!(token["expires_in"], 3600);
    assert!(
        token.get("refresh_token").is_some(),
        "svc has refresh: true"
    );
    let access = token["access_token"].as_str().unwrap();
    let claims = jwt_part(access, 1);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "billing");
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(claims["aud"], "orders");

    // The JWKS endpoint serves the key the token names.
    let jwks = get(plain, "/.well-known/jwks.json", &[]).await;
    assert_eq!(jwks.status, 200);
    let key = &jwks.json()["keys"][0];
    assert_eq!(key["kid"], jwt_part(access, 0)["kid"]);
    assert_eq!((&key["kty"], &key["alg"]), (&"EC".into(), &"ES256".into()));

    // The jwt policy fetched that JWKS from xgate itself and let the
    // token through, as consumer billing.
    let reply = api(plain, access).await;
    assert_eq!(reply.status, 200, "{}", daemon.log());
    let seen = reply.json();
    assert_eq!(seen["headers"]["x-consumer-username"], "billing", "{seen}");
    assert_eq!(api(plain, "not-a-token").await.status, 401);

    // client_secret_post, with a hashed secret that has '+' and '/' in it.
    let form = format!(
        "grant_type=client_credentials&client_id=poster&client_secret={}",
        POSTER_SECRET.replace('+', "%2B").replace('/', "%2F")
    );
    let poster = issued(&post(plain, TOKEN, &form, &[]).await);
    assert_eq!(poster["scope"], "read");
    assert!(poster.get("refresh_token").is_none(), "refresh is opt-in");
    let reply = api(plain, poster["access_token"].as_str().unwrap()).await;
    assert_eq!(reply.status, 200);

    // Scope `write` only: the route's required `read` is missing.
    let narrow = client_credentials(plain, "grant_type=client_credentials&scope=write").await;
    let reply = api(plain, narrow["access_token"].as_str().unwrap()).await;
    assert_eq!(reply.status, 403);
}

#[tokio::test]
async fn client_authentication_and_grant_errors_follow_rfc_6749() {
    let upstream = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let plain = free_port();
    let _daemon = Daemon::start(
        &config(plain, upstream.addr, "", &["require_https: false"]),
        None,
    );
    let grant = "grant_type=client_credentials";

    for credentials in [
        basic("svc", "wrong-secret-0123456789"),
        basic("nobody", SVC_SECRET),
    ] {
        let reply = post(plain, TOKEN, grant, &[&credentials]).await;
        refused(&reply, 401, "invalid_client");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Basic realm=\"xgate\"")
        );
    }
    let reply = post(plain, TOKEN, grant, &[]).await;
    refused(&reply, 401, "invalid_client");
    assert!(reply.header("www-authenticate").is_some());
    let wrong_post = format!("{grant}&client_id=poster&client_secret=nope");
    refused(
        &post(plain, TOKEN, &wrong_post, &[]).await,
        401,
        "invalid_client",
    );

    let svc = basic("svc", SVC_SECRET);
    let reply = post(
        plain,
        TOKEN,
        "grant_type=password&username=a&password=b",
        &[&svc],
    )
    .await;
    refused(&reply, 400, "unsupported_grant_type");
    let reply = post(plain, TOKEN, &format!("{grant}&scope=read+admin"), &[&svc]).await;
    refused(&reply, 400, "invalid_scope");
    let reply = post(plain, TOKEN, "scope=read", &[&svc]).await;
    refused(&reply, 400, "invalid_request");
    let reply = post(plain, TOKEN, &format!("{grant}&grant_type=x"), &[&svc]).await;
    refused(&reply, 400, "invalid_request");
    // client_credentials for poster, which has no refresh tokens.
    let poster = basic("poster", POSTER_SECRET);
    let reply = post(
        plain,
        TOKEN,
        "grant_type=refresh_token&refresh_token=x",
        &[&poster],
    )
    .await;
    refused(&reply, 400, "unauthorized_client");

    let reply = get(plain, TOKEN, &[]).await;
    refused(&reply, 405, "invalid_request");
    assert_eq!(reply.header("allow"), Some("POST"));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_replay_revokes_the_family() {
    let upstream = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let plain = free_port();
    let daemon = Daemon::start(
        &config(plain, upstream.addr, "", &["require_https: false"]),
        None,
    );
    let first = client_credentials(plain, "grant_type=client_credentials").await;
    let first = first["refresh_token"].as_str().unwrap().to_string();

    let second = issued(&refresh(plain, &first).await);
    let access = second["access_token"].as_str().unwrap();
    assert_eq!(api(plain, access).await.status, 200);
    let second = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(first, second, "a used refresh token is replaced");

    // The used one again: refused, and the one it was replaced by is
    // revoked with it.
    refused(&refresh(plain, &first).await, 400, "invalid_grant");
    refused(&refresh(plain, &second).await, 400, "invalid_grant");
    assert!(
        daemon.log().contains("a used refresh token came again"),
        "{}",
        daemon.log()
    );
}

#[tokio::test]
async fn revoked_refresh_tokens_are_refused() {
    let upstream = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let plain = free_port();
    let daemon = Daemon::start(
        &config(plain, upstream.addr, "", &["require_https: false"]),
        None,
    );
    let svc = basic("svc", SVC_SECRET);
    let token = client_credentials(plain, "grant_type=client_credentials").await;
    let refresh_token = token["refresh_token"].as_str().unwrap();

    // RFC 7009: revoked, answered 200 with nothing to say.
    let form = format!("token={refresh_token}&token_type_hint=refresh_token");
    let reply = post(plain, REVOKE, &form, &[&svc]).await;
    assert_eq!(reply.status, 200);
    refused(&refresh(plain, refresh_token).await, 400, "invalid_grant");
    // An unknown token is no error either; an access token cannot be
    // revoked, and the client is told so.
    assert_eq!(
        post(plain, REVOKE, "token=whatever", &[&svc]).await.status,
        200
    );
    let form = format!("token={}", token["access_token"].as_str().unwrap());
    refused(
        &post(plain, REVOKE, &form, &[&svc]).await,
        400,
        "unsupported_token_type",
    );
    refused(
        &post(plain, REVOKE, "token=x", &[]).await,
        401,
        "invalid_client",
    );

    // The admin's way: every refresh token of a client.
    let a = client_credentials(plain, "grant_type=client_credentials").await;
    let b = client_credentials(plain, "grant_type=client_credentials").await;
    let listed = daemon.cli(&["oauth2", "tokens", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["client_id"], "svc", "{listed}");
    assert_eq!(listed[0]["active"], 2, "{listed}");
    let out = daemon.cli(&["oauth2", "revoke", "svc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for token in [a, b] {
        let reply = refresh(plain, token["refresh_token"].as_str().unwrap()).await;
        refused(&reply, 400, "invalid_grant");
    }
}

#[tokio::test]
async fn tokens_outlive_a_restart() {
    let upstream = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let plain = free_port();
    let yaml = config(plain, upstream.addr, "", &["require_https: false"]);
    let daemon = Daemon::start(&yaml, None);
    let token = client_credentials(plain, "grant_type=client_credentials").await;
    let dir = daemon.stop();

    let daemon = Daemon::start_in_dir(dir, &yaml, None);
    // The access token from before: the generated signing key was kept,
    // so the JWKS after the restart verifies it.
    let reply = api(plain, token["access_token"].as_str().unwrap()).await;
    assert_eq!(reply.status, 200, "{}", daemon.log());
    // The refresh token from before works, once.
    let refresh_token = token["refresh_token"].as_str().unwrap();
    let next = issued(&refresh(plain, refresh_token).await);
    assert_eq!(next["scope"], "read write");
    refused(&refresh(plain, refresh_token).await, 400, "invalid_grant");
}

#[tokio::test]
async fn https_is_required_unless_turned_off() {
    let upstream = EchoUpstream::start(any_port(), "echo").await.unwrap();
    let plain = free_port();
    let secure = free_port();
    let ca = TestCa::new();
    let certs = xgate_tests::TempDir::new("oauth2-certs");
    let leaf = ca.leaf(&["gateway.test"], certs.path(), "gateway");
    let tls_listener = format!(
        "  - name: tls\n    address: '{secure}'\n    tls:\n      certificates:\n        \
         - {{cert: '{}', key: '{}'}}\n",
        leaf.cert.display(),
        leaf.key.display()
    );
    // require_https is the default.
    let _daemon = Daemon::start(&config(plain, upstream.addr, &tls_listener, &[]), None);
    let svc = basic("svc", SVC_SECRET);
    let request = form_post(TOKEN, "grant_type=client_credentials", &[&svc]);

    let reply = send(plain, None, &request).await.unwrap();
    refused(&reply, 400, "invalid_request");
    let reply = post(plain, REVOKE, "token=x", &[&svc]).await;
    refused(&reply, 400, "invalid_request");
    // The key set is public: plain HTTP serves it.
    assert_eq!(get(plain, "/.well-known/jwks.json", &[]).await.status, 200);

    let mut stream = connect(secure, "gateway.test", &ClientOptions::verifying(&ca))
        .await
        .unwrap();
    let token = issued(&exchange(&mut stream, &request).await.unwrap());
    let reply = api(plain, token["access_token"].as_str().unwrap()).await;
    assert_eq!(reply.status, 200);
}
