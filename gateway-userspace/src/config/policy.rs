//! `consumers[]`, `policy_defaults` and each route's `policies[]`: who may
//! call, and what each route asks of a request before it goes upstream.

use std::collections::{hash_map::Entry, BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{BotDetection, Errors, IpRestriction};

/// A caller known to the gateway. Its identity goes upstream as
/// `X-Consumer-*` headers once a policy has authenticated it.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub username: String,
    /// `X-Consumer-ID`; the username when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// `X-Consumer-Custom-ID`: an id of the caller's own system.
    #[serde(default)]
    pub custom_id: Option<String>,
    /// `X-Consumer-Groups`; what authorization policies read.
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys (key-auth).
    #[serde(default)]
    pub keys: Vec<ApiKey>,
    /// Keys that sign this consumer's JWTs (jwt).
    #[serde(default)]
    pub jwt: Vec<JwtCredential>,
    /// Clients of the gateway's own token endpoint (`oauth2_server`): the
    /// tokens they get name this consumer.
    #[serde(default)]
    pub oauth2_clients: Vec<OAuth2Client>,
    /// Names in client certificates that are this consumer (mtls): a DNS,
    /// URI or e-mail subject alternative name, or a subject common name, as
    /// the policy's `consumer_by` says which are read.
    #[serde(default)]
    pub mtls_subjects: Vec<String>,
}

impl Consumer {
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.username)
    }
}

/// One API key: the key itself, or its SHA-256 (`sha256:<hex>`, made by
/// `xgate hash-key`) so that the config file holds no secret.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// `X-Credential-Identifier`; `<username>:keys[N]` when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    /// After this instant (RFC 3339, `2027-01-31T00:00:00Z`) the key is
    /// refused.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A key that verifies a consumer's tokens: found by the token's `iss`
/// (Kong's `key` claim) or its `kid`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtCredential {
    /// Matches the token's `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Matches the token header's `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key verifies (`HS256`, `RS256`, `ES256`,
    /// `EdDSA`, ...): a key is never tried with another.
    pub algorithm: String,
    /// HMAC secret (HS*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// PEM public key (RS*, PS*, ES*, EdDSA), inline or from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<std::path::PathBuf>,
}

impl JwtCredential {
    /// The key, read (from its file) and parsed into its verifier; an error
    /// says what is wrong with it.
    pub fn verifying_key(&self) -> Result<crate::jws::VerifyingKey, String> {
        use crate::jws::VerifyingKey;
        use jsonwebtoken::Algorithm::*;
        let algorithm: jsonwebtoken::Algorithm = self
            .algorithm
            .parse()
            .map_err(|_| format!("unknown algorithm '{}'", self.algorithm))?;
        let file;
        let pem = match (&self.public_key, &self.public_key_file) {
            (Some(pem), _) => pem.as_bytes(),
            (None, Some(path)) => {
                file = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                &file
            }
            (None, None) => &[],
        };
        match algorithm {
            HS256 | HS384 | HS512 => VerifyingKey::hmac(
                algorithm,
                self.secret.as_deref().ok_or("needs a secret")?.as_bytes(),
            ),
            _ => VerifyingKey::from_pem(algorithm, pem),
        }
    }
}

/// An OAuth 2.0 client (RFC 6749 §2): what it authenticates with at the
/// token endpoint, and what it may ask for.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Client {
    pub client_id: String,
    /// The secret itself, or its SHA-256 (`sha256:<hex>`, like `key_hash`)
    /// so that the config file holds no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_hash: Option<String>,
    /// Scopes the client may be granted; a request that names none gets
    /// all of them.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether the client also gets a refresh token. Off by default: RFC
    /// 6749 §4.4.3 says a client_credentials answer SHOULD NOT carry one
    /// (the client can always authenticate again).
    #[serde(default)]
    pub refresh: bool,
}

/// A client secret shorter than this is refused: whoever guesses it mints
/// tokens. 16 random characters are ~95 bits.
pub const MIN_CLIENT_SECRET_CHARS: usize = 16;

/// What routes inherit when they declare no `policies` of their own (per
/// listener in `listeners[].policy_defaults`, or for all).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDefaults {
    #[serde(default)]
    pub authentication: AuthMode,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// How a chain's authentication policies combine.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every authentication policy must succeed (Kong's default); the
    /// consumer is the first one found.
    #[default]
    All,
    /// The first that succeeds decides; the rest are not asked.
    Any,
}

