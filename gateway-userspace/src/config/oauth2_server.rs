//! `oauth2_server`: the gateway as an OAuth 2.0 authorization server. Its
//! clients are `consumers[].oauth2_clients`; the endpoints answer on the
//! listeners before routing (docs/policies.md, "OAuth 2.0 token endpoint").

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Errors, Listener};

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Server {
    /// `iss` of every access token; what verifiers pin (`jwt.issuers`).
    pub issuer: String,
    /// `aud` of every access token; absent: no `aud` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The token endpoint (RFC 6749 §3.2).
    #[serde(default = "default_token_path")]
    pub token_path: String,
    /// The revocation endpoint (RFC 7009).
    #[serde(default = "default_revoke_path")]
    pub revoke_path: String,
    /// The public half of the signing key, as a JWK set.
    #[serde(default = "default_jwks_path")]
    pub jwks_path: String,
    /// PEM private key that signs access tokens: EC P-256 (ES256) or RSA
    /// (RS256), PKCS#8 or the traditional forms. Absent: an ES256 key is
    /// made once and kept in `state_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_access_lifetime", with = "crate::duration::serde")]
    pub access_token_lifetime: Duration,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_refresh_lifetime", with = "crate::duration::serde")]
    pub refresh_token_lifetime: Duration,
    /// Refuse token and revocation requests that did not come over TLS (a
    /// trusted proxy's `X-Forwarded-Proto: https` counts). RFC 6749 §2.3.1
    /// requires TLS wherever a client secret travels.
    #[serde(default = "default_true")]
    pub require_https: bool,
    /// Listeners (by name, or address when unnamed) that serve the
    /// endpoints; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<String>>,
}

fn default_token_path() -> String {
    "/oauth2/token".into()
}

fn default_revoke_path() -> String {
    "/oauth2/revoke".into()
}

/// Where RFC 8414 metadata usually points `jwks_uri`, and where verifiers
/// look first.
fn default_jwks_path() -> String {
    "/.well-known/jwks.json".into()
}

/// An access token cannot be revoked (it is checked without asking the
/// gateway); an hour bounds how long a leaked one works, and is what most
/// providers issue.
fn default_access_lifetime() -> Duration {
    Duration::from_secs(3600)
}

/// Long enough that a client that refreshes now and then never has to
/// authenticate again; the token is single use and revocable.
fn default_refresh_lifetime() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_true() -> bool {
    true
}

impl OAuth2Server {
    /// Longest access token lifetime accepted: a day. Longer turns an
    /// unrevocable token into a standing credential.
    pub const MAX_ACCESS_LIFETIME: Duration = Duration::from_secs(86_400);
    /// Longest refresh token lifetime accepted: a year.
    pub const MAX_REFRESH_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

