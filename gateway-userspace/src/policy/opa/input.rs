//! The input document a policy decides on, shaped as Kong's OPA plugin
//! sends it, so policies written for Kong run unchanged:
//!
//! ```json
//! {"request": {"http": {"host", "port", "tls", "method", "scheme", "path",
//!                       "querystring", "headers", "body"?, "parsed_body"?}},
//!  "client_ip", "route": {"name"}, "consumer"?: {"username", "id",
//!  "custom_id"?, "groups"}}
//! ```
//!
//! and the cache key: the fields of the same document a decision is said
//! to depend on.
//!
//! An embedded policy gets only the parts of the document its Rego can
//! read (`reads`): the same decision, for less work per request.

use std::collections::{btree_map::Entry, BTreeMap};

use bytes::Bytes;
use http::{header, request::Parts};
use regorus::Value;

use super::reads::Reads;
use crate::policy::{
    consumers::{X_CONSUMER_CUSTOM_ID, X_CONSUMER_ID},
    percent_decode, Caller,
};

/// The document is built as regorus values directly: the embedded engine
/// evaluates it as it is (no JSON tree built first and converted after),
/// and the remote mode serializes it once.
type Map = BTreeMap<Value, Value>;

/// The request's host (no port), from the one authority normalization
/// left.
fn host(parts: &Parts) -> &str {
    let authority = parts.uri.host().or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let authority = authority.unwrap_or("");
    match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some((host, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

fn port(parts: &Parts, scheme: &str) -> u16 {
    parts
        .uri
        .port_u16()
        .or_else(|| {
            let host = parts.headers.get(header::HOST)?.to_str().ok()?;
            let (_, port) = host.rsplit_once(':')?;
            port.parse().ok()
        })
        .unwrap_or(if scheme == "https" { 443 } else { 80 })
}

/// `{"name": "value"}`, or `{"name": ["v1", "v2"]}` for a repeated one (as
/// Kong's `get_headers`/`get_query`); a query parameter without `=` is
/// `true`.
fn push(map: &mut Map, name: &str, value: Value) {
    match map.entry(Value::from(name)) {
        Entry::Vacant(entry) => {
            entry.insert(value);
        }
        Entry::Occupied(mut entry) => {
            let slot = entry.get_mut();
            if let Ok(values) = slot.as_array_mut() {
                values.push(value);
            } else {
                let first = std::mem::replace(slot, Value::Null);
                *slot = Value::from(vec![first, value]);
            }
        }
    }
}

fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::from(text),
        Err(_) => Value::from(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// The headers, or only those `reads` names.
fn headers(parts: &Parts, reads: &Reads) -> Value {
    let mut map = Map::new();
    match reads {
        Reads::All => {
            for (name, value) in &parts.headers {
                push(&mut map, name.as_str(), text(value.as_bytes()));
            }
        }
        Reads::Fields(names) => {
            for name in names.keys() {
                // The document's names are lowercase: a name with capitals
                // is in neither document.
                let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                    continue;
                };
                if header.as_str() != name {
                    continue;
                }
                for value in parts.headers.get_all(&header) {
                    push(&mut map, name, text(value.as_bytes()));
                }
            }
        }
    }
    Value::from(map)
}

fn decoded(text: &str) -> Value {
    match percent_decode(text) {
        Some(bytes) => self::text(&bytes),
        None => Value::from(text),
    }
}

/// The query's parameters, or only those `reads` names.
fn querystring(parts: &Parts, reads: &Reads) -> Value {
    let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) else {
        return Value::new_object();
    };
    let wanted = |name: &str| match reads {
        Reads::All => true,
        Reads::Fields(names) => names.contains_key(name),
    };
    let mut map = Map::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.split_once('=') {
            Some((name, value)) => (decoded(name), decoded(value)),
            None => (decoded(pair), Value::Bool(true)),
        };
        let name = name.as_string().map(|n| n.to_string()).unwrap_or_default();
        if wanted(&name) {
            push(&mut map, &name, value);
        }
    }
    Value::from(map)
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::from(
        fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<Map>(),
    )
}

fn consumer(parts: &Parts, caller: &Caller<'_>) -> Option<Value> {
    let consumer = caller.identity?.consumer.as_deref()?;
    let groups: Vec<Value> = consumer
        .groups
        .iter()
        .map(|g| Value::from(g.as_str()))
        .collect();
    let mut object = Map::from([
        (Value::from("username"), Value::from(&*consumer.username)),
        (Value::from("groups"), Value::from(groups)),
    ]);
    // What the identity headers say (set by the gateway once
    // authentication is over; a client's copies were removed).
    for (key, name) in [("id", X_CONSUMER_ID), ("custom_id", X_CONSUMER_CUSTOM_ID)] {
        if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            object.insert(Value::from(key), Value::from(value));
        }
    }
    Some(Value::from(object))
}