/// One policy, tagged by `type`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Policy {
    KeyAuth(KeyAuth),
    Jwt(Box<Jwt>),
    Oidc(Box<Oidc>),
    Mtls(Mtls),
    Acl(Acl),
    RateLimit(Box<super::RateLimitPolicy>),
    Throttle(Box<super::ThrottlePolicy>),
    IpRestriction(IpRestriction),
    BotDetection(Box<BotDetection>),
    Opa(Box<super::opa::Opa>),
}

impl Policy {
    pub fn kind(&self) -> &'static str {
        match self {
            Policy::KeyAuth(_) => "key-auth",
            Policy::Jwt(_) => "jwt",
            Policy::Oidc(_) => "oidc",
            Policy::Mtls(_) => "mtls",
            Policy::Acl(_) => "acl",
            Policy::RateLimit(_) => "rate-limit",
            Policy::Throttle(_) => "throttle",
            Policy::IpRestriction(_) => "ip-restriction",
            Policy::BotDetection(_) => "bot-detection",
            Policy::Opa(_) => "opa",
        }
    }

    /// When the policy runs in its chain.
    pub fn phase(&self) -> crate::policy::Phase {
        use crate::policy::Phase;
        match self {
            Policy::KeyAuth(_) | Policy::Jwt(_) | Policy::Oidc(_) | Policy::Mtls(_) => {
                Phase::Authentication
            }
            Policy::Acl(_) | Policy::Opa(_) => Phase::Authorization,
            Policy::RateLimit(_) | Policy::Throttle(_) => Phase::Traffic,
            Policy::IpRestriction(_) | Policy::BotDetection(_) => Phase::Access,
        }
    }

    fn anonymous(&self) -> Option<&str> {
        match self {
            Policy::KeyAuth(p) => p.anonymous.as_deref(),
            Policy::Jwt(p) => p.anonymous.as_deref(),
            Policy::Oidc(p) => p.anonymous.as_deref(),
            Policy::Mtls(p) => p.anonymous.as_deref(),
            Policy::Acl(_)
            | Policy::Opa(_)
            | Policy::RateLimit(_)
            | Policy::Throttle(_)
            | Policy::IpRestriction(_)
            | Policy::BotDetection(_) => None,
        }
    }
}

/// `type: key-auth`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyAuth {
    /// Header names (and query parameter names) that carry the key.
    #[serde(default = "default_key_names")]
    pub key_names: Vec<String>,
    /// Look in headers.
    #[serde(default = "default_true")]
    pub in_header: bool,
    /// Look in the query string.
    #[serde(default)]
    pub in_query: bool,
    /// Remove the key before the request goes upstream.
    #[serde(default)]
    pub hide_credentials: bool,
    /// A request without a valid key goes on as this consumer.
    #[serde(default)]
    pub anonymous: Option<String>,
}

fn default_key_names() -> Vec<String> {
    vec!["apikey".into()]
}

fn default_true() -> bool {
    true
}

/// `type: jwt`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// Where the token is read, tried in order: `header` (Authorization:
    /// Bearer), `query:<name>`, `cookie:<name>`.
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<String>,
    /// Keys from a JWKS document (fetched over HTTP(S), cached, refreshed).
    #[serde(default)]
    pub jwks: Option<Jwks>,
    /// Accepted `iss` values; empty: any (the key decides).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values (one must be in the token); empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Tolerance for `exp` and `nbf`.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_leeway", with = "crate::duration::serde")]
    pub leeway: std::time::Duration,
    /// Longest `exp - iat` accepted; absent: not checked.
    #[schemars(with = "Option<crate::config::schema::DurationText>")]
    #[serde(default, with = "crate::duration::serde_opt")]
    pub max_lifetime: Option<std::time::Duration>,
    /// Scopes the token must carry (space-separated `scope` or `scp`).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Claims the token must carry, with these values.
    #[serde(default)]
    pub required_claims: BTreeMap<String, serde_json::Value>,
    /// Claims copied into upstream headers: claim → header name.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Which claim names the consumer when a JWKS key verified the token
    /// (a consumer's own key names it already).
    #[serde(default)]
    pub consumer_claim: Option<String>,
    /// Verified tokens kept, so a reused token is not verified again.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    #[serde(default)]
    pub hide_credentials: bool,
    #[serde(default)]
    pub anonymous: Option<String>,
    /// `realm` in the WWW-Authenticate challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// `type: mtls`: the client certificate the listener verified, mapped to
