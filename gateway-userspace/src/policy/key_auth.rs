//! `type: key-auth`: an API key in a header or a query parameter, looked up
//! by its SHA-256 (so keys may be stored as hashes, and the lookup costs
//! the same for any number of consumers).

use std::sync::Arc;

use http::{request::Parts, uri::PathAndQuery, HeaderName, HeaderValue};

use super::{consumers::sha256, AuthError, AuthResult, Authenticator, Check, Consumers, Identity};
use crate::config;

pub struct KeyAuth {
    headers: Vec<HeaderName>,
    query: Vec<String>,
    hide: bool,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
}

impl KeyAuth {
    pub fn new(config: &config::KeyAuth, consumers: Arc<Consumers>) -> Self {
        Self {
            headers: if config.in_header {
                config
                    .key_names
                    .iter()
                    .map(|n| HeaderName::from_bytes(n.as_bytes()).expect("validated name"))
                    .collect()
            } else {
                Vec::new()
            },
            query: if config.in_query {
                config.key_names.clone()
            } else {
                Vec::new()
            },
            hide: config.hide_credentials,
            consumers,
            // Kong's challenge for a missing or wrong key.
            challenge: HeaderValue::from_static("Key realm=\"xgate\""),
        }
    }

    fn fail(&self, description: &'static str, presented: bool) -> AuthResult {
        Err(AuthError {
            status: http::StatusCode::UNAUTHORIZED,
            challenge: self.challenge.clone(),
            description,
            presented,
        })
    }

    /// The one key in the request (as its SHA-256, or refused for its
    /// size), and where it was. Nothing is copied: the key is hashed where
    /// it lies (a header), or once decoded (a query parameter).
    fn find(&self, parts: &Parts) -> Result<Option<([u8; 32], Place)>, &'static str> {
        let mut found: Option<(&[u8], Place)> = None;
        let mut decoded = None;
        for (i, name) in self.headers.iter().enumerate() {
            for value in parts.headers.get_all(name) {
                if found.is_some() {
                    return Err("more than one API key in the request");
                }
                found = Some((value.as_bytes(), Place::Header(i)));
            }
        }
        if !self.query.is_empty() {
            if let Some(query) = parts.uri.query() {
                for pair in query.split('&') {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if let Some(i) = self.query.iter().position(|q| q == name) {
                        if found.is_some() || decoded.is_some() {
                            return Err("more than one API key in the request");
                        }
                        let value = percent_decode(value).ok_or("malformed API key")?;
                        decoded = Some((value, Place::Query(i)));
                    }
                }
            }
        }
        let found = match (&found, &decoded) {
            (Some((key, place)), _) => Some((*key, *place)),
            (None, Some((key, place))) => Some((key.as_slice(), *place)),
            (None, None) => None,
        };
        match found {
            None => Ok(None),
            Some((key, _)) if key.is_empty() || key.len() > MAX_KEY_BYTES => Err("invalid API key"),
            Some((key, place)) => Ok(Some((sha256(key), place))),
        }
    }
}

/// Longer presented keys are refused without being hashed.
const MAX_KEY_BYTES: usize = 1024;

/// Where the key was: the index of its header name or query parameter.
#[derive(Clone, Copy)]
enum Place {
    Header(usize),
    Query(usize),
}

impl Authenticator for KeyAuth {
    fn check<'a>(&'a self, parts: &'a mut Parts) -> Check<'a> {
        Check::Now(self.check_now(parts))
    }
}

impl KeyAuth {
    fn check_now(&self, parts: &mut Parts) -> AuthResult {
        let (digest, place) = match self.find(parts) {
            Ok(Some(found)) => found,
            Ok(None) => return self.fail("no API key in the request", false),
            Err(description) => return self.fail(description, true),
        };
        // Found by its digest: what a lookup's timing could reveal is about
        // the SHA-256 of the key, never the key's own bytes.
        let Some(owner) = self.consumers.key(&digest) else {
            return self.fail("invalid API key", true);
        };
        if owner.expires.is_some_and(|at| at <= unix_now()) {
            return self.fail("API key expired", true);
        }
        if self.hide {
            match place {
                Place::Header(i) => {
                    parts.headers.remove(&self.headers[i]);
                }
                Place::Query(i) => remove_query_param(parts, &self.query[i]),
            }
        }
        Ok(Identity {
            consumer: Some(owner.consumer.clone()),
            credential: Some(owner.credential.clone()),
            anonymous: false,
        })
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `%XX` and `+` decoded; `None` for a broken escape.
pub(crate) fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Drops every `name=...` pair from the query string.
pub(super) fn remove_query_param(parts: &mut Parts, name: &str) {
    let Some(pq) = parts.uri.path_and_query() else {
        return;
    };
    let kept: Vec<&str> = pq
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |p| p.0) != name)
        .collect();
    let full = if kept.is_empty() {
        pq.path().to_string()
    } else {
        format!("{}?{}", pq.path(), kept.join("&"))
    };
    if let Ok(pq) = full.parse::<PathAndQuery>() {
        parts.uri = pq.into();
    }
}
