use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-secret";

fn policy(extra: &str) -> JwtPolicy {
    let config = config::Config::from_yaml(
        &format!(
            "listeners: [{{address: '127.0.0.1:1'}}]\n\
             consumers:\n\
             \x20 - {{username: alice, jwt: [{{issuer: alice-iss, algorithm: HS256, secret: '{SECRET}'}},\n\
             \x20     {{kid: alice-kid, algorithm: HS256, secret: '{SECRET}'}}]}}\n\
             upstreams: {{u: {{targets: ['127.0.0.1:2']}}}}\n\
             routes: [{{match: {{path_prefix: /}}, upstream: u, policies: [{{type: jwt{extra}}}]}}]\n"
        ),
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let consumers = Arc::new(Consumers::compile(&config.consumers).unwrap());
    let Some(Some(config::Policy::Jwt(jwt))) = config.routes[0]
        .policies
        .as_ref()
        .map(|p| p.first().cloned())
    else {
        unreachable!()
    };
    JwtPolicy::new(&jwt, consumers).unwrap()
}

fn now() -> i64 {
    unix_now()
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn check(policy: &JwtPolicy, token: &str) -> Result<String, &'static str> {
    let (mut parts, ()) = http::Request::builder()
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts();
    let result = match policy.check(&mut parts) {
        Check::Now(Ok(identity)) => Ok(identity.consumer.unwrap().username.to_string()),
        Check::Now(Err(error)) => Err(error.description),
        Check::Later(_) => Err("later"),
    };
    result
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[test]
fn a_valid_token_names_its_consumer() {
    let p = policy("");
    let token = hs256(json!({"iss": "alice-iss", "exp": now() + 60}));
    assert_eq!(check(&p, &token), Ok("alice".into()));
    // Again, from the cache.
    assert_eq!(check(&p, &token), Ok("alice".into()));
}

#[test]
fn attacks_are_refused() {
    let p = policy(", audiences: [api], max_lifetime: 1h");
    let claims = json!({"iss": "alice-iss", "aud": "api", "iat": now(), "exp": now() + 60});
    let good = hs256(claims.clone());
    assert_eq!(check(&p, &good), Ok("alice".into()));
    let [h, c, s]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();

    let none = format!("{}.{c}.", b64(&json!({"alg": "none", "typ": "JWT"})));
    assert_eq!(check(&p, &none), Err("unsigned tokens are not accepted"));
    let tampered_payload = {
        let mut claims = claims.clone();
        claims["iss"] = json!("alice-iss");
        claims["admin"] = json!(true);
        format!("{h}.{}.{s}", b64(&claims))
    };
    assert_eq!(check(&p, &tampered_payload), Err("bad signature"));
    let tampered_header = format!(
        "{}.{c}.{s}",
        b64(&json!({"alg": "HS256", "typ": "JWT", "kid": "x"}))
    );
    assert_eq!(check(&p, &tampered_header), Err("bad signature"));
    let crit = format!("{}.{c}.{s}", b64(&json!({"alg": "HS256", "crit": ["exp"]})));
    assert_eq!(check(&p, &crit), Err("token has critical extensions"));
    let confused = encode(
        &Header::new(Algorithm::HS384),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        check(&p, &confused),
        Err("algorithm not allowed for this key")
    );
    assert_eq!(
        check(&p, "a.b.c.d.e"),
        Err("encrypted tokens (JWE) are not accepted")
    );
    assert_eq!(
        check(&p, "{\"payload\":\"x\"}"),
        Err("JWS JSON serialization is not accepted")
    );
    assert_eq!(check(&p, "garbage"), Err("malformed token"));
    assert_eq!(
        check(&p, &"x".repeat(MAX_TOKEN_BYTES + 1)),
        Err("token too large")
    );

    let with = |patch: serde_json::Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs256(c)
    };
    assert_eq!(
        check(&p, &with(json!({"exp": now() - 3600}))),
        Err("token expired")
    );
    assert_eq!(
        check(&p, &with(json!({"nbf": now() + 3600}))),
        Err("token not valid yet")
    );
    assert_eq!(
        check(&p, &with(json!({"aud": "other"}))),
        Err("wrong audience")
    );
    assert_eq!(
        check(&p, &with(json!({"exp": now() + 7200}))),
        Err("token lifetime too long")
    );
    assert_eq!(
        check(&p, &with(json!({"iss": "mallory"}))),
        Err("no key for this token")
    );
    let no_exp = hs256(json!({"iss": "alice-iss", "aud": "api", "iat": now()}));
    assert_eq!(check(&p, &no_exp), Err("token lacks a required claim"));
}

#[test]
fn configured_issuers_and_audiences_must_be_in_the_token() {
    // jsonwebtoken checks iss and aud only when the token has them.
    let p = policy(", issuers: [alice-iss], audiences: [api]");
    let by_kid = |claims: serde_json::Value| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("alice-kid".into());
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let exp = now() + 60;
    assert_eq!(
        check(
            &p,
            &by_kid(json!({"iss": "alice-iss", "aud": "api", "exp": exp}))
        ),
        Ok("alice".into())
    );
    for (what, claims, why) in [
        (
            "no iss",
            json!({"aud": "api", "exp": exp}),
            "token lacks a required claim",
        ),
        (
            "no aud",
            json!({"iss": "alice-iss", "exp": exp}),
            "token lacks a required claim",
        ),
        (
            "iss list",
            json!({"iss": ["alice-iss", "evil"], "aud": "api", "exp": exp}),
            "wrong issuer",
        ),
    ] {
        assert_eq!(check(&p, &by_kid(claims)), Err(why), "{what}");
    }
}

#[test]
fn leeway_scopes_and_claims() {
    let p = policy(", leeway: 30s, required_scopes: [read], required_claims: {tier: gold}");
    let token = |extra: serde_json::Value| {
        let mut c =
            json!({"iss": "alice-iss", "exp": now() - 10, "scope": "read write", "tier": "gold"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs256(c)
    };
    assert_eq!(
        check(&p, &token(json!({}))),
        Ok("alice".into()),
        "within the leeway"
    );
    assert_eq!(
        check(&p, &token(json!({"scope": "write"}))),
        Err("missing scope")
    );
    assert_eq!(
        check(&p, &token(json!({"scp": ["read"], "scope": ""}))),
        Ok("alice".into())
    );
    assert_eq!(
        check(&p, &token(json!({"tier": "silver"}))),
        Err("a required claim is missing or wrong")
    );
}

#[test]
fn a_missing_token_gets_a_challenge_without_an_error_code() {
    let p = policy(", realm: api");
    let (mut parts, ()) = http::Request::new(()).into_parts();
    let Check::Now(Err(error)) = p.check(&mut parts) else {
        panic!("refused at once")
    };
    assert_eq!(error.challenge, "Bearer realm=\"api\"");
    assert!(!error.presented);
    let Check::Now(Err(error)) = p.check(&mut {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts
            .headers
            .insert("authorization", "Bearer x.y.z".parse().unwrap());
        parts
    }) else {
        panic!("refused at once")
    };
    assert_eq!(
        error.challenge,
        "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"malformed token\""
    );
}

#[test]
fn jwks_keys_are_pinned_by_type_and_alg() {
    // An EC key may only verify ES256; an `oct` key in a public document is
    // never used.
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "P-256", "kid": "ec",
         "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty": "RSA", "kid": "rsa-ps", "alg": "PS256", "e": "AQAB",
         "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    ]});
    let keys = super::super::jwks::parse(doc.to_string().as_bytes()).unwrap();
    let kinds: Vec<_> = keys
        .iter()
        .map(|k| {
            let algorithms: Vec<_> = k.keys.iter().map(|key| key.algorithm()).collect();
            (k.kid.clone().unwrap(), algorithms)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("ec".to_string(), vec![Algorithm::ES256]),
            ("rsa-ps".to_string(), vec![Algorithm::PS256]),
        ]
    );
    assert!(super::super::jwks::parse(b"{\"nokeys\": 1}").is_err());
}