/// a consumer by its names.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    /// Which names of the certificate are looked up, in this order; the
    /// first that names a consumer wins.
    #[serde(default = "default_consumer_by")]
    pub consumer_by: Vec<CertificateName>,
    /// Also take a name as a consumer's username (after `mtls_subjects`).
    #[serde(default)]
    pub username_from_certificate: bool,
    /// A request without a certificate, or with one that names no
    /// consumer, goes on as this consumer.
    #[serde(default)]
    pub anonymous: Option<String>,
}

/// `type: acl`: which consumer groups may use the route (Kong's acl). Runs
/// after authentication, on the consumer it found (an `anonymous` one
/// included).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    /// A consumer in none of these groups is refused (when not empty).
    #[serde(default)]
    pub allow: Vec<String>,
    /// A consumer in any of these groups is refused; checked first.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Do not send `X-Consumer-Groups` upstream on this route.
    #[serde(default)]
    pub hide_groups_header: bool,
}

/// A kind of name in a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateName {
    /// DNS subject alternative names (compared in lower case).
    SanDns,
    /// URI subject alternative names (SPIFFE IDs and the like).
    SanUri,
    /// E-mail (rfc822Name) subject alternative names.
    SanEmail,
    /// The subject's common names, most specific first.
    SubjectCn,
}

/// Alternative names first: they are what RFC 6125 and SPIFFE identify
/// with; the common name last, for CAs that still put identity only there.
fn default_consumer_by() -> Vec<CertificateName> {
    vec![
        CertificateName::SanDns,
        CertificateName::SanUri,
        CertificateName::SanEmail,
        CertificateName::SubjectCn,
    ]
}

/// Where a jwt policy gets keys that no consumer holds.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwks {
    pub url: String,
    /// CA certificates (PEM) an HTTPS `url` is verified with; absent: the
    /// system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// How often the document is fetched again in the background.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_jwks_refresh", with = "crate::duration::serde")]
    pub refresh_interval: std::time::Duration,
    /// Shortest time between two fetches caused by an unknown `kid`.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_jwks_min_refetch", with = "crate::duration::serde")]
    pub min_refetch_interval: std::time::Duration,
}

/// `type: oidc`: access tokens of an OpenID Connect provider found by
/// discovery; JWTs verified with its JWKS, opaque tokens introspected.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// The provider's issuer URL: discovery is fetched from
    /// `<issuer>/.well-known/openid-configuration`, and tokens must name it
    /// in `iss`.
    pub issuer: String,
    /// CA certificates (PEM) the provider's HTTPS endpoints are verified
    /// with; absent: the system's.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<String>,
    /// Accepted `aud` values (one must be in the token); empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Scopes the token must carry (`scope` or `scp`).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Claims copied into upstream headers: claim → header name.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Which claim names the consumer (`sub`, `client_id`, ...).
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Let a token whose claim names no consumer through without one
    /// (its claim is the credential identifier); by default it is refused.
    #[serde(default)]
    pub consumer_optional: bool,
    /// This gateway's client at the provider, for introspection
    /// (`client_secret_basic`).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub introspection: Introspection,
    /// Tolerance for `exp` and `nbf`.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_leeway", with = "crate::duration::serde")]
    pub leeway: std::time::Duration,
    /// How often the JWKS is fetched again in the background.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_jwks_refresh", with = "crate::duration::serde")]
    pub jwks_refresh_interval: std::time::Duration,
    /// Shortest time between two fetches caused by an unknown `kid`, and
    /// between two discoveries caused by a failure.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_jwks_min_refetch", with = "crate::duration::serde")]
    pub min_refetch_interval: std::time::Duration,
    /// Verified and introspected tokens kept.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    #[serde(default)]
    pub hide_credentials: bool,
    #[serde(default)]
    pub anonymous: Option<String>,
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// When a token goes to the provider's introspection endpoint (RFC 7662).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    #[serde(default)]
    pub enabled: IntrospectionMode,
    /// How long an introspection answer is believed (never past the
    /// token's `exp`): a revoked token is refused at most this late.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_introspection_ttl", with = "crate::duration::serde")]
    pub cache_ttl: std::time::Duration,
}

