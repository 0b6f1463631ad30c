//! `type: jwt`: a JSON Web Token (JWS compact form) from the Authorization
//! header, a query parameter or a cookie, verified with a consumer's key
//! (found by `kid` or `iss`) or a key of a JWKS document. Every key is
//! pinned to one algorithm; `alg: none`, JWE, the JSON serialization and
//! `crit` extensions are refused. Verified tokens are cached until they
//! expire, so a client reusing one pays no signature check per request.

use std::{
    borrow::Cow,
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use http::{header, request::Parts, HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;

use super::{
    fetch::Fetcher,
    jwks::JwksKeys,
    key_auth::{remove_query_param, unix_now},
    AuthError, AuthResult, Authenticator, Check, Consumer, Consumers, Identity,
};
use crate::{config, jws::VerifyingKey};

/// Longer tokens are refused unread: a JWT in a header is rarely past 4
/// KiB, and an attacker's 1 MB "token" should cost nothing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Time a JWKS fetch may take (the request waits for it on an unknown kid).
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CACHE_SHARDS: usize = 16;

/// Where a token may be.
enum Source {
    Bearer,
    Query(String),
    Cookie(String),
}

pub struct JwtPolicy {
    sources: Vec<Source>,
    consumers: Arc<Consumers>,
    jwks: Option<Arc<JwksKeys>>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: u64,
    max_lifetime: Option<u64>,
    required_scopes: Vec<String>,
    required_claims: Vec<(String, Value)>,
    claims_to_headers: Vec<(String, HeaderName)>,
    consumer_claim: Option<String>,
    /// A token whose `consumer_claim` names no consumer goes on without
    /// one (oidc's `consumer_optional`); the jwt policy refuses it.
    consumer_optional: bool,
    /// Whether consumers' own keys verify tokens (not for oidc: only the
    /// provider's keys may sign for it).
    consumer_keys: bool,
    hide: bool,
    cache: Option<TokenCache>,
    realm: String,
}

/// A key that may have signed a token, pinned to its algorithm.
enum KeySource {
    Consumer(Arc<super::consumers::JwtKeyOwner>),
    Jwks(Arc<VerifyingKey>),
}

impl KeySource {
    fn key(&self) -> &VerifyingKey {
        match self {
            KeySource::Consumer(owner) => &owner.key,
            KeySource::Jwks(key) => key,
        }
    }
}

/// Who signed a verified token: a consumer's key names the consumer; a
/// provider's (JWKS, introspection) leaves it to a claim.
pub(super) enum Signer {
    Consumer(Arc<super::consumers::JwtKeyOwner>),
    Provider,
}

impl JwtPolicy {
    pub fn new(config: &config::Jwt, consumers: Arc<Consumers>) -> Result<Self, String> {
        let jwks = config
            .jwks
            .as_ref()
            .map(|j| {
                let fetcher = Fetcher::new(j.ca_file.as_deref(), JWKS_FETCH_TIMEOUT)?;
                JwksKeys::start(j, fetcher)
            })
            .transpose()?;
        Ok(Self::build(config, consumers, jwks))
    }

    /// The verifier of an OpenID provider's JWTs (oidc): only `jwks`
    /// verifies, never a consumer's key.
    pub(super) fn for_provider(
        config: &config::Jwt,
        consumers: Arc<Consumers>,
        jwks: Arc<JwksKeys>,
        consumer_optional: bool,
    ) -> Self {
        let mut policy = Self::build(config, consumers, Some(jwks));
        policy.consumer_keys = false;
        policy.consumer_optional = consumer_optional;
        policy
    }

    fn build(config: &config::Jwt, consumers: Arc<Consumers>, jwks: Option<Arc<JwksKeys>>) -> Self {
        Self {
            sources: config
                .token_sources
                .iter()
                .map(|s| {
                    if let Some(name) = s.strip_prefix("query:") {
                        Source::Query(name.to_string())
                    } else if let Some(name) = s.strip_prefix("cookie:") {
                        Source::Cookie(name.to_string())
                    } else {
                        Source::Bearer
                    }
                })
                .collect(),
            consumers,
            jwks,
            issuers: config.issuers.clone(),
            audiences: config.audiences.clone(),
            leeway: config.leeway.as_secs(),
            max_lifetime: config.max_lifetime.map(|d| d.as_secs()),
            required_scopes: config.required_scopes.clone(),
            required_claims: config
                .required_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            claims_to_headers: config
                .claims_to_headers
                .iter()
                .map(|(claim, header)| {
                    (
                        claim.clone(),
                        HeaderName::from_bytes(header.as_bytes()).expect("validated header name"),
                    )
                })
                .collect(),
            consumer_claim: config.consumer_claim.clone(),
            consumer_optional: false,
            consumer_keys: true,
            hide: config.hide_credentials,
            cache: (config.cache_entries > 0).then(|| TokenCache::new(config.cache_entries)),
            realm: config.realm.clone(),
        }
    }

    fn challenge(&self, error: Option<&str>, description: Option<&str>) -> HeaderValue {
        let mut text = format!("Bearer realm=\"{}\"", self.realm);
        if let Some(error) = error {
            text.push_str(&format!(", error=\"{error}\""));
        }
        if let Some(description) = description {
            text.push_str(&format!(", error_description=\"{description}\""));
        }
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("Bearer"))
    }

    /// RFC 6750 §3.1: no error code when no token came.
    pub(super) fn missing(&self) -> AuthError {
        AuthError {
            status: StatusCode::UNAUTHORIZED,
            challenge: self.challenge(None, None),
            description: "no bearer token in the request",
            presented: false,
        }
    }

    pub(super) fn invalid(&self, description: &'static str) -> AuthError {
        AuthError {
            status: StatusCode::UNAUTHORIZED,
            challenge: self.challenge(Some("invalid_token"), Some(description)),
            description,
            presented: true,
        }
    }

    /// The request's token and where it was; `Err` when it carries more
    /// than one.
    /// (Borrowed from the request where it can be: a cached token is then
    /// never copied.)
    pub(super) fn token<'p>(
        &self,
        parts: &'p Parts,
    ) -> Result<Option<(Cow<'p, str>, usize)>, AuthError> {
        let mut found = None;
        for (i, source) in self.sources.iter().enumerate() {
            let candidate = match source {
                Source::Bearer => {
                    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
                    let first = values.next();
                    if values.next().is_some() {
                        return Err(self.invalid("more than one Authorization header"));
                    }
                    first
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| {
                            let (scheme, token) = v.split_once(' ')?;
                            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                        })
                        .map(Cow::Borrowed)
                }
                Source::Query(name) => parts.uri.query().and_then(|q| {
                    q.split('&')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| super::key_auth::percent_decode(v))
                        .and_then(|v| String::from_utf8(v).ok())
                        .map(Cow::Owned)
                }),
                Source::Cookie(name) => parts
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|c| c.trim().split_once('='))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| Cow::Borrowed(v)),
            };
            if let Some(token) = candidate {
                if found.is_some() {
                    return Err(self.invalid("more than one token in the request"));
                }
                found = Some((token, i));
            }
        }
        Ok(found)
    }

    fn hide_token(&self, parts: &mut Parts, source: usize) {
        if !self.hide {
            return;
        }
        match &self.sources[source] {
            Source::Bearer => {
                parts.headers.remove(header::AUTHORIZATION);
            }
            Source::Query(name) => remove_query_param(parts, name),
            // Cookies are a list: only the token's cookie goes.
            Source::Cookie(name) => {
                let kept: Vec<String> = parts
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .map(str::trim)
                    .filter(|c| c.split_once('=').is_none_or(|(k, _)| k != name))
                    .map(str::to_string)
                    .collect();
                parts.headers.remove(header::COOKIE);
                if !kept.is_empty() {
                    if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                        parts.headers.insert(header::COOKIE, v);
                    }
                }
            }
        }
    }

    /// Verifies `token` with the keys it names; `Ok(None)`: no key known
    /// for it (a JWKS refetch may help).
    fn verify(&self, token: &str) -> Result<Option<Verified>, AuthError> {
        let (header, _) = split(token).map_err(|d| self.invalid(d))?;
        let header = decode_part(header).map_err(|d| self.invalid(d))?;
        let jws = Jws::parse(token, &header).map_err(|d| self.invalid(d))?;
        let alg: Algorithm = jws
            .header
            .alg
            .parse()
            .map_err(|_| self.invalid("unsupported algorithm"))?;
        let kid = jws.header.kid.as_deref();
        let issuer = jws.claims.get("iss").and_then(Value::as_str);
        let owners = if self.consumer_keys {
            self.consumers.jwt_keys(kid, issuer)
        } else {
            &[]
        };
        let mut keys: Vec<KeySource> = owners
            .iter()
            .filter(|k| k.key.algorithm() == alg)
            .map(|k| KeySource::Consumer(k.clone()))
            .collect();
        if keys.is_empty() {
            if !owners.is_empty() {
                // A key was found, but for another algorithm: the classic
                // confusion (an HS token "signed" with an RSA public key).
                return Err(self.invalid("algorithm not allowed for this key"));
            }
            if let Some(jwks) = &self.jwks {
                keys.extend(jwks.find(kid, alg).into_iter().map(KeySource::Jwks));
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        // The signature first: nothing about the claims of a token no key
        // signed is told.
        let signer = keys
            .into_iter()
            .find(|key| key.key().verify(jws.signed.as_bytes(), &jws.signature))
            .ok_or_else(|| self.invalid("bad signature"))?;
        self.check_claims(&jws.claims)?;
        let signer = match signer {
            KeySource::Consumer(owner) => Signer::Consumer(owner),
            KeySource::Jwks(_) => Signer::Provider,
        };
        self.accept(jws.claims, signer).map(Some)
    }

    /// The registered claims (RFC 7519 §4.1): `exp` always required, `nbf`
    /// when present, `iss` and `aud` required when configured. Times allow
    /// `leeway` seconds of clock skew.
    fn check_claims(&self, claims: &Value) -> Result<(), AuthError> {
        let now = unix_now() as f64;
        let leeway = self.leeway as f64;
        let numeric_date = |name: &str| -> Result<Option<f64>, AuthError> {
            claims
                .get(name)
                .map(|v| v.as_f64().ok_or_else(|| self.invalid("invalid token")))
                .transpose()
        };
        let exp =
            numeric_date("exp")?.ok_or_else(|| self.invalid("token lacks a required claim"))?;
        if exp < now - leeway {
            return Err(self.invalid("token expired"));
        }
        if numeric_date("nbf")?.is_some_and(|nbf| nbf > now + leeway) {
            return Err(self.invalid("token not valid yet"));
        }
        if !self.issuers.is_empty() {
            // An issuer is one string (RFC 7519 §4.1.1), never a list.
            match claims.get("iss") {
                None => return Err(self.invalid("token lacks a required claim")),
                Some(Value::String(iss)) if self.issuers.iter().any(|i| i == iss) => {}
                Some(_) => return Err(self.invalid("wrong issuer")),
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |aud: &Value| {
                aud.as_str()
                    .is_some_and(|aud| self.audiences.iter().any(|a| a == aud))
            };
            match claims.get("aud") {
                None => return Err(self.invalid("token lacks a required claim")),
                Some(aud @ Value::String(_)) if accepted(aud) => {}
                Some(Value::Array(auds)) if auds.iter().any(accepted) => {}
                Some(_) => return Err(self.invalid("wrong audience")),
            }
        }
        Ok(())
    }

    /// The checks past the signature (or the introspection), and who the
    /// token names.
    pub(super) fn accept(&self, claims: Value, signer: Signer) -> Result<Verified, AuthError> {
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if let Some(max) = self.max_lifetime {
            let start = claims
                .get("iat")
                .and_then(Value::as_i64)
                .ok_or_else(|| self.invalid("token has no iat"))?;
            if exp.saturating_sub(start) > max as i64 {
                return Err(self.invalid("token lifetime too long"));
            }
        }
        for (name, wanted) in &self.required_claims {
            if claims.get(name) != Some(wanted) {
                return Err(self.invalid("a required claim is missing or wrong"));
            }
        }
        if !self.required_scopes.is_empty() {
            let scopes = scopes(&claims);
            if !self
                .required_scopes
                .iter()
                .all(|s| scopes.contains(&s.as_str()))
            {
                return Err(AuthError {
                    status: StatusCode::FORBIDDEN,
                    challenge: self.challenge(Some("insufficient_scope"), Some("missing scope")),
                    description: "missing scope",
                    presented: true,
                });
            }
        }
        let (consumer, credential) = match signer {
            Signer::Consumer(owner) => (Some(owner.consumer.clone()), owner.credential.clone()),
            Signer::Provider => {
                let consumer = match &self.consumer_claim {
                    Some(claim) => {
                        let name = claims.get(claim).and_then(Value::as_str).unwrap_or("");
                        match self.consumers.by_username(name) {
                            Some(consumer) => Some(consumer.clone()),
                            None if self.consumer_optional => None,
                            None => return Err(self.invalid("token names no known consumer")),
                        }
                    }
                    None => None,
                };
                let credential = claims
                    .get("sub")
                    .or_else(|| claims.get("client_id"))
                    .and_then(Value::as_str)
                    .and_then(|s| HeaderValue::from_str(s).ok())
                    .unwrap_or(HeaderValue::from_static("jwt"));
                (consumer, credential)
            }
        };
        let headers = self
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| {
                let value = match claims.get(claim)? {
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                Some((header.clone(), HeaderValue::from_str(&value).ok()?))
            })
            .collect();
        Ok(Verified {
            exp,
            consumer,
            credential,
            headers,
        })
    }

    pub(super) fn grant(
        &self,
        parts: &mut Parts,
        verified: &Verified,
        source: usize,
    ) -> AuthResult {
        for (name, _) in &self.claims_to_headers {
            parts.headers.remove(name);
        }
        for (name, value) in &verified.headers {
            parts.headers.insert(name, value.clone());
        }
        self.hide_token(parts, source);
        Ok(Identity {
            consumer: verified.consumer.clone(),
            credential: Some(verified.credential.clone()),
            anonymous: false,
        })
    }

    fn check_now(&self, parts: &mut Parts) -> Result<AuthResult, (String, usize)> {
        let (token, source) = match self.token(parts) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Err(self.missing())),
            Err(error) => return Ok(Err(error)),
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Ok(Err(self.invalid("token too large")));
        }
        let now = unix_now();
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&token, now)) {
            return Ok(self.grant(parts, &hit, source));
        }
        let token = token.into_owned();
        match self.verify(&token) {
            Ok(Some(verified)) => {
                let verified = Arc::new(verified);
                if let Some(cache) = &self.cache {
                    cache.insert(&token, verified.clone());
                }
                Ok(self.grant(parts, &verified, source))
            }
            Ok(None) if self.jwks.is_some() => Err((token, source)),
            Ok(None) => Ok(Err(self.invalid("no key for this token"))),
            Err(error) => Ok(Err(error)),
        }
    }
}

