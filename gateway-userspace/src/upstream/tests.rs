//! `Upstream::dispatch` against small in-process servers: which target each
//! attempt reaches, what is retried, what the budget stops, what is counted.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Body as HttpBody, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::exchange::{BoxError, ConnInfo, ConnTimer, ForwardFields};

/// Answers every request with `status`, its name in `x-name`, and the size
/// of the request body it read in `x-body-bytes`.
async fn server(name: &'static str, status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("x-name", name)
                            .header("x-body-bytes", body.len())
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A loopback port nothing listens on.
fn dead() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn upstream(targets: &[SocketAddr], extra: &str) -> (Upstream, Arc<Metrics>) {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let yaml = format!(
        "{{targets: [{}], connect_timeout: 1s, timeout: 5s{extra}}}",
        targets.join(", ")
    );
    let config: config::Upstream = serde_yaml::from_str(&yaml).unwrap();
    let metrics = Arc::new(Metrics::default());
    (Upstream::new("u", &config, &metrics).unwrap(), metrics)
}

fn ctx() -> RequestContext {
    let client: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    RequestContext::new(std::sync::Arc::new(ConnInfo::new(
        client, client, "http", None,
    )))
}

fn request(method: &str, body: &'static [u8]) -> Request<Body> {
    let body: Body = if body.is_empty() {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(Bytes::from_static(body))
            .map_err(|never| match never {})
            .boxed()
    };
    Request::builder()
        .method(method)
        .uri("/x")
        .header("host", "gateway.test")
        .body(body)
        .unwrap()
}

fn name(response: &Response<UpstreamBody>) -> &str {
    response.headers()["x-name"].to_str().unwrap()
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_target_with_its_body() {
    let live = server("live", 200).await;
    let dead = dead();
    let (u, metrics) = upstream(&[dead, live], "");
    // Round robin starts with the dead target, then alternates.
    for _ in 0..4 {
        let mut ctx = ctx();
        let response = u
            .dispatch(
                request("POST", b"not idempotent, still safe"),
                &ForwardFields::default(),
                &mut ctx,
            )
            .await
            .expect("retried on the live target");
        assert_eq!(name(&response), "live");
        assert_eq!(response.headers()["x-body-bytes"], "26", "body replayed");
        assert_eq!(ctx.upstream_target, Some(live), "the last attempt's target");
        assert!(ctx.upstream_duration.is_some());
        response.into_body().collect().await.unwrap();
    }
    let text = metrics.render(None);
    assert!(
        text.contains(&format!(
            "xgate_upstream_duration_seconds_count{{upstream=\"u\",target=\"{live}\"}} 4"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "xgate_upstream_duration_seconds_count{{upstream=\"u\",target=\"{dead}\"}} 0"
        )),
        "no headers from the dead target, no sample (the series exists from the start): {text}"
    );
    // Each refusal by the dead target was counted, and retried.
    let value = |series: String| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    let refused = value(format!(
        "xgate_upstream_errors_total{{upstream=\"u\",target=\"{dead}\",kind=\"upstream_unavailable\"}}"
    ));
    assert!(refused > 0, "{text}");
    let retried = value(format!(
        "xgate_upstream_retries_total{{upstream=\"u\",target=\"{dead}\"}}"
    ));
    assert_eq!(retried, refused, "{text}");
    assert!(
        !text.contains("xgate_upstream_target_healthy{"),
        "health series are the admin's, made from the upstreams: {text}"
    );
}

#[tokio::test]
async fn without_retries_the_connect_failure_surfaces() {
    let live = server("live", 200).await;
    let (u, _) = upstream(&[dead(), live], ", retries: 0");
    let error = u
        .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Rejection::UpstreamConnect {
                timed_out: false,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn statuses_are_retried_for_idempotent_requests_without_a_body_only() {
    let failing = server("failing", 503).await;
    let live = server("live", 200).await;
    for (method, body, expected) in [
        ("GET", &b""[..], "live"),
        ("HEAD", b"", "live"),
        ("DELETE", b"", "live"),
        ("POST", b"", "failing"),
        ("PATCH", b"", "failing"),
        ("PUT", b"payload", "failing"),
    ] {
        // A fresh upstream: round robin's first pick is `failing`.
        let (u, _) = upstream(&[failing, live], ", retry_on_status: [503]");
        let response = u
            .dispatch(request(method, body), &ForwardFields::default(), &mut ctx())
            .await
            .unwrap();
        assert_eq!(
            name(&response),
            expected,
            "{method} with {} bytes",
            body.len()
        );
        if expected == "failing" {
            assert_eq!(response.status(), 503);
        }
    }
}

#[tokio::test]
async fn an_exhausted_budget_returns_the_original_failure() {
    let failing = server("failing", 503).await;
    let live = server("live", 200).await;
    let (u, _) = upstream(
        &[failing, live],
        ", retry_on_status: [503], retry_budget: {ratio: 0, min_per_second: 0.1, window: 20s}",
    );
    // A reserve of 2 retries in 20 s, no share of traffic.
    let mut names = Vec::new();
    for _ in 0..6 {
        let response = u
            .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx())
            .await
            .unwrap();
        names.push(format!(
            "{}:{}",
            name(&response),
            response.status().as_u16()
        ));
    }
    assert_eq!(
        names,
        [
            "live:200",    // failing → retried
            "live:200",    // straight to live
            "live:200",    // failing → retried (2nd and last)
            "live:200",    // straight to live
            "failing:503", // failing, budget spent: its 503 is the answer
            "live:200",
        ]
    );
}

#[tokio::test]
async fn a_single_target_is_retried_on_itself_after_a_connect_failure() {
    let (u, _) = upstream(&[dead()], ", retries: 3");
    let mut ctx = ctx();
    let error = u
        .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx)
        .await
        .unwrap_err();
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    assert!(ctx.upstream_target.is_some());
    assert!(
        ctx.upstream_duration.is_none(),
        "no headers from any attempt"
    );
}

#[tokio::test]
async fn least_conn_counts_a_request_until_its_body_is_done() {
    let a = server("a", 200).await;
    let b = server("b", 200).await;
    let (u, _) = upstream(&[a, b], ", balancer: least_conn");
    let first = u
        .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx())
        .await
        .unwrap();
    let first_name = name(&first).to_string();
    // While the first body is unread, its target is busy.
    for _ in 0..3 {
        let other = u
            .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx())
            .await
            .unwrap();
        assert_ne!(name(&other), first_name);
        other.into_body().collect().await.unwrap();
    }
    first.into_body().collect().await.unwrap();
    let names: Vec<String> = {
        let mut names = Vec::new();
        for _ in 0..2 {
            let r = u
                .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx())
                .await
                .unwrap();
            names.push(name(&r).to_string());
            drop(r); // a dropped body ends the count too
        }
        names
    };
    assert_ne!(names[0], names[1], "idle again: shared round robin");
}