impl Default for Introspection {
    fn default() -> Self {
        Self {
            enabled: IntrospectionMode::default(),
            cache_ttl: default_introspection_ttl(),
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionMode {
    /// JWTs are verified here; other (opaque) tokens are introspected.
    #[default]
    Auto,
    /// Every token is introspected (revocation is seen within cache_ttl).
    Always,
    /// Only JWTs; opaque tokens are refused.
    Never,
}

fn default_consumer_claim() -> String {
    "sub".into()
}

/// Five minutes: how long a revoked token may still pass, against one
/// round trip to the provider per token and five minutes.
fn default_introspection_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_token_sources() -> Vec<String> {
    vec!["header".into()]
}

/// Clocks drift: a minute is what Envoy and most libraries allow.
fn default_leeway() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_realm() -> String {
    "xgate".into()
}

/// Providers rotate keys in hours or days; five minutes bounds how long a
/// revoked key is still believed.
fn default_jwks_refresh() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

/// An unknown `kid` may be a rotation: fetch, but at most this often, so
/// made-up `kid`s cannot turn into a flood of fetches.
fn default_jwks_min_refetch() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// Algorithms a key may be pinned to.
pub const JWT_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

pub(super) fn validate_consumers(consumers: &[Consumer], errors: &mut Errors) {
    let mut usernames = HashSet::new();
    let mut ids = HashSet::new();
    let mut client_ids = HashMap::new();
    let mut mtls_subjects = HashMap::new();
    for (i, c) in consumers.iter().enumerate() {
        let path = format!("consumers[{i}]");
        if c.username.is_empty() {
            errors.push(format!("{path}.username"), "must not be empty");
        } else if !usernames.insert(c.username.as_str()) {
            errors.push(
                format!("{path}.username"),
                format!("'{}' is taken by an earlier consumer", c.username),
            );
        }
        if !ids.insert(c.id()) && c.id() != c.username {
            errors.push(
                format!("{path}.id"),
                format!("'{}' is taken by an earlier consumer", c.id()),
            );
        }
        for (name, value) in [
            ("id", c.id.as_deref()),
            ("custom_id", c.custom_id.as_deref()),
        ]
        .into_iter()
        .chain(c.groups.iter().map(|g| ("groups[]", Some(g.as_str()))))
        .chain(std::iter::once(("username", Some(c.username.as_str()))))
        {
            if let Some(value) = value {
                if http::HeaderValue::from_str(value).is_err() || value.contains(',') {
                    errors.push(
                        format!("{path}.{name}"),
                        format!("'{value}' cannot be sent in a header (visible ASCII, no comma)"),
                    );
                }
            }
        }
        for (k, key) in c.keys.iter().enumerate() {
            let kpath = format!("{path}.keys[{k}]");
            match (&key.key, &key.key_hash) {
                (Some(_), Some(_)) | (None, None) => {
                    errors.push(kpath.clone(), "needs exactly one of key and key_hash")
                }
                (Some(k), None) if k.len() < 8 => errors.push(
                    format!("{kpath}.key"),
                    "is shorter than 8 characters; use `xgate hash-key --generate` for a strong one",
                ),
                (None, Some(hash)) if parse_key_hash(hash).is_none() => errors.push(
                    format!("{kpath}.key_hash"),
                    "must be sha256:<64 hex digits> (from `xgate hash-key`)",
                ),
                _ => {}
            }
            if let Some(expires) = &key.expires {
                if parse_rfc3339(expires).is_none() {
                    errors.push(
                        format!("{kpath}.expires"),
                        format!("'{expires}' is not an RFC 3339 time like 2027-01-31T00:00:00Z"),
                    );
                }
            }
        }
        for (j, cred) in c.jwt.iter().enumerate() {
            let jpath = format!("{path}.jwt[{j}]");
            validate_jwt_credential(cred, &jpath, errors);
        }
        for (j, client) in c.oauth2_clients.iter().enumerate() {
            let cpath = format!("{path}.oauth2_clients[{j}]");
            validate_oauth2_client(client, &cpath, errors);
            match client_ids.entry(client.client_id.as_str()) {
                Entry::Occupied(first) => errors.push(
                    format!("{cpath}.client_id"),
                    format!("'{}' is taken by {}", client.client_id, first.get()),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(cpath);
                }
            }
        }
        for (j, subject) in c.mtls_subjects.iter().enumerate() {
            let spath = format!("{path}.mtls_subjects[{j}]");
            if subject.is_empty() {
                errors.push(spath, "must not be empty");
            } else if let Some(owner) = mtls_subjects.insert(subject.as_str(), i) {
                errors.push(
                    spath,
                    format!("'{subject}' is already a name of consumers[{owner}]"),
                );
            }
        }
    }
}

fn validate_oauth2_client(client: &OAuth2Client, path: &str, errors: &mut Errors) {
    // Unreserved characters only (RFC 3986 §2.3): the form encoding that
    // RFC 6749 §2.3.1 puts around a client_id in HTTP Basic is then a no-op,
    // and the id can go into a header (X-Credential-Identifier) as it is.
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if client.client_id.is_empty() || !client.client_id.bytes().all(unreserved) {
        errors.push(
            format!("{path}.client_id"),
            format!(
                "'{}' must be non-empty letters, digits, '-', '.', '_' or '~'",
                client.client_id
            ),
        );
    }
    match (&client.client_secret, &client.client_secret_hash) {
        (Some(_), Some(_)) | (None, None) => errors.push(
            path,
            "needs exactly one of client_secret and client_secret_hash",
        ),
        (Some(secret), None) if secret.chars().count() < MIN_CLIENT_SECRET_CHARS => errors.push(
            format!("{path}.client_secret"),
            format!(
                "is shorter than {MIN_CLIENT_SECRET_CHARS} characters: a guessed secret mints tokens"
            ),
        ),
        (None, Some(hash)) if parse_key_hash(hash).is_none() => errors.push(
            format!("{path}.client_secret_hash"),
            "must be sha256:<64 hex digits>",
        ),
        _ => {}
    }
    for (k, scope) in client.scopes.iter().enumerate() {
        if !is_scope_token(scope) {
            errors.push(
                format!("{path}.scopes[{k}]"),
                format!("'{scope}' is not a scope (RFC 6749 §3.3: visible ASCII, no space, '\"' or '\\')"),
            );
        }
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

fn validate_jwt_credential(cred: &JwtCredential, path: &str, errors: &mut Errors) {
    if cred.issuer.is_none() && cred.kid.is_none() {
        errors.push(path, "needs issuer or kid: how a token finds this key");
    }
    if !JWT_ALGORITHMS.contains(&cred.algorithm.as_str()) {
        errors.push(
            format!("{path}.algorithm"),
            format!(
                "'{}' is not one of {}",
                cred.algorithm,
                JWT_ALGORITHMS.join(", ")
            ),
        );
        return;
    }
    let hmac = cred.algorithm.starts_with("HS");
    let public = [cred.public_key.is_some(), cred.public_key_file.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    match (hmac, cred.secret.is_some(), public) {
        (true, true, 0) => {
            if cred.secret.as_ref().is_some_and(|s| s.len() < 32) {
                errors.push(
                    format!("{path}.secret"),
                    "is shorter than 32 bytes: an HMAC secret that short can be guessed offline",
                );
            }
        }
        (true, _, _) => errors.push(
            path,
            format!("{} needs `secret` and no public key", cred.algorithm),
        ),
        (false, false, 1) => {
            if let Err(message) = cred.verifying_key() {
                errors.push(path, message);
            }
        }
        (false, _, _) => errors.push(
            path,
            format!(
                "{} needs exactly one of public_key and public_key_file, and no secret",
                cred.algorithm
            ),
        ),
    }
}

/// Checks every policy list: the chain's own rules and each policy's.
pub(super) fn validate_policies(
    policies: &[Policy],
    path: &str,
    consumers: &[Consumer],
    errors: &mut Errors,
) {
    for (i, policy) in policies.iter().enumerate() {
        let ppath = format!("{path}[{i}]");
        if let Some(anonymous) = policy.anonymous() {
            if !consumers.iter().any(|c| c.username == anonymous) {
                errors.push(
                    format!("{ppath}.anonymous"),
                    format!("'{anonymous}' is not a consumer's username"),
                );
            }
        }
        match policy {
            Policy::KeyAuth(p) => {
                if p.key_names.is_empty() {
                    errors.push(format!("{ppath}.key_names"), "must name at least one");
                }
                for (j, name) in p.key_names.iter().enumerate() {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        errors.push(
                            format!("{ppath}.key_names[{j}]"),
                            format!("'{name}' is not a valid header name"),
                        );
                    }
                }
                if !p.in_header && !p.in_query {
                    errors.push(
                        ppath.clone(),
                        "in_header and in_query are both false: no key could be found",
                    );
                }
            }
            Policy::Jwt(p) => {
                validate_token_sources(&p.token_sources, &ppath, errors);
                if let Some(jwks) = &p.jwks {
                    if !(jwks.url.starts_with("https://") || jwks.url.starts_with("http://"))
                        || jwks.url.parse::<http::Uri>().is_err()
                    {
                        errors.push(
                            format!("{ppath}.jwks.url"),
                            format!("'{}' is not an http(s) URL", jwks.url),
                        );
                    }
                }
                validate_claims_to_headers(&p.claims_to_headers, &ppath, errors);
                if p.cache_entries > 10_000_000 {
                    errors.push(format!("{ppath}.cache_entries"), "at most 10000000");
                }
            }
            Policy::Oidc(p) => validate_oidc(p, &ppath, errors),
            Policy::Mtls(p) => {
                if p.consumer_by.is_empty() {
                    errors.push(format!("{ppath}.consumer_by"), "must name at least one");
                }
            }
            Policy::Acl(p) => validate_acl(p, &ppath, consumers, errors),
            Policy::RateLimit(p) => super::rate_limit::validate_rate_limit(p, &ppath, errors),
            Policy::Throttle(p) => super::rate_limit::validate_throttle(p, &ppath, errors),
            Policy::IpRestriction(p) => super::access::validate_ip_restriction(p, &ppath, errors),
            Policy::BotDetection(p) => super::access::validate_bot_detection(p, &ppath, errors),
            Policy::Opa(p) => super::opa::validate(p, &ppath, errors),
        }
    }
}

fn validate_acl(acl: &Acl, path: &str, consumers: &[Consumer], errors: &mut Errors) {
    if acl.allow.is_empty() && acl.deny.is_empty() {
        errors.push(
            path,
            "needs allow or deny (or both): an acl without groups decides nothing",
        );
    }
    for (field, groups) in [("allow", &acl.allow), ("deny", &acl.deny)] {
        for (j, group) in groups.iter().enumerate() {
            let gpath = format!("{path}.{field}[{j}]");
            if group.is_empty() {
                errors.push(gpath, "must not be empty");
            } else if acl.allow.contains(group) && acl.deny.contains(group) && field == "deny" {
                errors.push(gpath, format!("'{group}' is in both allow and deny"));
            } else if !consumers.iter().any(|c| c.groups.contains(group)) {
                // A typo here would refuse (allow) or let through (deny)
                // everyone without a word.
                errors.push(gpath, format!("'{group}' is no consumer's group"));
            }
        }
    }
}

fn validate_token_sources(sources: &[String], path: &str, errors: &mut Errors) {
    for (j, source) in sources.iter().enumerate() {
        let ok = source == "header"
            || source
                .strip_prefix("query:")
                .or_else(|| source.strip_prefix("cookie:"))
                .is_some_and(|name| !name.is_empty());
        if !ok {
            errors.push(
                format!("{path}.token_sources[{j}]"),
                format!("'{source}': use header, query:<name> or cookie:<name>"),
            );
        }
    }
    if sources.is_empty() {
        errors.push(format!("{path}.token_sources"), "must name at least one");
    }
}

fn validate_claims_to_headers(map: &BTreeMap<String, String>, path: &str, errors: &mut Errors) {
    for (claim, header) in map {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            errors.push(
                format!("{path}.claims_to_headers.{claim}"),
                format!("'{header}' is not a valid header name"),
            );
        }
    }
}

fn validate_oidc(p: &Oidc, path: &str, errors: &mut Errors) {
    let issuer_ok = (p.issuer.starts_with("https://") || p.issuer.starts_with("http://"))
        && p.issuer
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some())
        && !p.issuer.contains(['?', '#']);
    if !issuer_ok {
        errors.push(
            format!("{path}.issuer"),
            format!(
                "'{}' is not an http(s) URL without query or fragment",
                p.issuer
            ),
        );
    }
    validate_token_sources(&p.token_sources, path, errors);
    validate_claims_to_headers(&p.claims_to_headers, path, errors);
    if p.consumer_claim.is_empty() {
        errors.push(format!("{path}.consumer_claim"), "must not be empty");
    }
    if p.cache_entries > 10_000_000 {
        errors.push(format!("{path}.cache_entries"), "at most 10000000");
    }
    let secrets =
        usize::from(p.client_secret.is_some()) + usize::from(p.client_secret_file.is_some());
    match (&p.client_id, secrets) {
        (Some(_), 1) | (None, 0) => {}
        (Some(_), _) => errors.push(
            path,
            "client_id needs exactly one of client_secret and client_secret_file",
        ),
        (None, _) => errors.push(
            format!("{path}.client_id"),
            "is needed with a client secret",
        ),
    }
    if p.introspection.enabled == IntrospectionMode::Always && p.client_id.is_none() {
        errors.push(
            format!("{path}.introspection.enabled"),
            "`always` needs client_id and a client secret to call the introspection endpoint",
        );
    }
    if let Some(file) = &p.client_secret_file {
        if let Err(e) = std::fs::metadata(file) {
            errors.push(
                format!("{path}.client_secret_file"),
                format!("cannot read {}: {e}", file.display()),
            );
        }
    }
}

/// An `mtls` policy can only succeed on a listener that asks for client
/// certificates: in a listener's `policy_defaults`, that listener must;
/// anywhere else, at least one listener must.
pub(super) fn validate_mtls_listeners(config: &super::Config, errors: &mut Errors) {
    let asks = |l: &super::Listener| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some());
    let mut check = |policies: &[Policy], path: &str, message: &str| {
        for (j, policy) in policies.iter().enumerate() {
            if matches!(policy, Policy::Mtls(_)) {
                errors.push(format!("{path}[{j}]"), message);
            }
        }
    };
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(defaults) = listener
            .policy_defaults
            .as_ref()
            .filter(|_| !asks(listener))
        {
            check(
                &defaults.policies,
                &format!("listeners[{i}].policy_defaults.policies"),
                "mtls on a listener without tls.client_auth: its requests never carry a client certificate",
            );
        }
    }
    if config.listeners.iter().any(asks) {
        return;
    }
    let message =
        "mtls, and no listener has tls.client_auth: no request carries a client certificate";
    check(
        &config.policy_defaults.policies,
        "policy_defaults.policies",
        message,
    );
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(policies) = &route.policies {
            check(policies, &format!("routes[{i}].policies"), message);
        }
    }
}

