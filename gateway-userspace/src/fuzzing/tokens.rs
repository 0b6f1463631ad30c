//! Tokens and what carries them: JWTs as the jwt policy checks them, JWKS
//! documents as fetched, the token endpoint's form and client credentials.

use std::sync::{Arc, OnceLock};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use http::{header::AUTHORIZATION, HeaderMap, HeaderValue, Request};

use super::Choices;
use crate::{
    config::{Config, Policy},
    policy::{jwks, jwt::JwtPolicy, Authenticator, Check, Consumers},
    token_server::form::{credentials, Form},
};

/// The one key the fuzzed policy trusts (HS256, a consumer's).
const SECRET: &str = "fuzzing-secret-0123456789abcdef-0123456789";

pub(super) fn policy() -> &'static JwtPolicy {
    static POLICY: OnceLock<JwtPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let config = Config::from_yaml(
            &format!(
                "listeners: [{{address: '127.0.0.1:1'}}]\n\
                 consumers:\n\
                 \x20 - {{username: alice, jwt: [{{issuer: alice-iss, algorithm: HS256, secret: '{SECRET}'}}]}}\n\
                 upstreams: {{u: {{targets: ['127.0.0.1:2']}}}}\n\
                 routes: [{{match: {{path_prefix: /}}, upstream: u, policies: [{{type: jwt, audiences: [api]}}]}}]\n"
            ),
            "fuzz",
        )
        .expect("the fuzzing config is valid");
        let consumers = Arc::new(Consumers::compile(&config.consumers).expect("consumers"));
        let Some(Policy::Jwt(jwt)) = config.routes[0].policies.as_ref().and_then(|p| p.first())
        else {
            unreachable!("the route has a jwt policy")
        };
        JwtPolicy::new(jwt, consumers).expect("jwt policy")
    })
}

/// A bearer token through the jwt policy. First byte even: the rest is the
/// token. Odd: the rest is a JOSE header and claims (JSON, split at the
/// first newline), signed with the trusted key, so the claims checks are
/// reached too. A token accepted must carry `alg: HS256` and a signature
/// that an independent HMAC check confirms.
pub fn jwt(data: &[u8]) {
    let mut choices = Choices::new(data);
    let signed = choices.byte() % 2 == 1;
    let rest = choices.rest();
    let token = if signed {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (header, claims) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = ring::hmac::sign(&key, message.as_bytes());
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    } else {
        match std::str::from_utf8(rest) {
            Ok(token) => token.to_string(),
            Err(_) => return,
        }
    };
    let Ok(value) = HeaderValue::try_from(format!("Bearer {token}")) else {
        return;
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.headers.insert(AUTHORIZATION, value);
    let accepted = match policy().check(&mut parts) {
        Check::Now(result) => result.is_ok(),
        Check::Later(_) => panic!("no JWKS is configured: nothing to wait for"),
    };
    if accepted {
        let pieces: Vec<&str> = token.split('.').collect();
        let [header, _, signature] = pieces[..] else {
            panic!("accepted a token of {} parts", pieces.len())
        };
        // Only `alg`: other members may hold what a strict JSON value
        // refuses (a lone surrogate escape) and the policy ignores.
        #[derive(serde::Deserialize)]
        struct Alg {
            alg: String,
        }
        let header: Alg =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url header"))
                .expect("a JSON header with an alg");
        assert_eq!(header.alg, "HS256", "accepted alg {}", header.alg);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .expect("base64url signature");
        let signed = &token[..token.rfind('.').expect("three parts")];
        assert!(
            ring::hmac::verify(&key, signed.as_bytes(), &signature).is_ok(),
            "accepted a token whose signature does not verify"
        );
    }
}

/// A JWKS document as fetched; every key it yields verifies (or refuses)
/// a signature without panicking.
pub fn jwks(data: &[u8]) {
    let Ok(keys) = jwks::parse(data) else {
        return;
    };
    for key in keys.iter().flat_map(|k| &k.keys) {
        let signature = &data[..data.len().min(512)];
        let _ = key.verify(b"header.claims", signature);
    }
}

/// A token or revocation request: the Authorization header (up to the
/// first newline) and the form body. A parsed form has no parameter twice
/// and none empty.
pub fn token_form(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n');
    let (authorization, body) = match split {
        Some(at) => (Some(&data[..at]), &data[at + 1..]),
        None => (None, data),
    };
    let Ok(form) = Form::parse(body) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(AUTHORIZATION, value);
    }
    if let Ok(found) = credentials(&headers, &form) {
        assert!(!found.secrets.is_empty(), "credentials without a secret");
    }
    for name in ["grant_type", "client_id", "client_secret", "scope", "token"] {
        if let Some(value) = form.get(name) {
            assert!(!value.is_empty(), "{name} kept empty");
        }
    }
}
