//! Liveness and readiness, for load balancers and orchestrators, and the
//! TCP listener (`admin.metrics_address`) that serves them with /metrics to
//! scrapers and probes that cannot reach the admin socket, and with the
//! status page (`status_page`).
//!
//! - `GET /livez`: 200 while the process serves at all.
//! - `GET /readyz`: 200 once the config is loaded and every listener is
//!   bound; 503 before that and from the moment a shutdown starts (the
//!   drain), so a balancer takes the instance out before it stops.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};

use super::status_page::StatusPage;
use crate::{
    config::MetricsListen,
    lists::SourceLists,
    telemetry::{exposition::Format, Metrics},
};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Where the daemon is in its life.
#[derive(Default)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Config loaded, listeners bound.
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// A shutdown started: no new connections, in-flight ones finishing.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }

    /// `/readyz`'s status and body.
    pub fn answer(&self) -> (StatusCode, &'static str) {
        match self.0.load(Ordering::SeqCst) {
            READY => (StatusCode::OK, "ready\n"),
            DRAINING => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        }
    }
}

/// What the health endpoints and /metrics read.
pub struct Observed {
    pub metrics: Arc<Metrics>,
    /// The running upstreams' health series are made from it when read.
    pub runtime: Arc<crate::proxy::RuntimeHandle>,
    pub lists: Arc<SourceLists>,
    pub readiness: Arc<Readiness>,
}

impl Observed {
    /// The Prometheus text, with the kernel's counters when XDP is on.
    pub fn metrics_text(&self) -> String {
        let counters = self
            .lists
            .xdp_status()
            .and_then(Result::ok)
            .map(|s| s.interface_counters);
        let mut text = self.metrics.render(counters.as_ref());
        super::upstreams::add_metrics(self.runtime.load().upstreams(), &mut text);
        text
    }

    /// `/livez`, `/readyz` and `/metrics` (OpenMetrics when the `Accept`
    /// header asks for it, else Prometheus's classic text format); None for
    /// any other path.
    pub fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<Response<Body>> {
        if !matches!(path, "/livez" | "/readyz" | "/metrics") {
            return None;
        }
        if method != Method::GET && method != Method::HEAD {
            return Some(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"));
        }
        Some(match path {
            "/livez" => text(StatusCode::OK, "live\n"),
            "/readyz" => {
                let (status, body) = self.readiness.answer();
                text(status, body)
            }
            _ => {
                let format = Format::negotiate(headers);
                respond(
                    StatusCode::OK,
                    format.content_type(),
                    format.render(self.metrics_text()),
                )
            }
        })
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(status, "text/plain", body.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response parts")
}

/// Binds `admin.metrics_address`: a configured address that cannot be
/// bound fails the start; the default one (when absent) gives a warning and
/// no listener, since several daemons on one host cannot all have it. The
/// note is what `xgate status` shows.
pub async fn bind(listen: MetricsListen) -> anyhow::Result<(Option<TcpListener>, String)> {
    let address = match listen {
        MetricsListen::Off => return Ok((None, super::status_page::listener_note(listen, None))),
        MetricsListen::Required(a) | MetricsListen::Default(a) => a,
    };
    match TcpListener::bind(address).await {
        Ok(listener) => Ok((
            Some(listener),
            super::status_page::listener_note(listen, None),
        )),
        Err(e) if matches!(listen, MetricsListen::Default(_)) => {
            let note = super::status_page::listener_note(listen, Some(&e));
            tracing::warn!("metrics listener {note}");
            Ok((None, note))
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot listen on admin.metrics_address {address}: {e}"
        )),
    }
}

/// Serves /metrics, /livez, /readyz and the status page until `stop`
/// flips, which the daemon does after the drain: through the drain,
/// /readyz says 503.
pub async fn serve(listener: TcpListener, page: Arc<StatusPage>, mut stop: watch::Receiver<bool>) {
    let sampler = tokio::spawn(page.clone().sample(stop.clone()));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let (stream, peer) = stream;
        let page = page.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (method, uri, headers) = (req.method(), req.uri(), req.headers());
                let response = page
                    .observed
                    .answer(method, uri.path(), headers)
                    .or_else(|| page.answer(method, uri.path(), uri.query(), headers, peer))
                    .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n"));
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(
                    error = %crate::error_text::Chain(&error),
                    "metrics listener: connection error"
                );
            }
        });
    }
    let _ = sampler.await;
}