/// On an HTTP/1 connection the response deadline is kept by the
/// connection's timer (`exchange::ConnTimer`), not tokio's: a target that
/// never answers still gets its 504 at `timeout`, and one that answers in
/// time is not cut off by the deadline an earlier request had.
#[tokio::test]
async fn the_connection_timer_keeps_the_response_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config: config::Upstream = serde_yaml::from_str(&format!(
        "{{targets: ['{silent}'], timeout: 300ms, retries: 0}}"
    ))
    .unwrap();
    let silent_upstream = Upstream::new("silent", &config, &Arc::default()).unwrap();
    let answering = server("a", 200).await;
    let config: config::Upstream = serde_yaml::from_str(&format!(
        "{{targets: ['{answering}'], timeout: 300ms, retries: 0}}"
    ))
    .unwrap();
    let answering_upstream = Upstream::new("answering", &config, &Arc::default()).unwrap();

    let client: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let conn = std::sync::Arc::new(ConnInfo::new(
        client,
        client,
        "http",
        Some(ConnTimer::new()),
    ));
    for _ in 0..2 {
        let mut ctx = RequestContext::new(conn.clone());
        let started = std::time::Instant::now();
        let fields = ForwardFields::default();
        let dispatched = silent_upstream.dispatch(request("GET", b""), &fields, &mut ctx);
        let rejection = tokio::time::timeout(std::time::Duration::from_secs(10), dispatched)
            .await
            .expect("the deadline fired")
            .unwrap_err();
        assert!(
            matches!(
                rejection,
                Rejection::UpstreamTimeout {
                    timeout_ms: 300,
                    ..
                }
            ),
            "{rejection:?}"
        );
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));

        // Past the deadline just kept: an answer in time is an answer.
        let mut ctx = RequestContext::new(conn.clone());
        let response = answering_upstream
            .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// Answers each request once it has read the body (or failed to), over
