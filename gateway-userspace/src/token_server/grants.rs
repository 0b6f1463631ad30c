//! What a token or revocation request gets, decided apart from HTTP and
//! with the time passed in, so that every rule is tested on its own.

use std::sync::Arc;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    form::{Credentials, Form},
    refresh::{self, RefreshTokens, Refused},
    OAuthError, SigningKey,
};
use crate::{
    config,
    config::is_scope_token,
    policy::{consumers::OAuth2Client, Consumers},
};

/// RFC 9068 §2.1: the `typ` of a JWT access token.
const ACCESS_TOKEN_TYPE: &str = "at+jwt";

pub struct Grants {
    signing: SigningKey,
    issuer: String,
    audience: Option<String>,
    access_lifetime: i64,
    refresh_lifetime: i64,
    refresh: Arc<RefreshTokens>,
    rng: SystemRandom,
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct Issued {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Always sent, also when it is what was asked: clients need not
    /// guess.
    pub scope: String,
}

impl Grants {
    pub fn new(
        config: &config::OAuth2Server,
        signing: SigningKey,
        refresh: Arc<RefreshTokens>,
    ) -> Self {
        Self {
            signing,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_lifetime: config.access_token_lifetime.as_secs() as i64,
            refresh_lifetime: config.refresh_token_lifetime.as_secs() as i64,
            refresh,
            rng: SystemRandom::new(),
        }
    }

    /// The client these credentials belong to. An unknown id and a wrong
    /// secret get the same answer.
    pub fn authenticate<'c>(
        consumers: &'c Consumers,
        credentials: &Credentials,
    ) -> Result<&'c Arc<OAuth2Client>, OAuthError> {
        let refused = OAuthError::InvalidClient("unknown client or wrong secret");
        let client = consumers
            .oauth2_client(&credentials.client_id)
            .ok_or(refused.clone())?;
        // Every candidate is compared, so the time does not say which
        // form of the secret matched.
        let matched = credentials
            .secrets
            .iter()
            .fold(false, |any, secret| client.secret_matches(secret) | any);
        if matched {
            Ok(client)
        } else {
            Err(refused)
        }
    }

    /// The token endpoint (RFC 6749 §4.4 and §6).
    pub fn token(
        &self,
        client: &OAuth2Client,
        form: &Form,
        now: i64,
    ) -> Result<Issued, OAuthError> {
        match form.get("grant_type") {
            None => Err(OAuthError::InvalidRequest("grant_type is required")),
            Some("client_credentials") => self.client_credentials(client, form.get("scope"), now),
            Some("refresh_token") => self.refresh_token(client, form, now),
            Some(_) => Err(OAuthError::UnsupportedGrantType),
        }
    }

    fn client_credentials(
        &self,
        client: &OAuth2Client,
        scope: Option<&str>,
        now: i64,
    ) -> Result<Issued, OAuthError> {
        let scopes = match scope {
            Some(text) => requested(text, &client.scopes)?,
            None => client.scopes.clone(),
        };
        let refresh_token = client.refresh.then(|| {
            self.refresh
                .issue(&client.client_id, &scopes, now, self.refresh_lifetime)
        });
        self.issue(client, &scopes, refresh_token, now)
    }

    fn refresh_token(
        &self,
        client: &OAuth2Client,
        form: &Form,
        now: i64,
    ) -> Result<Issued, OAuthError> {
        if !client.refresh {
            return Err(OAuthError::UnauthorizedClient(
                "this client is not given refresh tokens",
            ));
        }
        let token = form
            .get("refresh_token")
            .ok_or(OAuthError::InvalidRequest("refresh_token is required"))?;
        // Checked before the token is spent: a bad scope costs the client
        // nothing.
        let narrowed = form
            .get("scope")
            .map(|text| requested(text, &client.scopes))
            .transpose()?;
        let (next, granted) = self
            .refresh
            .redeem(
                token,
                &client.client_id,
                now,
                self.refresh_lifetime,
                narrowed.as_deref(),
            )
            .map_err(|refused| {
                if refused == Refused::Replayed {
                    tracing::warn!(
                        client_id = %client.client_id,
                        "a used refresh token came again: its family is revoked"
                    );
                }
                match refused {
                    Refused::NotGranted => {
                        OAuthError::InvalidScope("the refresh token was not granted this scope")
                    }
                    _ => OAuthError::InvalidGrant("invalid, expired or revoked refresh token"),
                }
            })?;
        // What the config allows now bounds what the grant once had: a
        // scope taken from a client ends at its next refresh.
        let scopes: Vec<String> = narrowed
            .unwrap_or(granted)
            .into_iter()
            .filter(|s| client.scopes.contains(s))
            .collect();
        self.issue(client, &scopes, Some(next), now)
    }

    /// A signed access token for `client` with `scopes`.
    fn issue(
        &self,
        client: &OAuth2Client,
        scopes: &[String],
        refresh_token: Option<String>,
        now: i64,
    ) -> Result<Issued, OAuthError> {
        let scope = scopes.join(" ");
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| OAuthError::ServerError)?;
        let mut claims = json!({
            "iss": self.issuer,
            "sub": &*client.consumer.username,
            "client_id": &*client.client_id,
            "iat": now,
            "exp": now + self.access_lifetime,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        if let Some(audience) = &self.audience {
            claims["aud"] = json!(audience);
        }
        if !scope.is_empty() {
            claims["scope"] = Value::String(scope.clone());
        }
        let access_token = self
            .signing
            .sign(ACCESS_TOKEN_TYPE, &claims)
            .map_err(|error| {
                tracing::error!(%error, "cannot sign an access token");
                OAuthError::ServerError
            })?;
        Ok(Issued {
            access_token,
            token_type: "Bearer",
            expires_in: self.access_lifetime,
            refresh_token,
            scope,
        })
    }

    /// The revocation endpoint (RFC 7009 §2.1). `Ok` whether or not
    /// anything was revoked: a token that is unknown, or another client's,
    /// is an invalid token, and those get no error (§2.2).
    pub fn revoke(&self, client: &OAuth2Client, form: &Form) -> Result<(), OAuthError> {
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is required"))?;
        if refresh::is_refresh_token(token) {
            if self.refresh.revoke(token, &client.client_id) {
                tracing::info!(client_id = %client.client_id, "refresh token revoked");
            }
            Ok(())
        } else if token.split('.').count() == 3 {
            // A JWT access token is checked without asking the gateway:
            // nothing here can revoke it (§2.2.1). It expires.
            Err(OAuthError::UnsupportedTokenType)
        } else {
            Ok(())
        }
    }
}