    pub(super) fn validate(&self, listeners: &[Listener], errors: &mut Errors) {
        let base = "oauth2_server";
        if self.issuer.is_empty() {
            errors.push(format!("{base}.issuer"), "must not be empty");
        }
        let paths = [
            ("token_path", &self.token_path),
            ("revoke_path", &self.revoke_path),
            ("jwks_path", &self.jwks_path),
        ];
        for (i, (field, path)) in paths.iter().enumerate() {
            if !path.starts_with('/')
                || path.contains(['?', '#'])
                || path.contains(char::is_whitespace)
            {
                errors.push(
                    format!("{base}.{field}"),
                    format!("'{path}' must start with '/' and have no query, fragment or space"),
                );
            }
            if let Some((other, _)) = paths[..i].iter().find(|(_, p)| p == path) {
                errors.push(
                    format!("{base}.{field}"),
                    format!("'{path}' is already {other}"),
                );
            }
        }
        for (field, value, max) in [
            (
                "access_token_lifetime",
                self.access_token_lifetime,
                Self::MAX_ACCESS_LIFETIME,
            ),
            (
                "refresh_token_lifetime",
                self.refresh_token_lifetime,
                Self::MAX_REFRESH_LIFETIME,
            ),
        ] {
            if value < Duration::from_secs(1) || value > max {
                errors.push(
                    format!("{base}.{field}"),
                    format!(
                        "{} is out of range: 1s to {}",
                        crate::duration::format(value),
                        crate::duration::format(max)
                    ),
                );
            }
        }
        if let Some(file) = &self.signing_key_file {
            if let Err(message) = crate::token_server::SigningKey::from_file(file) {
                errors.push(format!("{base}.signing_key_file"), message);
            }
        }
        if let Some(names) = &self.listeners {
            let known: Vec<String> = listeners
                .iter()
                .map(|l| l.name.clone().unwrap_or_else(|| l.address.to_string()))
                .collect();
            if names.is_empty() {
                errors.push(
                    format!("{base}.listeners"),
                    "is empty: no listener would serve the endpoints (omit it for all)",
                );
            }
            for (i, name) in names.iter().enumerate() {
                if !known.contains(name) {
                    errors.push(
                        format!("{base}.listeners[{i}]"),
                        format!(
                            "no listener is named '{name}' (known: {})",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn errors(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml, "t.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    const BASE: &str = "listeners: [{name: public, address: '127.0.0.1:8080'}]\n";

    #[test]
    fn defaults_and_a_minimal_section() {
        let config = Config::from_yaml(
            &format!("{BASE}oauth2_server: {{issuer: 'https://gw.example'}}\n"),
            "t",
        )
        .unwrap();
        let server = config.oauth2_server.unwrap();
        assert_eq!(server.token_path, "/oauth2/token");
        assert_eq!(server.jwks_path, "/.well-known/jwks.json");
        assert_eq!(server.access_token_lifetime.as_secs(), 3600);
        assert_eq!(server.refresh_token_lifetime.as_secs(), 30 * 86_400);
        assert!(server.require_https);
    }

    #[test]
    fn every_error_has_its_path() {
        let errs = errors(&format!(
            "{BASE}oauth2_server:\n  issuer: ''\n  token_path: oauth\n  jwks_path: /oauth2/revoke\n  \
             access_token_lifetime: 2d\n  refresh_token_lifetime: 0s\n  listeners: [public, nope]\n  \
             signing_key_file: /nonexistent/key.pem\n"
        ));
        let expected = [
            "oauth2_server.issuer: must not be empty",
            "oauth2_server.token_path: 'oauth' must start with '/'",
            "oauth2_server.jwks_path: '/oauth2/revoke' is already revoke_path",
            "oauth2_server.access_token_lifetime: 2d is out of range",
            "oauth2_server.refresh_token_lifetime: 0ms is out of range",
            "oauth2_server.signing_key_file: cannot read /nonexistent/key.pem",
            "oauth2_server.listeners[1]: no listener is named 'nope' (known: public)",
        ];
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
        for (err, want) in errs.iter().zip(expected) {
            assert!(err.starts_with(want), "{err} does not start with {want}");
        }
    }

    #[test]
    fn clients_are_checked_with_their_paths() {
        let errs = errors(&format!(
            "{BASE}consumers:\n  \
             - username: a\n    oauth2_clients:\n      \
               - {{client_id: 'svc one', client_secret: short, scopes: ['read', 'bad\"scope']}}\n      \
               - {{client_id: svc}}\n  \
             - username: b\n    oauth2_clients:\n      \
               - {{client_id: svc, client_secret_hash: 'sha256:00'}}\n"
        ));
        let expected = [
            "consumers[0].oauth2_clients[0].client_id: 'svc one' must be",
            "consumers[0].oauth2_clients[0].client_secret: is shorter than 16",
            "consumers[0].oauth2_clients[0].scopes[1]: 'bad\"scope' is not a scope",
            "consumers[0].oauth2_clients[1]: needs exactly one of client_secret and client_secret_hash",
            "consumers[1].oauth2_clients[0].client_secret_hash: must be sha256:",
            "consumers[1].oauth2_clients[0].client_id: 'svc' is taken by consumers[0].oauth2_clients[1]",
        ];
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
        for (err, want) in errs.iter().zip(expected) {
            assert!(err.starts_with(want), "{err} does not start with {want}");
        }
    }
}
