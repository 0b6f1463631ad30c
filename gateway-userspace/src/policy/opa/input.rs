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

use bytes::Bytes;
use http::{header, request::Parts};
use serde_json::{json, Map, Value};

use crate::policy::{
    consumers::{X_CONSUMER_CUSTOM_ID, X_CONSUMER_ID},
    percent_decode, Caller,
};

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
fn push(map: &mut Map<String, Value>, name: String, value: Value) {
    match map.get_mut(&name) {
        None => {
            map.insert(name, value);
        }
        Some(Value::Array(values)) => values.push(value),
        Some(first) => {
            let first = first.take();
            map.insert(name, Value::Array(vec![first, value]));
        }
    }
}

fn headers(parts: &Parts) -> Map<String, Value> {
    let mut map = Map::with_capacity(parts.headers.keys_len());
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        push(&mut map, name.as_str().to_string(), Value::String(value));
    }
    map
}

fn decoded(text: &str) -> String {
    percent_decode(text).map_or_else(
        || text.to_string(),
        |bytes| String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn querystring(parts: &Parts) -> Map<String, Value> {
    let mut map = Map::new();
    for pair in parts.uri.query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        match pair.split_once('=') {
            Some((name, value)) => push(&mut map, decoded(name), Value::String(decoded(value))),
            None => push(&mut map, decoded(pair), Value::Bool(true)),
        }
    }
    map
}

fn consumer(parts: &Parts, caller: &Caller<'_>) -> Option<Value> {
    let consumer = caller.identity?.consumer.as_deref()?;
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let mut object = json!({
        "username": &*consumer.username,
        "groups": consumer.groups,
    });
    // What the identity headers say (set by the gateway once
    // authentication is over; a client's copies were removed).
    if let Some(id) = header(X_CONSUMER_ID) {
        object["id"] = Value::String(id);
    }
    if let Some(custom_id) = header(X_CONSUMER_CUSTOM_ID) {
        object["custom_id"] = Value::String(custom_id);
    }
    Some(object)
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
    let mut http = json!({
        "host": host(parts),
        "port": port(parts, scheme),
        "tls": if scheme == "https" { json!({"enabled": true}) } else { json!({}) },
        "method": parts.method.as_str(),
        "scheme": scheme,
        "path": parts.uri.path(),
        "querystring": querystring(parts),
        "headers": headers(parts),
    });
    if let Some(body) = body {
        http["body"] = Value::String(String::from_utf8_lossy(body).into_owned());
    }
    if let Some(body) = parsed_body {
        // Kong leaves parsed_body out when the body is not JSON.
        if let Ok(parsed) = serde_json::from_slice::<Value>(body) {
            http["parsed_body"] = parsed;
        }
    }
    let mut input = json!({
        "request": {"http": http},
        "client_ip": caller.client_ip.to_string(),
        "route": {"name": caller.route},
    });
    if let Some(consumer) = consumer(parts, caller) {
        input["consumer"] = consumer;
    }
    input
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