/// The scopes of a `scope` parameter (RFC 6749 §3.3), each allowed for the
/// client, without repeats.
fn requested(text: &str, allowed: &[String]) -> Result<Vec<String>, OAuthError> {
    let mut out: Vec<String> = Vec::new();
    for scope in text.split(' ').filter(|s| !s.is_empty()) {
        if !is_scope_token(scope) {
            return Err(OAuthError::InvalidScope("malformed scope"));
        }
        if !allowed.iter().any(|a| a == scope) {
            return Err(OAuthError::InvalidScope(
                "a requested scope is not allowed for this client",
            ));
        }
        if !out.iter().any(|s| s == scope) {
            out.push(scope.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use jsonwebtoken::{jwk::Jwk, Algorithm, DecodingKey, Validation};

    use super::*;

    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        grants: Grants,
        consumers: Consumers,
        dir: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("xgate-grants-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = config::Config::from_yaml(
            "listeners: [{address: '127.0.0.1:1'}]\n\
             oauth2_server: {issuer: 'https://gw.test', audience: api, access_token_lifetime: 10m}\n\
             consumers:\n\
             - username: billing\n  oauth2_clients:\n\
             \x20\x20- {client_id: svc, client_secret: correct-horse-battery, scopes: [read, write], refresh: true}\n\
             \x20\x20- {client_id: plain, client_secret: correct-horse-battery}\n",
            "t",
        )
        .unwrap();
        let consumers = Consumers::compile(&config.consumers).unwrap();
        let store = Arc::new(RefreshTokens::open(&dir).unwrap());
        let grants = Grants::new(
            config.oauth2_server.as_ref().unwrap(),
            SigningKey::generated(&dir).unwrap(),
            store,
        );
        Fixture {
            grants,
            consumers,
            dir,
        }
    }

    impl Fixture {
        fn client(&self, id: &str) -> Arc<OAuth2Client> {
            self.consumers.oauth2_client(id).unwrap().clone()
        }

        fn token(&self, id: &str, form: &str, now: i64) -> Result<Issued, OAuthError> {
            let form = Form::parse(form.as_bytes()).unwrap();
            self.grants.token(&self.client(id), &form, now)
        }

        /// The access token's claims, verified as a JWKS consumer would.
        fn claims(&self, token: &str) -> Value {
            let jwk: Jwk =
                serde_json::from_value(self.grants.signing.jwks()["keys"][0].clone()).unwrap();
            let mut v = Validation::new(Algorithm::ES256);
            v.set_audience(&["api"]);
            v.set_issuer(&["https://gw.test"]);
            // The fixture's clock is not the wall clock.
            v.validate_exp = false;
            jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
                .unwrap()
                .claims
        }
    }

    #[test]
    fn client_credentials_gets_a_verifiable_access_token() {
        let f = fixture("cc");
        let issued = f
            .token("svc", "grant_type=client_credentials", NOW)
            .unwrap();
        assert_eq!(issued.token_type, "Bearer");
        assert_eq!(issued.expires_in, 600);
        assert_eq!(issued.scope, "read write", "no scope asked: all allowed");
        assert!(issued.refresh_token.is_some(), "refresh: true");
        let claims = f.claims(&issued.access_token);
        assert_eq!(claims["iss"], "https://gw.test");
        assert_eq!(claims["sub"], "billing");
        assert_eq!(claims["client_id"], "svc");
        assert_eq!(claims["aud"], "api");
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["exp"], NOW + 600);
        assert_eq!(claims["scope"], "read write");
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 22));

        let other = f
            .token("svc", "grant_type=client_credentials", NOW)
            .unwrap();
        assert_ne!(
            f.claims(&other.access_token)["jti"],
            claims["jti"],
            "every token has its own jti"
        );
        let plain = f
            .token("plain", "grant_type=client_credentials", NOW)
            .unwrap();
        assert!(plain.refresh_token.is_none(), "refresh is opt-in");
        assert!(f.claims(&plain.access_token).get("scope").is_none());
    }

    #[test]
    fn scopes_are_a_subset_of_the_allowed() {
        let f = fixture("scope");
        let issued = f
            .token(
                "svc",
                "grant_type=client_credentials&scope=write+write",
                NOW,
            )
            .unwrap();
        assert_eq!(issued.scope, "write");
        for bad in ["admin", "read admin", "re\"ad"] {
            let form = format!(
                "grant_type=client_credentials&scope={}",
                bad.replace(' ', "+")
            );
            assert!(
                matches!(f.token("svc", &form, NOW), Err(OAuthError::InvalidScope(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn grant_types_and_missing_parameters() {
        let f = fixture("types");
        assert!(matches!(
            f.token("svc", "grant_type=password&username=a&password=b", NOW),
            Err(OAuthError::UnsupportedGrantType)
        ));
        assert!(matches!(
            f.token("svc", "scope=read", NOW),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            f.token("svc", "grant_type=refresh_token", NOW),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            f.token("plain", "grant_type=refresh_token&refresh_token=x", NOW),
            Err(OAuthError::UnauthorizedClient(_))
        ));
    }

    #[test]
    fn refresh_rotates_narrows_and_detects_replay() {
        let f = fixture("refresh");
        let first = f
            .token("svc", "grant_type=client_credentials&scope=read+write", NOW)
            .unwrap()
            .refresh_token
            .unwrap();
        // A scope the grant lacks: refused, and the token is not spent.
        let bad = f.token(
            "svc",
            &format!("grant_type=refresh_token&refresh_token={first}&scope=admin"),
            NOW + 1,
        );
        assert!(matches!(bad, Err(OAuthError::InvalidScope(_))));
        // Narrowed for this access token only.
        let second = f
            .token(
                "svc",
                &format!("grant_type=refresh_token&refresh_token={first}&scope=read"),
                NOW + 2,
            )
            .unwrap();
        assert_eq!(second.scope, "read");
        assert_eq!(f.claims(&second.access_token)["iat"], NOW + 2);
        let next = second.refresh_token.unwrap();
        let third = f
            .token(
                "svc",
                &format!("grant_type=refresh_token&refresh_token={next}"),
                NOW + 3,
            )
            .unwrap();
        assert_eq!(
            third.scope, "read write",
            "the family keeps the grant's scope"
        );
        let latest = third.refresh_token.unwrap();

        // `first` again: a replay. Refused, and `latest` dies with it.
        let replay = f.token(
            "svc",
            &format!("grant_type=refresh_token&refresh_token={first}"),
            NOW + 4,
        );
        assert!(matches!(replay, Err(OAuthError::InvalidGrant(_))));
        let after = f.token(
            "svc",
            &format!("grant_type=refresh_token&refresh_token={latest}"),
            NOW + 5,
        );
        assert!(matches!(after, Err(OAuthError::InvalidGrant(_))));
    }

    #[test]
    fn refresh_tokens_expire() {
        let f = fixture("expire");
        let token = f
            .token("svc", "grant_type=client_credentials", NOW)
            .unwrap()
            .refresh_token
            .unwrap();
        let late = f.token(
            "svc",
            &format!("grant_type=refresh_token&refresh_token={token}"),
            NOW + 30 * 86_400,
        );
        assert!(matches!(late, Err(OAuthError::InvalidGrant(_))));
    }

    #[test]
    fn authentication_compares_secrets() {
        let f = fixture("auth");
        let creds = |id: &str, secrets: &[&str]| Credentials {
            client_id: id.into(),
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        };
        let ok = Grants::authenticate(&f.consumers, &creds("svc", &["correct-horse-battery"]));
        assert_eq!(&*ok.unwrap().client_id, "svc");
        // Either form of a Basic secret may match.
        let ok = Grants::authenticate(
            &f.consumers,
            &creds("svc", &["decoded wrong", "correct-horse-battery"]),
        );
        assert!(ok.is_ok());
        for (id, secret) in [
            ("svc", "correct-horse-batterY"),
            ("nobody", "x"),
            ("svc", ""),
        ] {
            assert!(
                matches!(
                    Grants::authenticate(&f.consumers, &creds(id, &[secret])),
                    Err(OAuthError::InvalidClient(_))
                ),
                "{id}:{secret}"
            );
        }
    }

    #[test]
    fn revocation() {
        let f = fixture("revoke");
        let svc = f.client("svc");
        let token = f
            .token("svc", "grant_type=client_credentials", NOW)
            .unwrap()
            .refresh_token
            .unwrap();
        let revoke = |client: &OAuth2Client, form: &str| {
            f.grants
                .revoke(client, &Form::parse(form.as_bytes()).unwrap())
        };
        // Another client's attempt: no error, and nothing revoked (the
        // owner's refresh still works).
        revoke(&f.client("plain"), &format!("token={token}")).unwrap();
        let token = f
            .token(
                "svc",
                &format!("grant_type=refresh_token&refresh_token={token}"),
                NOW + 1,
            )
            .unwrap()
            .refresh_token
            .unwrap();
        let access = f
            .token("svc", "grant_type=client_credentials", NOW)
            .unwrap();
        assert!(matches!(
            revoke(&svc, &format!("token={}", access.access_token)),
            Err(OAuthError::UnsupportedTokenType)
        ));
        assert!(matches!(
            revoke(&svc, ""),
            Err(OAuthError::InvalidRequest(_))
        ));
        revoke(&svc, "token=unknown-token").unwrap();
        revoke(
            &svc,
            &format!("token={token}&token_type_hint=refresh_token"),
        )
        .unwrap();
        let used = f.token(
            "svc",
            &format!("grant_type=refresh_token&refresh_token={token}"),
            NOW + 2,
        );
        assert!(matches!(used, Err(OAuthError::InvalidGrant(_))));
    }
}