/// The input document for a request, or of it what `reads` says a policy
/// can read (the parts it cannot read are left out: its decision is the
/// same). `body` and `parsed_body`: the buffered body when the policy asks
/// for it as text or as JSON.
pub fn document(
    parts: &Parts,
    caller: &Caller<'_>,
    body: Option<&Bytes>,
    parsed_body: Option<&Bytes>,
    reads: &Reads,
) -> Value {
    let mut input = Map::new();
    if let Some(http_reads) = reads.field("request").and_then(|r| r.field("http")) {
        input.insert(
            Value::from("request"),
            object([("http", http(parts, caller, body, parsed_body, http_reads))]),
        );
    }
    if reads.field("client_ip").is_some() {
        input.insert(
            Value::from("client_ip"),
            Value::from(caller.client_ip.to_string()),
        );
    }
    if reads.field("route").is_some() {
        input.insert(
            Value::from("route"),
            object([("name", Value::from(caller.route))]),
        );
    }
    if reads.field("consumer").is_some() {
        if let Some(consumer) = consumer(parts, caller) {
            input.insert(Value::from("consumer"), consumer);
        }
    }
    Value::from(input)
}

/// `input.request.http`, or of it what `reads` names.
fn http(
    parts: &Parts,
    caller: &Caller<'_>,
    body: Option<&Bytes>,
    parsed_body: Option<&Bytes>,
    reads: &Reads,
) -> Value {
    let scheme = caller.conn.forwarding.scheme();
    let mut http = Map::new();
    let mut put = |name: &str, value: &dyn Fn(&Reads) -> Value| {
        if let Some(reads) = reads.field(name) {
            http.insert(Value::from(name), value(reads));
        }
    };
    put("host", &|_| Value::from(host(parts)));
    put("port", &|_| Value::from(port(parts, scheme) as u64));
    put("tls", &|_| {
        if scheme == "https" {
            object([("enabled", Value::Bool(true))])
        } else {
            Value::new_object()
        }
    });
    put("method", &|_| Value::from(parts.method.as_str()));
    put("scheme", &|_| Value::from(scheme));
    put("path", &|_| Value::from(parts.uri.path()));
    put("querystring", &|reads| querystring(parts, reads));
    put("headers", &|reads| headers(parts, reads));
    if let (Some(body), Some(_)) = (body, reads.field("body")) {
        http.insert(Value::from("body"), text(body));
    }
    if let (Some(body), Some(_)) = (parsed_body, reads.field("parsed_body")) {
        // Kong leaves parsed_body out when the body is not JSON.
        if let Ok(parsed) = serde_json::from_slice::<Value>(body) {
            http.insert(Value::from("parsed_body"), parsed);
        }
    }
    Value::from(http)
}

/// The cache key of a request: each of `fields` (validated names) with its
/// value, separated so that no two different requests share a key.
pub fn cache_key(fields: &[String], parts: &Parts, caller: &Caller<'_>) -> String {
    let mut key = String::with_capacity(64);
    for field in fields {
        let value: std::borrow::Cow<str> = match field.as_str() {
            "consumer" => caller
                .identity
                .and_then(|i| i.consumer.as_deref())
                .map_or("".into(), |c| c.username.as_ref().into()),
            "method" => parts.method.as_str().into(),
            "path" => parts.uri.path().into(),
            "host" => host(parts).into(),
            "querystring" => parts.uri.query().unwrap_or("").into(),
            "client_ip" => caller.client_ip.to_string().into(),
            "route" => caller.route.into(),
            other => {
                let name = other.strip_prefix("header:").unwrap_or(other);
                let values: Vec<_> = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                values.join("\n").into()
            }
        };
        // Length-prefixed: `a` + `bc` differs from `ab` + `c`.
        key.push_str(&value.len().to_string());
        key.push(':');
        key.push_str(&value);
    }
    key
}
