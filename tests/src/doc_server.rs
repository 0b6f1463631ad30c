//! A server of one JSON document that a test can change, take down and
//! bring back while xgate fetches it (a JWKS, a discovery document), and
//! that counts the fetches.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    body: Mutex<String>,
    down: AtomicBool,
    fetches: AtomicUsize,
}

pub struct DocServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl DocServer {
    /// Serves `body` as `application/json` at every path on 127.0.0.1.
    pub async fn start(body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        *state.body.lock().unwrap() = body.to_string();
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            state.fetches.fetch_add(1, Ordering::SeqCst);
                            let response = if state.down.load(Ordering::SeqCst) {
                                Response::builder()
                                    .status(503)
                                    .body(Full::new(Bytes::new()))
                            } else {
                                let body = state.body.lock().unwrap().clone();
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                            };
                            Ok::<_, Infallible>(response.expect("valid response"))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, body: &str) {
        *self.state.body.lock().unwrap() = body.to_string();
    }

    /// 503 to every fetch until brought back.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for DocServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