/// HTTP/1.1 or (prior knowledge) HTTP/2.
async fn reading_server(http2: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let read = req.into_body().collect().await.is_ok();
                let answer = format!("read the body: {read}");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
            });
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                if http2 {
                    let builder = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = builder.serve_connection(io, service).await;
                } else {
                    let _ = http1::Builder::new().serve_connection(io, service).await;
                }
            });
        }
    });
    addr
}

/// A request body that sends its first piece, then fails the way a
/// client's malformed chunk does.
struct BrokenBody {
    sent: bool,
}

impl HttpBody for BrokenBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        if std::mem::replace(&mut self.sent, true) {
            return std::task::Poll::Ready(Some(Err("malformed chunk size".into())));
        }
        let first = hyper::body::Frame::data(Bytes::from_static(b"first piece"));
        std::task::Poll::Ready(Some(Ok(first)))
    }
}

/// A request body that breaks off on the client's side is the client's
/// fault: a 400 rejection carrying the client's error and no penalty for
/// the target in the balancer, with either protocol to the targets (hyper's
/// HTTP/2 client resets the stream and reports that, not the body's
/// error). (Not retried either: a body that started streaming cannot be.)
#[tokio::test]
async fn a_request_body_that_fails_on_the_client_side_is_not_the_targets_fault() {
    for http2 in [false, true] {
        let a = reading_server(http2).await;
        let b = reading_server(http2).await;
        let protocol = if http2 { "http2" } else { "http1" };
        let (u, _) = upstream(
            &[a, b],
            &format!(", balancer: p2c_ewma, retries: 2, protocol: {protocol}"),
        );
        let mut ctx = ctx();
        let request = Request::builder()
            .method("POST")
            .uri("/upload")
            .header("host", "gateway.test")
            .body(BrokenBody { sent: false }.boxed())
            .unwrap();
        let rejection = u
            .dispatch(request, &ForwardFields::default(), &mut ctx)
            .await
            .expect_err("the body failed");
        assert!(
            matches!(&rejection, Rejection::RequestBody(error) if error.to_string() == "malformed chunk size"),
            "{protocol}: {rejection:?}"
        );
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rejection.kind(), "bad_request_body");

        let tried = ctx.upstream_target.expect("one attempt");
        let set = u.target_set();
        let index = set.targets.iter().position(|t| t.addr == tried).unwrap();
        let Some(Balancer::P2cEwma(p2c)) = &set.balancer else {
            unreachable!("configured above")
        };
        // A failure would count as slow as `timeout` (5 s); an untouched
        // target is at most its 30 ms start.
        let cost = p2c.cost(&set.targets, index, Instant::now());
        assert!(
            cost <= 30e6,
            "{protocol}: the target was penalised: {cost} ns"
        );
    }
}

#[tokio::test]
async fn a_dead_target_is_ejected_and_then_left_alone() {
    let live = server("live", 200).await;
    let dead = dead();
    let (u, _) = upstream(
        &[dead, live],
        ", health_checks: {passive: {consecutive_failures: 2, max_ejection_percent: 50}}",
    );
    for _ in 0..10 {
        let mut ctx = ctx();
        let response = u
            .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx)
            .await
            .expect("retried on the live target");
        assert_eq!(name(&response), "live");
    }
    let status = u.status();
    let dead_status = &status.targets[0];
    assert_eq!(dead_status.state, "ejected");
    assert_eq!(dead_status.ejections, 1, "ejected once, never tried again");
    assert!(!dead_status.takes_traffic);
    assert_eq!(status.targets[1].state, "healthy");
}

#[tokio::test]
async fn max_requests_counts_a_request_until_its_body_ends() {
    let live = server("live", 200).await;
    let (u, _) = upstream(&[live], ", circuit_breakers: {max_requests: 1}");
    let first = u
        .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx())
        .await
        .unwrap();
    let refused = u
        .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Rejection::UpstreamOverloaded { max: 1, .. }),
        "{refused}"
    );
    let limits = &u.status().limits;
    assert_eq!(
        (limits[0].limit.as_str(), limits[0].now, limits[0].shed),
        ("max_requests", 1, 1)
    );
    first.into_body().collect().await.unwrap();
    let second = u
        .dispatch(request("GET", b""), &ForwardFields::default(), &mut ctx())
        .await
        .expect("the first one's body is done");
    drop(second);
    assert_eq!(u.status().limits[0].now, 0);
}
