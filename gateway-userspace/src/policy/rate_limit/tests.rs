//! The policy as a chain sees it: headers, refusals, keys; time paused.

use std::time::Duration;

use super::*;
use crate::telemetry::Metrics;

fn policy(yaml: &str) -> RateLimit {
    let config: config::RateLimitPolicy = serde_yaml::from_str(yaml).unwrap();
    RateLimit::new(&config, None, &Metrics::default()).unwrap()
}

fn conn() -> crate::exchange::ConnInfo {
    let addr: std::net::SocketAddr = "192.0.2.7:1".parse().unwrap();
    crate::exchange::ConnInfo::new(addr, addr, "http", None)
}

/// One request from `ip`: the answer and the response headers.
fn run(p: &RateLimit, ip: &str) -> (GuardResult, HeaderMap) {
    let conn = conn();
    let caller = Caller {
        client_ip: ip.parse().unwrap(),
        identity: None,
        route: "r",
        conn: &conn,
    };
    let mut parts = http::Request::new(()).into_parts().0;
    let mut headers = HeaderMap::new();
    let result = match p.check(&mut parts, &caller, &mut headers) {
        GuardCheck::Now(result) => result,
        GuardCheck::Later(_) => panic!("local counting never waits"),
    };
    (result, headers)
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers[name].to_str().unwrap().to_string()
}

#[tokio::test(start_paused = true)]
async fn headers_on_every_answer_and_429_with_retry_after() {
    let p = policy(
        "{limits: [{requests: 2, per: 10s}, {requests: 100, per: 1h}], algorithm: fixed_window}",
    );
    let (result, headers) = run(&p, "192.0.2.1");
    assert!(result.is_ok());
    assert_eq!(header(&headers, "ratelimit-limit"), "2");
    assert_eq!(header(&headers, "ratelimit-remaining"), "1");
    assert_eq!(header(&headers, "ratelimit-reset"), "10");
    assert_eq!(header(&headers, "ratelimit-policy"), "2;w=10, 100;w=3600");
    tokio::time::advance(Duration::from_millis(2500)).await;
    assert!(run(&p, "192.0.2.1").0.is_ok());
    let (refused, headers) = run(&p, "192.0.2.1");
    let refused = refused.unwrap_err();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.kind(), "rate_limited");
    assert_eq!(header(&headers, "ratelimit-remaining"), "0");
    assert_eq!(header(&headers, "ratelimit-reset"), "8");
    let response = refused.into_response();
    assert_eq!(response.headers()["retry-after"], "8");
    // Another client has its own count.
    assert!(run(&p, "192.0.2.2").0.is_ok());
    // The window passes.
    tokio::time::advance(Duration::from_millis(7500)).await;
    assert!(run(&p, "192.0.2.1").0.is_ok());
}

#[tokio::test(start_paused = true)]
async fn headers_can_be_hidden_and_retry_after_jittered() {
    let p =
        policy("{limits: [{requests: 1, per: 1s}], hide_headers: true, retry_after_jitter: 5s}");
    let (result, headers) = run(&p, "192.0.2.1");
    assert!(result.is_ok());
    assert!(headers.is_empty(), "{headers:?}");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let (refused, headers) = run(&p, "192.0.2.1");
        assert!(headers.is_empty());
        let response = refused.unwrap_err().into_response();
        let after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // A sliding window of 1 per second: the one request fades out
        // by the end of the next window (2 s), plus up to 5 s.
        assert!((2..=7).contains(&after), "{after}");
        seen.insert(after);
    }
    assert!(seen.len() > 3, "jitter spreads clients: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn token_bucket_refills_at_the_rate() {
    let p = policy("{limits: [{requests: 2, per: 1s, burst: 4}], algorithm: token_bucket}");
    let admitted = (0..10).filter(|_| run(&p, "192.0.2.1").0.is_ok()).count();
    assert_eq!(admitted, 4);
    tokio::time::advance(Duration::from_millis(500)).await;
    let admitted = (0..10).filter(|_| run(&p, "192.0.2.1").0.is_ok()).count();
    assert_eq!(admitted, 1);
    let (_, headers) = run(&p, "192.0.2.1");
    assert_eq!(header(&headers, "ratelimit-limit"), "4");
    assert_eq!(header(&headers, "ratelimit-policy"), "2;w=1;burst=4");
}

#[test]
fn counters_are_named_by_what_decides_the_counting() {
    let config = |yaml: &str| -> config::RateLimitPolicy { serde_yaml::from_str(yaml).unwrap() };
    let a = counters_name(&config(
        "{limits: [{requests: 2, per: 1s}], hide_headers: true}",
    ));
    let same = counters_name(&config("{limits: [{requests: 2, per: 1s}]}"));
    let other = counters_name(&config("{limits: [{requests: 3, per: 1s}]}"));
    assert_eq!(a, same, "headers do not change the counting");
    assert_ne!(a, other);
    assert_eq!(a.len(), 16);
    assert_eq!(
        counters_name(&config("{limits: [{requests: 2, per: 1s}], name: api}")),
        "api"
    );
    // Not `xgate:rl:`, the previous version's hashes (redis.lua).
    assert_eq!(
        counters_prefix(&config("{limits: [{requests: 2, per: 1s}], name: api}")),
        b"xgate:rl2:api:"
    );
    assert_eq!(
        script_spec(
            RateAlgorithm::TokenBucket,
            &config("{limits: [{requests: 2, per: 1s, burst: 5}, {requests: 10, per: 1m}]}")
                .limits
                .iter()
                .map(Limit::new)
                .collect::<Vec<_>>()
        ),
        "t 2 1000000 5 10 60000000 10"
    );
}
