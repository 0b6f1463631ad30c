//! The consumers of the config, compiled into what the request path needs:
//! each consumer's identity headers made once, and its credentials in maps
//! keyed by what a request presents (a key's SHA-256, a JWT's `iss` or
//! `kid`, an OAuth 2.0 `client_id`, a
//! client certificate's name), so 100,000 consumers cost a request
//! what 10 do.

use std::{collections::HashMap, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{self, parse_key_hash, parse_rfc3339};

pub const X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
pub const X_CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
pub const X_CONSUMER_CUSTOM_ID: HeaderName = HeaderName::from_static("x-consumer-custom-id");
pub const X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");
pub const X_CREDENTIAL_IDENTIFIER: HeaderName = HeaderName::from_static("x-credential-identifier");
pub const X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");

/// Identity headers the gateway owns: a client's copies never go upstream.
const IDENTITY_PREFIXES: [&str; 4] = [
    "x-consumer-",
    "x-credential-",
    "x-anonymous-consumer",
    "x-client-cert-",
];

/// Removes every identity header a client sent (one pass over the names;
/// nearly every request has none).
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let owned = |name: &HeaderName| {
        let name = name.as_str();
        name.starts_with("x-") && IDENTITY_PREFIXES.iter().any(|p| name.starts_with(p))
    };
    if !headers.keys().any(owned) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| owned(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// One consumer, as requests see it.
#[derive(Debug)]
pub struct Consumer {
    pub username: Arc<str>,
    /// Numbers consumers for the per-thread metric caches.
    pub index: u32,
    pub groups: Vec<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Consumer {
    fn new(index: u32, c: &config::Consumer) -> Self {
        let value = |v: &str| HeaderValue::from_str(v).expect("validated header value");
        let mut headers = vec![
            (X_CONSUMER_ID, value(c.id())),
            (X_CONSUMER_USERNAME, value(&c.username)),
        ];
        if let Some(custom) = &c.custom_id {
            headers.push((X_CONSUMER_CUSTOM_ID, value(custom)));
        }
        if !c.groups.is_empty() {
            headers.push((X_CONSUMER_GROUPS, value(&c.groups.join(","))));
        }
        Self {
            username: Arc::from(c.username.as_str()),
            index,
            groups: c.groups.clone(),
            headers,
        }
    }
}

/// Who a request was found to be.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `None`: authenticated by a credential no consumer holds (a JWKS key
    /// without a consumer claim).
    pub consumer: Option<Arc<Consumer>>,
    /// `X-Credential-Identifier`.
    pub credential: Option<HeaderValue>,
    pub anonymous: bool,
}

impl Identity {
    pub fn anonymous(consumer: Arc<Consumer>) -> Self {
        Self {
            consumer: Some(consumer),
            credential: None,
            anonymous: true,
        }
    }

    /// Sets the identity headers (the client's own copies are gone).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(consumer) = &self.consumer {
            for (name, value) in &consumer.headers {
                headers.insert(name, value.clone());
            }
        }
        if let Some(credential) = &self.credential {
            headers.insert(X_CREDENTIAL_IDENTIFIER, credential.clone());
        }
        if self.anonymous {
            headers.insert(X_ANONYMOUS_CONSUMER, HeaderValue::from_static("true"));
        }
    }
}

/// An API key's owner.
#[derive(Debug)]
pub struct KeyOwner {
    pub consumer: Arc<Consumer>,
    pub credential: HeaderValue,
    /// Unix seconds after which the key is refused.
    pub expires: Option<i64>,
}

/// A consumer's JWT key.
pub struct JwtKeyOwner {
    pub consumer: Arc<Consumer>,
    pub credential: HeaderValue,
    pub key: crate::jws::VerifyingKey,
}

/// A client of the gateway's token endpoint.
#[derive(Debug)]
pub struct OAuth2Client {
    pub consumer: Arc<Consumer>,
    pub client_id: Arc<str>,
    /// `X-Credential-Identifier` of the token requests it makes.
    pub credential: HeaderValue,
    /// SHA-256 of the secret.
    secret: [u8; 32],
    /// What it may be granted, in the config's order.
    pub scopes: Vec<String>,
    pub refresh: bool,
}

impl OAuth2Client {
    /// Whether `presented` is this client's secret; the time taken does not
    /// depend on where a wrong secret differs.
    pub fn secret_matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(&sha256(presented), &self.secret)
    }
}

/// Every consumer and credential of the config.
#[derive(Default)]
pub struct Consumers {
    by_username: HashMap<String, Arc<Consumer>>,
    /// SHA-256 of a key → its owner. Hashed with foldhash (seeded per
    /// process), not SipHash: the keys are digests already, and this is a
    /// lookup on every key-auth request.
    keys: HashMap<[u8; 32], KeyOwner, foldhash::fast::RandomState>,
    jwt_by_issuer: HashMap<String, Vec<Arc<JwtKeyOwner>>>,
    jwt_by_kid: HashMap<String, Vec<Arc<JwtKeyOwner>>>,
    oauth2_clients: HashMap<String, Arc<OAuth2Client>>,
    /// A client certificate's name → the consumer it is (`mtls_subjects`).
    mtls_subjects: HashMap<String, Arc<Consumer>>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers")
            .field("consumers", &self.by_username.len())
            .field("keys", &self.keys.len())
            .field("oauth2_clients", &self.oauth2_clients.len())
            .finish()
    }
}