impl Authenticator for JwtPolicy {
    fn check<'a>(&'a self, parts: &'a mut Parts) -> Check<'a> {
        match self.check_now(parts) {
            Ok(result) => Check::Now(result),
            // An unknown key: the provider may have rotated. Fetch the set
            // again (rate-limited) and try once more.
            Err((token, source)) => Check::Later(Box::pin(async move {
                if let Some(jwks) = &self.jwks {
                    jwks.refetch().await;
                }
                match self.verify(&token) {
                    Ok(Some(verified)) => {
                        let verified = Arc::new(verified);
                        if let Some(cache) = &self.cache {
                            cache.insert(&token, verified.clone());
                        }
                        self.grant(parts, &verified, source)
                    }
                    Ok(None) => Err(self.invalid("no key for this token")),
                    Err(error) => Err(error),
                }
            })),
        }
    }
}

/// What a verified token grants, kept in the cache.
pub struct Verified {
    /// Past this instant (Unix seconds) the cache no longer answers.
    pub(super) exp: i64,
    pub(super) consumer: Option<Arc<Consumer>>,
    credential: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The `scope` (space-separated) or `scp` (list or string) claim.
fn scopes(claims: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// The JOSE header fields xgate reads. Any other field is ignored, except
/// `crit`: extensions the recipient does not understand make the token
/// invalid (RFC 7515 §4.1.11), and xgate understands none.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A JWS compact token taken apart, refused early for what no key should
/// ever be asked about.
struct Jws<'a> {
    header: CheckedHeader<'a>,
    claims: Value,
    /// `header.payload`: what the signature covers.
    signed: &'a str,
    signature: Vec<u8>,
}

struct CheckedHeader<'a> {
    alg: Cow<'a, str>,
    kid: Option<Cow<'a, str>>,
}

