//! An OPA-compatible policy server for the tests (no OPA binary exists in
//! the reachable registries): regorus behind OPA's REST data API,
//! `POST /v1/data/<path>` with `{"input": ...}` answered
//! `{"result": ...}` (no `result` when the decision is undefined). It can
//! be made slow, made to answer garbage, and taken down; it counts the
//! requests and the connections they came on.

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

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
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
    let mut engine = state
        .idle
        .lock()
        .unwrap()
        .pop()
        .unwrap_or_else(|| state.prototype.clone());
    engine.set_input(regorus::Value::from(input["input"].clone()));
    let result = engine.eval_rule(rule);
    state.idle.lock().unwrap().push(engine);
    match result {
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

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
