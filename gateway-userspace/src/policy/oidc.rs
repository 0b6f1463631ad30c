//! `type: oidc`: access tokens of one OpenID Connect provider, found by
//! discovery. A JWT is verified here like the jwt policy does, with the
//! keys of the discovered `jwks_uri`; an opaque token is asked about at
//! the discovered introspection endpoint (RFC 7662), as this gateway's
//! client, and the answer is cached until the token expires or
//! `cache_ttl` passes, whichever is first. An endpoint that fails makes
//! the provider be discovered again.

use std::sync::Arc;

use base64::{engine::general_purpose::STANDARD, Engine};
use http::{request::Parts, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use super::{
    discovery::Discovery,
    fetch::Fetcher,
    jwks::JwksKeys,
    jwt::{JwtPolicy, Signer, TokenCache, Verified, MAX_TOKEN_BYTES},
    key_auth::unix_now,
    AuthError, Authenticator, Check, Consumers,
};
use crate::{
    config::{self, IntrospectionMode},
    telemetry::Metrics,
};

/// Time a discovery, JWKS fetch or introspection may take (the request
/// waits for an introspection).
const PROVIDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `xgate_oidc_introspections_total{issuer,result}`.
struct Introspections {
    active: Counter,
    inactive: Counter,
    error: Counter,
}

pub struct OidcPolicy {
    /// Finds tokens, verifies JWTs, checks claims, names the consumer.
    jwt: JwtPolicy,
    discovery: Arc<Discovery>,
    fetcher: Fetcher,
    /// `Basic` credentials of `client_id` and its secret; `None`: opaque
    /// tokens cannot be introspected and are refused.
    client: Option<HeaderValue>,
    mode: IntrospectionMode,
    cache_ttl: i64,
    leeway: i64,
    audiences: Vec<String>,
    introspected: TokenCache,
    counters: Introspections,
}

impl OidcPolicy {
    pub fn new(
        config: &config::Oidc,
        consumers: Arc<Consumers>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let fetcher = Fetcher::new(config.ca_file.as_deref(), PROVIDER_TIMEOUT)?;
        let discovery = Arc::new(Discovery::new(
            &config.issuer,
            fetcher.clone(),
            config.min_refetch_interval,
        )?);
        let jwks = JwksKeys::start_discovered(
            discovery.clone(),
            fetcher.clone(),
            config.jwks_refresh_interval,
            config.min_refetch_interval,
        );
        let verifier = config::Jwt {
            token_sources: config.token_sources.clone(),
            jwks: None,
            issuers: vec![config.issuer.clone()],
            audiences: config.audiences.clone(),
            leeway: config.leeway,
            max_lifetime: None,
            required_scopes: config.required_scopes.clone(),
            required_claims: Default::default(),
            claims_to_headers: config.claims_to_headers.clone(),
            consumer_claim: Some(config.consumer_claim.clone()),
            cache_entries: config.cache_entries,
            hide_credentials: config.hide_credentials,
            anonymous: None,
            realm: config.realm.clone(),
        };
        let client = match (
            &config.client_id,
            &config.client_secret,
            &config.client_secret_file,
        ) {
            (Some(id), secret, file) => {
                let secret = match (secret, file) {
                    (Some(secret), _) => secret.clone(),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                    (None, None) => return Err("client_id needs a client secret".into()),
                };
                // RFC 6749 §2.3.1: both are form-encoded before base64.
                let pair = format!("{}:{}", form_encode(id), form_encode(&secret));
                Some(
                    HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(pair)))
                        .map_err(|e| e.to_string())?,
                )
            }
            (None, ..) => None,
        };
        let counter = |result| metrics.oidc_introspection(&config.issuer, result);
        Ok(Self {
            jwt: JwtPolicy::for_provider(&verifier, consumers, jwks, config.consumer_optional),
            discovery,
            fetcher,
            client,
            mode: config.introspection.enabled,
            cache_ttl: config.introspection.cache_ttl.as_secs() as i64,
            leeway: config.leeway.as_secs() as i64,
            audiences: config.audiences.clone(),
            introspected: TokenCache::new(config.cache_entries.max(1)),
            counters: Introspections {
                active: counter("active"),
                inactive: counter("inactive"),
                error: counter("error"),
            },
        })
    }

    /// The provider's answer about `token`, checked; `Err` refuses it.
    async fn introspect(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        let body = match self.call(token).await {
            Ok(body) => body,
            Err(error) => {
                self.counters.error.inc();
                tracing::warn!(issuer = self.discovery.issuer(), %error, "token introspection failed");
                return Err(self.jwt.invalid("the token could not be checked"));
            }
        };
        let claims: Value = match serde_json::from_slice(&body) {
            Ok(claims @ Value::Object(_)) => claims,
            _ => {
                self.counters.error.inc();
                tracing::warn!(
                    issuer = self.discovery.issuer(),
                    "token introspection answered something other than a JSON object"
                );
                return Err(self.jwt.invalid("the token could not be checked"));
            }
        };
        if claims.get("active") != Some(&Value::Bool(true)) {
            self.counters.inactive.inc();
            return Err(self.jwt.invalid("token is not active"));
        }
        self.counters.active.inc();
        self.check_introspected(claims)
    }

    /// What RFC 7662 leaves to the resource server: the token is an
    /// access token of this issuer, for this audience, within its times.
    fn check_introspected(&self, claims: Value) -> Result<Arc<Verified>, AuthError> {
        let now = unix_now();
        if let Some(kind) = claims.get("token_type").and_then(Value::as_str) {
            // A refresh token is "active" too, but it is not for APIs.
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(self.jwt.invalid("not a bearer access token"));
            }
        }
        if let Some(iss) = claims.get("iss") {
            if iss.as_str() != Some(self.discovery.issuer()) {
                return Err(self.jwt.invalid("wrong issuer"));
            }
        }
        let exp = claims.get("exp").and_then(Value::as_i64);
        if exp.is_some_and(|exp| exp.saturating_add(self.leeway) <= now) {
            return Err(self.jwt.invalid("token expired"));
        }
        let nbf = claims.get("nbf").and_then(Value::as_i64);
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(self.jwt.invalid("token not valid yet"));
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => self.audiences.contains(aud),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|aud| self.audiences.iter().any(|a| a == aud)),
                _ => false,
            };
            if !ok {
                return Err(self.jwt.invalid("wrong audience"));
            }
        }
        let mut verified = self.jwt.accept(claims, Signer::Provider)?;
        let until = now.saturating_add(self.cache_ttl);
        verified.exp = exp.map_or(until, |exp| exp.min(until));
        Ok(Arc::new(verified))
    }

    /// POSTs `token` to the introspection endpoint; when that fails, the
    /// provider is discovered again and, if the endpoint moved, asked
    /// once more.
    async fn call(&self, token: &str) -> Result<bytes::Bytes, String> {
        let endpoint = self
            .discovery
            .endpoints()
            .await
            .ok_or("the provider has not been discovered")?
            .introspection_endpoint
            .clone()
            .ok_or("the provider has no introspection_endpoint")?;
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let first = self
            .fetcher
            .post_form(&endpoint, self.client.as_ref(), form.clone())
            .await;
        if first.is_ok() {
            return first;
        }
        self.discovery.rediscover().await;
        match self
            .discovery
            .endpoints()
            .await
            .and_then(|e| e.introspection_endpoint.clone())
            .filter(|moved| *moved != endpoint)
        {
            Some(moved) => {
                self.fetcher
                    .post_form(&moved, self.client.as_ref(), form)
                    .await
            }
            None => first,
        }
    }
}

