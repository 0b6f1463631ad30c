//! OpenID Connect discovery: the provider's
//! `<issuer>/.well-known/openid-configuration`, which names its JWKS and
//! introspection endpoints. Fetched when first needed and again (at most
//! every `min_interval`) when an endpoint it named fails: a provider that
//! moves its endpoints needs no restart. The last good document stays
//! while the provider is down.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use http::Uri;
use serde_json::Value;

use super::fetch::{FetchGate, Fetcher};

/// What xgate reads of a discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub jwks_uri: Option<Uri>,
    pub introspection_endpoint: Option<Uri>,
}

pub struct Discovery {
    issuer: String,
    url: Uri,
    fetcher: Fetcher,
    endpoints: RwLock<Option<Arc<Endpoints>>>,
    gate: FetchGate,
}

impl Discovery {
    pub fn new(issuer: &str, fetcher: Fetcher, min_interval: Duration) -> Result<Self, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
        .parse()
        .map_err(|e| format!("issuer: {e}"))?;
        Ok(Self {
            issuer: issuer.to_string(),
            url,
            fetcher,
            endpoints: RwLock::new(None),
            gate: FetchGate::new(min_interval),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The endpoints of the last good document; the first call fetches it
    /// (rate-limited like a rediscovery when the provider is down).
    pub async fn endpoints(&self) -> Option<Arc<Endpoints>> {
        if let Some(known) = self.current() {
            return Some(known);
        }
        self.rediscover().await;
        self.current()
    }

    fn current(&self) -> Option<Arc<Endpoints>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// An endpoint failed: fetch the document again unless a fetch started
    /// within `min_interval`. Concurrent callers share one fetch.
    pub async fn rediscover(&self) {
        self.gate.on_demand(|| self.fetch()).await;
    }

    async fn fetch(&self) {
        match self
            .fetcher
            .get(&self.url)
            .await
            .and_then(|body| parse(&body, &self.issuer))
        {
            Ok(endpoints) => {
                tracing::debug!(issuer = %self.issuer, ?endpoints, "OpenID provider discovered");
                *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) =
                    Some(Arc::new(endpoints));
            }
            Err(error) => tracing::warn!(
                url = %self.url, %error,
                "OpenID discovery failed; keeping the last good document"
            ),
        }
    }
}

/// The endpoints of a discovery document, which must name `issuer`
/// exactly (OpenID Connect Discovery §4.3: a document naming another
/// issuer could make xgate trust that issuer's keys).
pub fn parse(body: &[u8], issuer: &str) -> Result<Endpoints, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let named = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
    if named != issuer {
        return Err(format!(
            "the document names issuer '{named}', not '{issuer}'"
        ));
    }
    let uri = |name: &str| -> Result<Option<Uri>, String> {
        let Some(text) = doc.get(name).and_then(Value::as_str) else {
            return Ok(None);
        };
        if !(text.starts_with("https://") || text.starts_with("http://")) {
            return Err(format!("{name} '{text}' is not an http(s) URL"));
        }
        text.parse()
            .map(Some)
            .map_err(|e| format!("{name} '{text}': {e}"))
    };
    Ok(Endpoints {
        jwks_uri: uri("jwks_uri")?,
        introspection_endpoint: uri("introspection_endpoint")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_must_name_the_configured_issuer() {
        let doc = br#"{"issuer":"https://idp.test","jwks_uri":"https://idp.test/jwks",
            "introspection_endpoint":"https://idp.test/introspect"}"#;
        let endpoints = parse(doc, "https://idp.test").unwrap();
        assert_eq!(endpoints.jwks_uri.unwrap(), "https://idp.test/jwks");
        assert_eq!(
            endpoints.introspection_endpoint.unwrap(),
            "https://idp.test/introspect"
        );
        assert!(parse(doc, "https://idp.test/").is_err());
        assert!(parse(doc, "https://other.test").is_err());
        assert!(parse(br#"{"issuer":"x","jwks_uri":"file:///etc/passwd"}"#, "x").is_err());
        let bare = parse(br#"{"issuer":"x"}"#, "x").unwrap();
        assert_eq!(bare.jwks_uri, None);
    }
}