impl Consumers {
    /// Compiles validated consumers; reads public key files. An error names
    /// the credential's path.
    pub fn compile(consumers: &[config::Consumer]) -> Result<Self, String> {
        let mut out = Self::default();
        for (i, c) in consumers.iter().enumerate() {
            let consumer = Arc::new(Consumer::new(i as u32, c));
            out.by_username.insert(c.username.clone(), consumer.clone());
            for (k, key) in c.keys.iter().enumerate() {
                let digest = match (&key.key, &key.key_hash) {
                    (Some(plain), _) => sha256(plain.as_bytes()),
                    (None, Some(hash)) => parse_key_hash(hash).expect("validated key hash"),
                    (None, None) => unreachable!("validated: one of key and key_hash"),
                };
                let id = key
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("{}:keys[{k}]", c.username));
                let owner = KeyOwner {
                    consumer: consumer.clone(),
                    credential: HeaderValue::from_str(&id)
                        .map_err(|_| format!("consumers[{i}].keys[{k}].id: not a header value"))?,
                    expires: key.expires.as_deref().and_then(parse_rfc3339),
                };
                if out.keys.insert(digest, owner).is_some() {
                    return Err(format!(
                        "consumers[{i}].keys[{k}]: the same key belongs to another credential"
                    ));
                }
            }
            for (j, cred) in c.jwt.iter().enumerate() {
                let path = format!("consumers[{i}].jwt[{j}]");
                let owner = Arc::new(jwt_key(cred, &path, consumer.clone())?);
                if let Some(issuer) = &cred.issuer {
                    out.jwt_by_issuer
                        .entry(issuer.clone())
                        .or_default()
                        .push(owner.clone());
                }
                if let Some(kid) = &cred.kid {
                    out.jwt_by_kid.entry(kid.clone()).or_default().push(owner);
                }
            }
            for client in &c.oauth2_clients {
                let secret = match (&client.client_secret, &client.client_secret_hash) {
                    (Some(plain), _) => sha256(plain.as_bytes()),
                    (None, Some(hash)) => parse_key_hash(hash).expect("validated secret hash"),
                    (None, None) => unreachable!("validated: one of client_secret and its hash"),
                };
                let id = client.client_id.as_str();
                out.oauth2_clients.insert(
                    id.to_string(),
                    Arc::new(OAuth2Client {
                        consumer: consumer.clone(),
                        client_id: Arc::from(id),
                        credential: HeaderValue::from_str(id).expect("validated client_id"),
                        secret,
                        scopes: client.scopes.clone(),
                        refresh: client.refresh,
                    }),
                );
            }
            for subject in &c.mtls_subjects {
                // Validated: no name belongs to two consumers.
                out.mtls_subjects
                    .entry(subject.clone())
                    .or_insert_with(|| consumer.clone());
            }
        }
        Ok(out)
    }

    pub fn by_username(&self, username: &str) -> Option<&Arc<Consumer>> {
        self.by_username.get(username)
    }

    /// The owner of the key whose SHA-256 is `digest`.
    pub fn key(&self, digest: &[u8; 32]) -> Option<&KeyOwner> {
        self.keys.get(digest)
    }

    /// Consumer keys for a token with this `kid` and `iss`: by `kid` when
    /// a consumer key has it, else by `iss`.
    pub fn jwt_keys(&self, kid: Option<&str>, issuer: Option<&str>) -> &[Arc<JwtKeyOwner>] {
        kid.and_then(|kid| self.jwt_by_kid.get(kid))
            .or_else(|| issuer.and_then(|iss| self.jwt_by_issuer.get(iss)))
            .map_or(&[], Vec::as_slice)
    }

    /// The token endpoint's client with this `client_id`.
    pub fn oauth2_client(&self, client_id: &str) -> Option<&Arc<OAuth2Client>> {
        self.oauth2_clients.get(client_id)
    }

    /// The consumer a client certificate's name is (`mtls_subjects`).
    pub fn by_mtls_subject(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.mtls_subjects.get(name)
    }

    /// Whether any consumer holds a JWT key.
    pub fn has_jwt_keys(&self) -> bool {
        !(self.jwt_by_issuer.is_empty() && self.jwt_by_kid.is_empty())
    }
}

fn jwt_key(
    cred: &config::JwtCredential,
    path: &str,
    consumer: Arc<Consumer>,
) -> Result<JwtKeyOwner, String> {
    let key = cred.verifying_key().map_err(|e| format!("{path}: {e}"))?;
    let credential = cred
        .kid
        .as_deref()
        .or(cred.issuer.as_deref())
        .unwrap_or_default();
    Ok(JwtKeyOwner {
        consumer,
        credential: HeaderValue::from_str(credential)
            .map_err(|_| format!("{path}: issuer/kid is not a header value"))?,
        key,
    })
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_identity_headers_are_stripped() {
        let mut h = HeaderMap::new();
        for name in [
            "x-consumer-id",
            "X-Consumer-Username",
            "x-credential-identifier",
            "x-anonymous-consumer",
            "x-client-cert-subject",
            "x-keep",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("forged"),
            );
        }
        strip_identity_headers(&mut h);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-keep"]
        );
    }

    #[test]
    fn constant_time_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