impl Authenticator for OidcPolicy {
    fn check<'a>(&'a self, parts: &'a mut Parts) -> Check<'a> {
        let (token, source) = match self.jwt.token(parts) {
            Ok(Some((token, source))) => (token.into_owned(), source),
            Ok(None) => return Check::Now(Err(self.jwt.missing())),
            Err(error) => return Check::Now(Err(error)),
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Check::Now(Err(self.jwt.invalid("token too large")));
        }
        // A JWS has dots, the JSON serialization starts with a brace; an
        // opaque token has neither.
        let looks_like_jwt = token.contains('.') || token.starts_with('{');
        let introspect = match self.mode {
            IntrospectionMode::Never => false,
            IntrospectionMode::Auto => !looks_like_jwt && self.client.is_some(),
            IntrospectionMode::Always => self.client.is_some(),
        };
        if !introspect {
            return self.jwt.check(parts);
        }
        if let Some(hit) = self.introspected.get(&token, unix_now()) {
            return Check::Now(self.jwt.grant(parts, &hit, source));
        }
        Check::Later(Box::pin(async move {
            let verified = self.introspect(&token).await?;
            self.introspected.insert(&token, verified.clone());
            self.jwt.grant(parts, &verified, source)
        }))
    }
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy() -> OidcPolicy {
        let config = config::Config::from_yaml(
            "listeners: [{address: '127.0.0.1:1'}]\n\
             consumers: [{username: billing}]\n\
             policy_defaults:\n\
             \x20 policies: [{type: oidc, issuer: 'https://idp.test', audiences: [orders],\n\
             \x20   consumer_claim: client_id, client_id: xgate, client_secret: s,\n\
             \x20   introspection: {cache_ttl: 60s}}]\n",
            "t",
        )
        .unwrap();
        let consumers = Arc::new(Consumers::compile(&config.consumers).unwrap());
        let config::Policy::Oidc(oidc) = &config.policy_defaults.policies[0] else {
            unreachable!()
        };
        OidcPolicy::new(oidc, consumers, &Metrics::default()).unwrap()
    }