/// `sha256:<64 hex>` → the digest.
pub fn parse_key_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` → seconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let tz = rest.get(1..)?;
            if tz.len() != 5 || tz.as_bytes()[2] != b':' {
                return None;
            }
            let h: i64 = tz.get(0..2)?.parse().ok()?;
            let m: i64 = tz.get(3..5)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        match super::super::Config::from_yaml(yaml, "t") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn mtls_policies_need_a_listener_that_asks_for_certificates() {
        let dir = std::env::temp_dir().join(format!("xgate-mtls-config-{}", std::process::id()));
        let ca = crate::tls::test_client_ca(&dir);
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        let server = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        std::fs::write(&cert, server.cert.pem()).unwrap();
        std::fs::write(&key, server.signing_key.serialize_pem()).unwrap();
        let mtls_listener = format!(
            "{{address: '127.0.0.1:2', tls: {{certificates: [{{cert: '{}', key: '{}'}}], \
             client_auth: {{mode: optional, ca_file: '{}'}}}}}}",
            cert.display(),
            key.display(),
            ca.display()
        );
        let route =
            "routes: [{name: r, match: {path_prefix: /}, upstream: u, policies: [{type: mtls}]}]\n\
                     upstreams: {u: {targets: ['127.0.0.1:9']}}\n";
        let plain = "{address: '127.0.0.1:1', policy_defaults: {policies: [{type: key-auth}, {type: mtls}]}}";

        assert_eq!(
            errors(&format!("listeners: [{plain}]\n{route}")),
            [
                "listeners[0].policy_defaults.policies[1]: mtls on a listener without \
                 tls.client_auth: its requests never carry a client certificate",
                "routes[0].policies[0]: mtls, and no listener has tls.client_auth: no request \
                 carries a client certificate",
            ]
        );
        // One listener that asks is enough for routes; the plain one's own
        // defaults are still wrong.
        assert_eq!(
            errors(&format!("listeners: [{plain}, {mtls_listener}]\n{route}")),
            [
                "listeners[0].policy_defaults.policies[1]: mtls on a listener without \
              tls.client_auth: its requests never carry a client certificate"
            ]
        );
        assert_eq!(
            errors(&format!("listeners: [{mtls_listener}]\n{route}")),
            Vec::<String>::new()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mtls_subjects_and_consumer_by_are_checked() {
        let yaml = "listeners: [{address: '127.0.0.1:1'}]\n\
                    consumers:\n\
                    - {username: a, mtls_subjects: [x.test, '']}\n\
                    - {username: b, mtls_subjects: [y.test, x.test]}\n\
                    policy_defaults: {policies: [{type: mtls, consumer_by: [], anonymous: nobody}]}\n";
        let found = errors(yaml);
        for want in [
            "consumers[0].mtls_subjects[1]: must not be empty",
            "consumers[1].mtls_subjects[1]: 'x.test' is already a name of consumers[0]",
            "policy_defaults.policies[0].anonymous: 'nobody' is not a consumer's username",
            "policy_defaults.policies[0].consumer_by: must name at least one",
        ] {
            assert!(found.iter().any(|e| e == want), "{want} not in {found:#?}");
        }
        let unknown = "listeners: [{address: '127.0.0.1:1'}]\n\
                       policy_defaults: {policies: [{type: mtls, consumer_by: [san_ip]}]}\n";
        assert!(
            errors(unknown)[0].contains("unknown variant `san_ip`"),
            "{:?}",
            errors(unknown)
        );
    }

    #[test]
    fn rfc3339_times_parse_to_unix_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2027-01-31T00:00:00Z"), Some(1_801_353_600));
        assert_eq!(
            parse_rfc3339("2027-01-31T02:00:00+02:00"),
            Some(1_801_353_600)
        );
        assert_eq!(
            parse_rfc3339("2027-01-31T00:00:00.250Z"),
            Some(1_801_353_600)
        );
        for bad in [
            "2027-01-31",
            "2027-13-01T00:00:00Z",
            "2027-01-31T00:00:00",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn oidc_needs_an_issuer_url_and_a_whole_client() {
        let errors = crate::config::Config::from_yaml(
            "listeners: [{address: '127.0.0.1:1'}]\n\
             policy_defaults:\n\
             \x20 policies:\n\
             \x20   - {type: oidc, issuer: 'idp.test'}\n\
             \x20   - {type: oidc, issuer: 'https://idp.test', client_id: xgate}\n\
             \x20   - {type: oidc, issuer: 'https://idp.test', client_secret: s}\n\
             \x20   - {type: oidc, issuer: 'https://idp.test', introspection: {enabled: always}}\n\
             \x20   - {type: oidc, issuer: 'https://idp.test', client_id: x, client_secret_file: /nonexistent}\n",
            "t",
        )
        .expect_err("refused")
        .to_string();
        for expected in [
            "policy_defaults.policies[0].issuer: 'idp.test' is not an http(s) URL",
            "policy_defaults.policies[1]: client_id needs exactly one of client_secret and client_secret_file",
            "policy_defaults.policies[2].client_id: is needed with a client secret",
            "policy_defaults.policies[3].introspection.enabled: `always` needs client_id",
            "policy_defaults.policies[4].client_secret_file: cannot read /nonexistent",
        ] {
            assert!(errors.contains(expected), "missing `{expected}` in:\n{errors}");
        }
    }

    #[test]
    fn key_hashes_are_sha256_hex() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_key_hash(&format!("sha256:{hex}")), Some([0xab; 32]));
        assert_eq!(parse_key_hash(&hex), None);
        assert_eq!(parse_key_hash("sha256:abc"), None);
    }
}
