//! The upstream every proxy is put in front of: a small hyper HTTP/1.1 server
//! that answers fixed bodies from memory, with keep-alive and TCP_NODELAY.
//! It builds nothing per request (unlike the integration tests' echo
//! upstream, which writes JSON), so the proxies, not the upstream, are what
//! the benchmarks measure.
//!
//! It runs as a child process of the harness (`xgate-bench serve-upstream
//! --listen ADDR --threads N`), so that its CPU time is its own and the
//! harness can stop it by PID like every other server.
//!
//! | path | answer |
//! |---|---|
//! | `/small` | 200, [`SMALL_BODY`] (64 bytes) |
//! | `/large` | 200, 64 KiB |
//! | anything else | 404 |
//!
//! A request body (the PGO training's uploads) is read to its end first,
//! so that the connection stays usable.

use std::{convert::Infallible, net::SocketAddr};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;

/// How the harness starts this server: `xgate-bench serve-upstream ...`.
pub const SUBCOMMAND: &str = "serve-upstream";

/// The small response body: 64 bytes, recognisable in a readiness check.
pub const SMALL_BODY: &[u8; 64] =
    b"xgate-bench upstream: small response, 64 bytes of body.........\n";
/// Size of the large response body.
pub const LARGE_LEN: usize = 64 * 1024;

/// The two benchmarked paths and their body sizes.
pub const SMALL_PATH: &str = "/small";
pub const LARGE_PATH: &str = "/large";

fn large_body() -> Bytes {
    let mut body = Vec::with_capacity(LARGE_LEN);
    while body.len() < LARGE_LEN {
        body.extend_from_slice(SMALL_BODY);
    }
    body.truncate(LARGE_LEN);
    Bytes::from(body)
}

/// `serve-upstream --listen ADDR [--threads N]`: serves until killed.
pub fn main(args: &[String]) -> Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let mut threads = 2usize;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let v = args.next().context("--listen needs IP:port")?;
                listen = Some(v.parse().with_context(|| format!("--listen {v}"))?);
            }
            "--threads" => {
                let v = args.next().context("--threads needs a number")?;
                threads = v.parse().with_context(|| format!("--threads {v}"))?;
            }
            other => bail!("serve-upstream: unknown argument {other}"),
        }
    }
    let listen = listen.context("serve-upstream needs --listen IP:port")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let small = Bytes::from_static(SMALL_BODY);
    let large = large_body();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("serve-upstream: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (small, large) = (small.clone(), large.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let body = match req.uri().path() {
                    SMALL_PATH => Some(small.clone()),
                    LARGE_PATH => Some(large.clone()),
                    _ => None,
                };
                let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
                    || req.headers().contains_key(header::TRANSFER_ENCODING);
                async move {
                    if has_body {
                        // An error ends the connection, as it would anyway.
                        let _ = req.into_body().collect().await;
                    }
                    let response = match body {
                        Some(body) => Response::builder()
                            .header(header::CONTENT_TYPE, "text/plain")
                            .body(Full::new(body)),
                        None => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, Infallible>(response.expect("static response parts"))
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_their_sizes() {
        assert_eq!(SMALL_BODY.len(), 64);
        let large = large_body();
        assert_eq!(large.len(), LARGE_LEN);
        assert_eq!(&large[..64], SMALL_BODY);
    }
}
