//! An OPA-compatible policy server for the tests (no OPA binary exists in
//! the reachable registries): regorus behind OPA's REST data API,
//! `POST /v1/data/<path>` with `{"input": ...}` answered
//! `{"result": ...}` (no `result` when the decision is undefined). It can
//! be made slow, made to answer garbage, and taken down; it counts the
//! requests and the connections they came on.
//!
//! It also answers Envoy's `ext_authz` filter in HTTP-service mode (the
//! peer of xgate's remote mode in `xgate-bench policies`): Envoy sends the
//! original request's method, path (after its `path_prefix`,
//! [`EXT_AUTHZ_PREFIX`]) and headers; the decision to evaluate is named in
//! the [`EXT_AUTHZ_DECISION`] header (Envoy's `headers_to_add`). The input
//! is shaped as xgate's (`input.request.http{host, method, path,
//! querystring, headers}`), so the same Rego decides both; the answer is
//! 200 to allow (with the result's `headers`), the result's `status`
//! (default 403) with its `headers` and `{"message"}` to deny.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// As OPA would.
    Normal = 0,
    /// Not JSON, with status 200.
    Garbage = 1,
    /// As OPA would, after `delay`.
    Slow = 2,
}

struct State {
    /// Compiled once; each request evaluates on a clone from `idle` (an
    /// engine is not shareable while it evaluates), so requests on
    /// different connections run in parallel.
    prototype: regorus::Engine,
    idle: Mutex<Vec<regorus::Engine>>,
    behaviour: AtomicU8,
    delay_ms: AtomicU64,
    requests: AtomicUsize,
    connections: AtomicUsize,
}

