//! A JWKS document's keys, fetched in the background on an interval, and
//! again (at most every `min_refetch_interval`) when a token names a `kid`
//! not in the set: a provider's key rotation needs no restart. When the
//! endpoint is down, the last good keys stay. The document's URL is
//! configured, or found by OpenID discovery (and rediscovered when the
//! fetch fails).

use std::{
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use http::Uri;
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
    Algorithm,
};

use super::{
    discovery::Discovery,
    fetch::{FetchGate, Fetcher},
};
use crate::{config, jws::VerifyingKey};

/// One usable key of the set.
pub struct JwkKey {
    pub kid: Option<String>,
    /// The key parsed for each algorithm it may verify: its `alg` when
    /// the document says, else what its type allows (never HMAC: a public
    /// document holds no secret).
    pub keys: Vec<Arc<VerifyingKey>>,
}

/// Where the document is.
enum Location {
    Url(Uri),
    Discovered(Arc<Discovery>),
}

pub struct JwksKeys {
    location: Location,
    fetcher: Fetcher,
    keys: RwLock<Arc<Vec<JwkKey>>>,
    gate: FetchGate,
}

impl JwksKeys {
    /// The key set of `config`; the first fetch starts at once in the
    /// background when there is a runtime to run it.
    pub fn start(config: &config::Jwks, fetcher: Fetcher) -> Result<Arc<Self>, String> {
        let url: Uri = config.url.parse().map_err(|e| format!("jwks.url: {e}"))?;
        Ok(Self::launch(
            Location::Url(url),
            fetcher,
            config.refresh_interval,
            config.min_refetch_interval,
        ))
    }

    /// The key set at the `jwks_uri` that `discovery` finds.
    pub fn start_discovered(
        discovery: Arc<Discovery>,
        fetcher: Fetcher,
        refresh_interval: Duration,
        min_refetch: Duration,
    ) -> Arc<Self> {
        Self::launch(
            Location::Discovered(discovery),
            fetcher,
            refresh_interval,
            min_refetch,
        )
    }

    fn launch(
        location: Location,
        fetcher: Fetcher,
        refresh_interval: Duration,
        min_refetch: Duration,
    ) -> Arc<Self> {
        let keys = Arc::new(Self {
            location,
            fetcher,
            keys: RwLock::new(Arc::new(Vec::new())),
            gate: FetchGate::new(min_refetch),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refresh(Arc::downgrade(&keys), refresh_interval));
        }
        keys
    }

    /// The keys that may verify a token with this `kid` and `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerifyingKey>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .filter_map(|k| k.keys.iter().find(|key| key.algorithm() == alg))
            .cloned()
            .collect()
    }

    /// A token named a key the set lacks: fetch again unless a fetch
    /// started within `min_refetch_interval` (then the caller gets what is
    /// there). Concurrent callers share one fetch.
    pub async fn refetch(&self) {
        self.gate.on_demand(|| self.fetch_now()).await;
    }

    async fn fetch_now(&self) {
        let discovery = match &self.location {
            Location::Url(url) => return self.publish(url, self.fetch(url).await),
            Location::Discovered(discovery) => discovery,
        };
        let Some(url) = discovery.endpoints().await.and_then(|e| e.jwks_uri.clone()) else {
            tracing::warn!(issuer = discovery.issuer(), "no jwks_uri discovered");
            return;
        };
        let result = self.fetch(&url).await;
        if result.is_err() {
            // The provider may have moved its keys: discover again, and
            // retry once if the document now names another URL.
            discovery.rediscover().await;
            if let Some(moved) = discovery
                .endpoints()
                .await
                .and_then(|e| e.jwks_uri.clone())
                .filter(|u| *u != url)
            {
                let result = self.fetch(&moved).await;
                return self.publish(&moved, result);
            }
        }
        self.publish(&url, result);
    }

    async fn fetch(&self, url: &Uri) -> Result<Vec<JwkKey>, String> {
        self.fetcher.get(url).await.and_then(|body| parse(&body))
    }

    fn publish(&self, url: &Uri, result: Result<Vec<JwkKey>, String>) {
        match result {
            Ok(keys) => {
                tracing::debug!(%url, keys = keys.len(), "JWKS fetched");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(error) => {
                tracing::warn!(%url, %error, "JWKS fetch failed; keeping the last good keys");
            }
        }
    }
}

/// Fetches now and then every `interval`, until the key set is dropped
/// (its config was replaced).
async fn refresh(keys: Weak<JwksKeys>, interval: Duration) {
    loop {
        let Some(strong) = keys.upgrade() else {
            return;
        };
        strong.gate.now(|| strong.fetch_now()).await;
        drop(strong);
        tokio::time::sleep(interval).await;
    }
}

/// The usable keys of a JWKS document; keys of unknown types are skipped,
/// a document that is not a key set is an error.
pub fn parse(body: &[u8]) -> Result<Vec<JwkKey>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no `keys` array")?;
    Ok(list
        .iter()
        .filter_map(|value| {
            let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
            // A key that does not parse for an algorithm is left out (the
            // rest of the set still serves).
            let keys: Vec<Arc<VerifyingKey>> = algorithms(&jwk)
                .into_iter()
                .filter_map(|alg| VerifyingKey::from_jwk(&jwk, alg).ok().map(Arc::new))
                .collect();
            if keys.is_empty() {
                return None;
            }
            Some(JwkKey {
                kid: jwk.common.key_id.clone(),
                keys,
            })
        })
        .collect())
}

fn algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    match jwk
        .common
        .key_algorithm
        .and_then(|ka| serde_json::to_value(ka).ok())
        .and_then(|v| v.as_str().and_then(|s| s.parse::<Algorithm>().ok()))
    {
        // The document pins the key: only that algorithm, and only if the
        // key's type can do it.
        Some(alg) => by_type.into_iter().filter(|a| *a == alg).collect(),
        None => by_type,
    }
}