    fn answer(extra: serde_json::Value) -> Value {
        let mut claims = json!({"active": true, "iss": "https://idp.test", "aud": "orders",
            "client_id": "billing", "token_type": "Bearer", "exp": unix_now() + 3600});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    }

    #[test]
    fn an_introspection_answer_is_believed_until_exp_or_the_ttl() {
        let policy = policy();
        let now = unix_now();
        let long = policy.check_introspected(answer(json!({}))).unwrap();
        assert!((now + 60..=now + 61).contains(&long.exp), "{}", long.exp);
        let short = policy
            .check_introspected(answer(json!({"exp": now + 30})))
            .unwrap();
        assert_eq!(short.exp, now + 30);
        let consumer = short.consumer.as_ref().unwrap();
        assert_eq!(&*consumer.username, "billing");
    }

    #[test]
    fn active_is_not_enough() {
        let policy = policy();
        let now = unix_now();
        for (what, extra, why) in [
            (
                "refresh token",
                json!({"token_type": "refresh_token"}),
                "not a bearer access token",
            ),
            (
                "other issuer",
                json!({"iss": "https://evil.test"}),
                "wrong issuer",
            ),
            ("expired", json!({"exp": now - 3600}), "token expired"),
            ("not yet", json!({"nbf": now + 3600}), "token not valid yet"),
            ("audience", json!({"aud": ["payments"]}), "wrong audience"),
            ("no audience", json!({"aud": null}), "wrong audience"),
            (
                "stranger",
                json!({"client_id": "stranger"}),
                "token names no known consumer",
            ),
        ] {
            let error = policy.check_introspected(answer(extra)).err();
            assert_eq!(error.map(|e| e.description), Some(why), "{what}");
        }
    }

    #[test]
    fn form_encoding_escapes_what_a_form_cannot_carry() {
        assert_eq!(form_encode("a-b.c_d*9"), "a-b.c_d*9");
        assert_eq!(form_encode("a b&c=d:é"), "a+b%26c%3Dd%3A%C3%A9");
    }
}