/// The first part of a compact token, and the rest; the serializations
/// xgate does not take are refused by name.
fn split(token: &str) -> Result<(&str, &str), &'static str> {
    if token.starts_with('{') {
        return Err("JWS JSON serialization is not accepted");
    }
    match token.bytes().filter(|b| *b == b'.').count() {
        2 => {}
        4 => return Err("encrypted tokens (JWE) are not accepted"),
        _ => return Err("malformed token"),
    }
    token.split_once('.').ok_or("malformed token")
}

fn decode_part(part: &str) -> Result<Vec<u8>, &'static str> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| "malformed token")
}

impl<'a> Jws<'a> {
    /// `header_bytes` is the decoding of the token's first part.
    fn parse(token: &'a str, header_bytes: &'a [u8]) -> Result<Self, &'static str> {
        let (header_text, rest) = split(token)?;
        let header: JoseHeader<'a> =
            serde_json::from_slice(header_bytes).map_err(|_| "malformed token")?;
        let alg = match header.alg {
            None => return Err("token has no alg"),
            Some(alg) if alg.eq_ignore_ascii_case("none") => {
                return Err("unsigned tokens are not accepted")
            }
            Some(alg) => alg,
        };
        if header.crit.is_some() {
            return Err("token has critical extensions");
        }
        let (payload, signature) = rest.split_once('.').ok_or("malformed token")?;
        let claims: Value =
            serde_json::from_slice(&decode_part(payload)?).map_err(|_| "malformed token")?;
        if !claims.is_object() {
            return Err("malformed token");
        }
        Ok(Self {
            header: CheckedHeader {
                alg,
                kid: header.kid,
            },
            claims,
            signed: &token[..header_text.len() + 1 + payload.len()],
            signature: decode_part(signature)?,
        })
    }
}

/// Verified tokens by their whole text, in shards so that workers rarely
/// meet on one lock; never used past a token's `exp`.
pub(super) struct TokenCache {
    shards: Vec<Mutex<HashMap<Box<str>, Arc<Verified>>>>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

impl TokenCache {
    pub(super) fn new(entries: usize) -> Self {
        Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            per_shard: entries.div_ceil(CACHE_SHARDS),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, token: &str) -> &Mutex<HashMap<Box<str>, Arc<Verified>>> {
        &self.shards[self.hasher.hash_one(token) as usize % CACHE_SHARDS]
    }

    pub(super) fn get(&self, token: &str, now: i64) -> Option<Arc<Verified>> {
        let shard = self.shard(token).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(token).filter(|v| v.exp > now).cloned()
    }

    pub(super) fn insert(&self, token: &str, verified: Arc<Verified>) {
        let mut shard = self.shard(token).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard {
            let now = unix_now();
            shard.retain(|_, v| v.exp > now);
            if shard.len() >= self.per_shard {
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(token.into(), verified);
    }
}

#[cfg(test)]
mod tests;
