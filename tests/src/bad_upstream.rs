//! Upstreams that misbehave on purpose, for the gateway's upstream tests:
//! raw TCP servers that reset, answer garbage, close early, never answer,
//! stall mid-body or answer with exact bytes ([`BadUpstream`]), and a well-formed HTTP/1.1 server with
//! a scripted status and delay that can also hold requests until released
//! ([`ScriptedUpstream`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// What a [`BadUpstream`] does with each connection, after reading the
/// request head.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Resets the connection (RST) instead of answering.
    Reset,
    /// Answers with bytes that are not HTTP, then closes.
    Garbage,
    /// Closes the connection cleanly without sending anything.
    CloseBeforeHeaders,
    /// Keeps the connection open and never answers.
    Silent,
    /// Sends `200` headers announcing 100 bytes (a Content-Length, or
    /// chunked), 10 bytes of body, then nothing while the connection stays
    /// open.
    StallBody { chunked: bool },
    /// Answers every request on the connection with these exact bytes
    /// (framing of the test's choosing, well-formed or not) and reads the
    /// next one, until the peer closes.
    Answer(&'static str),
    /// Like `Answer`, with `{path}` in the bytes replaced by the request's
    /// target, `{len}` by its length in decimal and `{hex}` in hex: each
    /// request gets an answer of its own, so that a test sees which
    /// request an answer belongs to.
    Template(&'static str),
}

pub struct BadUpstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl BadUpstream {
    /// Listens on a free loopback port.
    pub async fn start(behaviour: Misbehaviour) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(misbehave(stream, behaviour));
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn misbehave(mut stream: TcpStream, behaviour: Misbehaviour) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    match behaviour {
        Misbehaviour::Reset => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Misbehaviour::Garbage => {
            let _ = stream
                .write_all(b"SSH-2.0-OpenSSH_9.2 this is not HTTP\r\n\r\n")
                .await;
            let _ = stream.shutdown().await;
        }
        Misbehaviour::CloseBeforeHeaders => {
            let _ = stream.shutdown().await;
        }
        Misbehaviour::Silent => hold_open(stream).await,
        Misbehaviour::Template(template) => {
            let mut head = head;
            loop {
                let target = String::from_utf8_lossy(&head)
                    .split(' ')
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let answer = template
                    .replace("{path}", &target)
                    .replace("{len}", &target.len().to_string())
                    .replace("{hex}", &format!("{:x}", target.len()));
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                match read_head(&mut stream).await {
                    Some(next) => head = next,
                    None => return,
                }
            }
        }
        Misbehaviour::Answer(bytes) => loop {
            if stream.write_all(bytes.as_bytes()).await.is_err()
                || read_head(&mut stream).await.is_none()
            {
                return;
            }
        },
        Misbehaviour::StallBody { chunked } => {
            let head: &[u8] = if chunked {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"
            };
            if stream.write_all(head).await.is_ok() {
                hold_open(stream).await;
            }
        }
    }
}

/// Reads until the end of the request head (bounded); `None` if the peer
/// closed first.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < 64 * 1024 {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(head);
        }
    }
    None
}

/// Keeps the connection open until the peer closes it (or a minute passes,
/// so a test that forgets it does not leak it forever).
async fn hold_open(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A well-formed HTTP/1.1 upstream that answers every request with
/// `status` after `delay`, with body `{"upstream": name, "path": ...}`.
/// Requests to `/hold...` are announced on [`ScriptedUpstream::arrivals`]
/// and wait until [`ScriptedUpstream::release`].
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    pub arrivals: mpsc::UnboundedReceiver<String>,
    requests: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    pub async fn start(name: &str, status: u16, delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        let requests = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Script {
            name: name.to_string(),
            status,
            delay,
            requests: requests.clone(),
            arrived,
            released,
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let script = script.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let script = script.clone();
                        async move { Ok::<_, Infallible>(script.answer(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            arrivals,
            requests,
            release,
            task,
        })
    }

    /// Requests answered or being answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Lets every held request (and any later one) finish.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Script {
    name: String,
    status: u16,
    delay: Duration,
    requests: Arc<AtomicUsize>,
    arrived: mpsc::UnboundedSender<String>,
    released: watch::Receiver<bool>,
}

impl Script {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let path = req.uri().path().to_string();
        if path.starts_with("/hold") {
            let _ = self.arrived.send(path.clone());
            let mut released = self.released.clone();
            // Bounded: a test that never releases still ends.
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                released.wait_for(|released| *released),
            )
            .await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let body = serde_json::json!({ "upstream": self.name, "path": path }).to_string();
        Response::builder()
            .status(self.status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    }
}
