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

use std::collections::{btree_map::Entry, BTreeMap};

use bytes::Bytes;
use http::{header, request::Parts};
use regorus::Value;

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

fn headers(parts: &Parts) -> Value {
    let mut map = Map::new();
    for (name, value) in &parts.headers {
        push(&mut map, name.as_str(), text(value.as_bytes()));
    }
    Value::from(map)
}

fn decoded(text: &str) -> Value {
    match percent_decode(text) {
        Some(bytes) => self::text(&bytes),
        None => Value::from(text),
    }
}

fn querystring(parts: &Parts) -> Value {
    let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) else {
        return Value::new_object();
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
        push(&mut map, &name, value);
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

/// The input document for a request. `body` and `parsed_body`: the
/// buffered body when the policy asks for it as text or as JSON.
pub fn document(
    parts: &Parts,
    caller: &Caller<'_>,
    body: Option<&Bytes>,
    parsed_body: Option<&Bytes>,
) -> Value {
    let scheme = caller.conn.forwarding.scheme();
    let tls = if scheme == "https" {
        object([("enabled", Value::Bool(true))])
    } else {
        Value::new_object()
    };
    let mut http = Map::from([
        (Value::from("host"), Value::from(host(parts))),
        (Value::from("port"), Value::from(port(parts, scheme) as u64)),
        (Value::from("tls"), tls),
        (Value::from("method"), Value::from(parts.method.as_str())),
        (Value::from("scheme"), Value::from(scheme)),
        (Value::from("path"), Value::from(parts.uri.path())),
        (Value::from("querystring"), querystring(parts)),
        (Value::from("headers"), headers(parts)),
    ]);
    if let Some(body) = body {
        http.insert(Value::from("body"), text(body));
    }
    if let Some(body) = parsed_body {
        // Kong leaves parsed_body out when the body is not JSON.
        if let Ok(parsed) = serde_json::from_slice::<Value>(body) {
            http.insert(Value::from("parsed_body"), parsed);
        }
    }
    let mut input = Map::from([
        (
            Value::from("request"),
            object([("http", Value::from(http))]),
        ),
        (
            Value::from("client_ip"),
            Value::from(caller.client_ip.to_string()),
        ),
        (
            Value::from("route"),
            object([("name", Value::from(caller.route))]),
        ),
    ]);
    if let Some(consumer) = consumer(parts, caller) {
        input.insert(Value::from("consumer"), consumer);
    }
    Value::from(input)
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