pub struct PolicyServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyServer {
    /// Serves the Rego files `policies` on 127.0.0.1 (a free port, or
    /// `addr` to come back where it was).
    pub async fn start(policies: &[&Path], addr: Option<SocketAddr>) -> Self {
        let mut engine = regorus::Engine::new();
        for path in policies {
            engine.add_policy_from_file(path).expect("a valid policy");
        }
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            prototype: engine,
            idle: Mutex::new(Vec::new()),
            behaviour: AtomicU8::new(Behaviour::Normal as u8),
            delay_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                served.connections.fetch_add(1, Ordering::SeqCst);
                let state = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
        self.state
            .behaviour
            .store(behaviour as u8, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Stops listening; open connections end with their tasks.
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where Envoy's `ext_authz` checks are sent: its `path_prefix`, followed
/// by the original request's path.
pub const EXT_AUTHZ_PREFIX: &str = "/ext_authz";

/// The header of an `ext_authz` check naming the decision (`a/b/c`, as in
/// OPA's data API path); it is not part of the input.
pub const EXT_AUTHZ_DECISION: &str = "x-ext-authz-decision";

/// The original path of an `ext_authz` check, if `path` is one.
fn ext_authz_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(EXT_AUTHZ_PREFIX)?;
    match rest {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// `rule` (`data.a.b`) evaluated on `input` by an engine of the pool.
fn evaluate(
    state: &State,
    rule: String,
    input: serde_json::Value,
) -> anyhow::Result<regorus::Value> {
    let mut engine = state
        .idle
        .lock()
        .unwrap()
        .pop()
        .unwrap_or_else(|| state.prototype.clone());
    engine.set_input(regorus::Value::from(input));
    let result = engine.eval_rule(rule);
    state.idle.lock().unwrap().push(engine);
    result
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let behaviour = state.behaviour.load(Ordering::SeqCst);
    if behaviour == Behaviour::Slow as u8 {
        tokio::time::sleep(Duration::from_millis(state.delay_ms.load(Ordering::SeqCst))).await;
    }
    if behaviour == Behaviour::Garbage as u8 {
        return json(200, "<html>policy engine exploded</html>".into());
    }
    if ext_authz_path(&path).is_some() {
        return ext_authz(state, &parts);
    }
    let Some(rule) = path.strip_prefix("/v1/data/") else {
        return json(404, r#"{"code":"not_found"}"#.into());
    };
    let rule = format!("data.{}", rule.replace('/', "."));
    let input: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json(
                400,
                serde_json::json!({"code": "invalid_parameter", "message": e.to_string()})
                    .to_string(),
            )
        }
    };
    match evaluate(state, rule, input["input"].clone()) {
        Ok(regorus::Value::Undefined) => json(200, "{}".into()),
        Ok(value) => json(
            200,
            format!("{{\"result\":{}}}", value.to_json_str().unwrap()),
        ),
        Err(e) => json(
            500,
            serde_json::json!({"code": "internal_error", "message": e.to_string()}).to_string(),
        ),
    }
}

/// `{"name": "value"}`, or `{"name": ["v1", "v2"]}` for a repeated one,
/// as xgate's input has them.
fn push(
    map: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    value: serde_json::Value,
) {
    use serde_json::Value;
    match map.get_mut(name) {
        None => {
            map.insert(name.to_string(), value);
        }
        Some(Value::Array(values)) => values.push(value),
        Some(first) => {
            let first = first.take();
            map.insert(name.to_string(), Value::Array(vec![first, value]));
        }
    }
}

/// The input of an `ext_authz` check: the original request as xgate's
/// input document shows it (what Envoy forwards of it).
fn ext_authz_input(req: &hyper::http::request::Parts) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut headers = Map::new();
    for (name, value) in &req.headers {
        if name.as_str() == EXT_AUTHZ_DECISION {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        push(&mut headers, name.as_str(), Value::String(value));
    }
    let mut querystring = Map::new();
    for pair in req.uri.query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            _ if pair.is_empty() => {}
            Some((name, value)) => push(&mut querystring, name, Value::String(value.into())),
            None => push(&mut querystring, pair, Value::Bool(true)),
        }
    }
    let authority = req
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    json!({"request": {"http": {
        "host": host,
        "method": req.method.as_str(),
        "path": ext_authz_path(req.uri.path()).unwrap_or("/"),
        "querystring": querystring,
        "headers": headers,
    }}})
}

/// An Envoy `ext_authz` check: 200 allows, any other status refuses with
/// that status, headers and body.
fn ext_authz(state: &State, req: &hyper::http::request::Parts) -> Response<Full<Bytes>> {
    use serde_json::Value;
    let Some(decision) = req
        .headers
        .get(EXT_AUTHZ_DECISION)
        .and_then(|d| d.to_str().ok())
    else {
        return json(
            400,
            format!(
                r#"{{"message":"an ext_authz check names its decision in {EXT_AUTHZ_DECISION}"}}"#
            ),
        );
    };
    let rule = format!("data.{}", decision.trim_matches('/').replace('/', "."));
    let result = match evaluate(state, rule, ext_authz_input(req)) {
        Ok(regorus::Value::Undefined) => Value::Bool(false),
        Ok(value) => serde_json::from_str(&value.to_json_str().unwrap()).unwrap(),
        Err(e) => {
            return json(
                500,
                serde_json::json!({"message": e.to_string()}).to_string(),
            )
        }
    };
    let (allow, object) =
        match &result {
            Value::Bool(allow) => (*allow, None),
            Value::Object(object) => (
                object.get("allow") == Some(&Value::Bool(true)),
                Some(object),
            ),
            other => return json(
                500,
                serde_json::json!({"message": format!("the result is not a decision: {other}")})
                    .to_string(),
            ),
        };
    let field = |name: &str| object.and_then(|o| o.get(name));
    let status = if allow {
        200
    } else {
        field("status").and_then(Value::as_u64).unwrap_or(403) as u16
    };
    let message = match field("message") {
        Some(Value::String(message)) => message.clone(),
        Some(other) => other.to_string(),
        None => "forbidden by policy".into(),
    };
    let body = if allow {
        String::new()
    } else {
        serde_json::json!({ "message": message }).to_string()
    };
    let mut response = json(status, body);
    if let Some(Value::Object(headers)) = field("headers") {
        for (name, value) in headers {
            let values = match value {
                Value::Array(values) => values.clone(),
                value => vec![value.clone()],
            };
            for value in values {
                let text = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_string);
                if let (Ok(name), Ok(value)) = (
                    hyper::header::HeaderName::from_bytes(name.as_bytes()),
                    hyper::header::HeaderValue::from_str(&text),
                ) {
                    response.headers_mut().append(name, value);
                }
            }
        }
    }
    response
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
