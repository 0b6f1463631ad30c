//! Rate limits and throttling end to end through the real binary: the
//! headers and 429s of local counters, a throttle's queue, and three
//! gateways sharing one limit through a real redis-server (killed and
//! restarted mid-test).

use std::{net::SocketAddr, time::Duration};

use xgate_tests::{
    http::{send, RawResponse},
    ports::{any_port, free_port},
    process::Daemon,
    redis::RedisServer,
    upstream::EchoUpstream,
};

fn get(path: &str, extra: &[&str]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for line in extra {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

async fn call(listen: SocketAddr, path: &str, extra: &[&str]) -> RawResponse {
    send(listen, None, &get(path, extra))
        .await
        .expect("an answer")
}

/// Sends `per_gateway` requests to each gateway at once (all in flight
/// together) and returns the statuses.
async fn burst(gateways: &[SocketAddr], path: &str, tenant: &str, per_gateway: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for &gateway in gateways {
        for _ in 0..per_gateway {
            let request = get(path, &[&format!("x-tenant: {tenant}")]);
            tasks.push(tokio::spawn(async move {
                send(gateway, None, &request).await.map(|r| r.status)
            }));
        }
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap().expect("every request is answered"));
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// `name value` of a Prometheus sample whose line starts with `prefix`.
fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn local_limits_answer_429_with_headers_on_every_response() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let config = |extra: &str| {
        format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n{extra}\
             \x20 - {{name: api, match: {{path_prefix: /api}}, upstream: u,\n\
             \x20    policies: [{{type: rate-limit, algorithm: fixed_window, limits: [{{requests: 3, per: 1h}}, {{requests: 100, per: 1d}}]}}]}}\n\
             \x20 - {{name: quiet, match: {{path_prefix: /quiet}}, upstream: u,\n\
             \x20    policies: [{{type: rate-limit, hide_headers: true, key: ['header:x-tenant'], limits: [{{requests: 1, per: 1h}}]}}]}}\n",
            upstream.addr
        )
    };
    let daemon = Daemon::start(&config(""), None);
    for left in (0..3).rev() {
        let r = call(listen, "/api/x", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["upstream"], "u", "the upstream's own answer");
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
        assert_eq!(r.header("ratelimit-policy"), Some("3;w=3600, 100;w=86400"));
        let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=3600).contains(&reset), "{reset}");
    }
    let refused = call(listen, "/api/x", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["message"], "rate limit exceeded");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");

    // Hidden headers; a key per tenant (and per address without one).
    let quiet = call(listen, "/quiet", &["x-tenant: a"]).await;
    assert_eq!(quiet.status, 200);
    assert!(quiet.header("ratelimit-limit").is_none(), "{quiet:?}");
    assert_eq!(call(listen, "/quiet", &["x-tenant: a"]).await.status, 429);
    assert_eq!(call(listen, "/quiet", &["x-tenant: b"]).await.status, 200);
    assert_eq!(call(listen, "/quiet", &[]).await.status, 200);
    assert_eq!(call(listen, "/quiet", &[]).await.status, 429);

    // A reload that leaves the policies alone keeps their counters.
    let out = daemon.reload_with(&config(
        "  - {name: new, match: {path_prefix: /new}, upstream: u}\n",
    ));
    assert!(
        out.status.success(),
        "{}",
        xgate_tests::process::stderr(&out)
    );
    assert_eq!(call(listen, "/new", &[]).await.status, 200, "reloaded");
    assert_eq!(call(listen, "/api/x", &[]).await.status, 429);
    assert_eq!(call(listen, "/quiet", &["x-tenant: a"]).await.status, 429);
}

#[tokio::test]
async fn a_throttle_queues_then_refuses_past_its_queue() {
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let _daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n\
             \x20 - {{name: slow, match: {{path_prefix: /}}, upstream: u,\n\
             \x20    policies: [{{type: throttle, key: ['header:x-tenant'], rate: {{requests: 4, per: 1s}}, max_queue: 3, max_wait: 1m}}]}}\n",
            upstream.addr
        ),
        None,
    );
    let started = std::time::Instant::now();
    // One goes at once, three wait (250, 500, 750 ms), one is refused.
    let statuses = burst(&[listen], "/x", "noisy", 5).await;
    let waited = started.elapsed();
    assert_eq!(count(&statuses, 200), 4, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 1, "{statuses:?}");
    assert!(
        waited >= Duration::from_millis(700),
        "the queue is released at the rate: {waited:?}"
    );
    // Another tenant does not wait behind the noisy one.
    let one = [listen];
    let noisy = burst(&one, "/x", "noisy2", 4);
    let other = async {
        let t = std::time::Instant::now();
        let r = call(listen, "/x", &["x-tenant: quiet"]).await;
        (r.status, t.elapsed())
    };
    let (noisy, (status, quiet_wait)) = tokio::join!(noisy, other);
    assert_eq!(count(&noisy, 200), 4, "{noisy:?}");
    assert_eq!(status, 200);
    assert!(
        quiet_wait < Duration::from_millis(700),
        "the quiet tenant went at once: {quiet_wait:?}"
    );

    // A client that gives up (resets the connection: a half-close is a
    // client still waiting for its answer) leaves the queue: its place
    // goes to the next.
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(get("/x", &["x-tenant: leaver"]).as_bytes())
            .await
            .unwrap();
        stream.set_zero_linger().unwrap();
        waiting.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(waiting);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let statuses = burst(&[listen], "/x", "leaver", 3).await;
    assert_eq!(count(&statuses, 200), 3, "{statuses:?}");
}

/// The config of one of the gateways sharing `redis`.
fn shared_config(listen: SocketAddr, upstream: SocketAddr, redis: &str) -> String {
    format!(
        "listeners: [{{address: '{listen}'}}]\n\
         redis: {{url: '{redis}', timeout: 500ms, retry_interval: 100ms}}\n\
         upstreams: {{u: {{targets: ['{upstream}']}}}}\n\
         routes:\n\
         \x20 - {{name: shared, match: {{path_prefix: /shared}}, upstream: u,\n\
         \x20    policies: [{{type: rate-limit, name: shared, storage: redis, key: ['header:x-tenant'], limits: [{{requests: 30, per: 1h}}]}}]}}\n\
         \x20 - {{name: strict, match: {{path_prefix: /strict}}, upstream: u,\n\
         \x20    policies: [{{type: rate-limit, storage: redis, on_redis_error: refuse, limits: [{{requests: 1000, per: 1h}}]}}]}}\n"
    )
}

/// Three gateways, one Redis: a burst of three times the limit spread over
/// them admits exactly the limit (one atomic script per check, the
/// Redis server's clock), a previous version's counter of the same name
/// left alone. Redis killed: each counts alone (or refuses, as
/// configured) and nothing hangs. Redis back: shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_one_limit_through_redis() {
    let mut redis = RedisServer::start();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listens: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let daemons: Vec<Daemon> = listens
        .iter()
        .map(|&l| Daemon::start(&shared_config(l, upstream.addr, &redis.url()), None))
        .collect();

    // A counter of the previous version (a hash under `xgate:rl:`), full
    // in this hour's window: neither read nor written.
    let old = "xgate:rl:shared:h1:a";
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600;
    let full = format!("{hour} 30 0");
    assert_eq!(redis.command(&["HSET", old, "1", &full]).unwrap(), ":1");

    let statuses = burst(&listens, "/shared", "a", 30).await;
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 60, "{statuses:?}");
    assert_eq!(
        redis
            .command(&["GET", "xgate:rl2:shared:h1:a"])
            .unwrap()
            .split(' ')
            .nth(1),
        Some("30"),
        "the count is in Redis"
    );
    assert_eq!(redis.command(&["TYPE", old]).unwrap(), "+hash");
    assert_eq!(redis.command(&["HGET", old, "1"]).unwrap(), full);
    let r = call(listens[0], "/shared", &["x-tenant: a"]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-limit"), Some("30"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));

    // Redis dies in the middle of a burst: every request is answered.
    let during = {
        let listens = listens.clone();
        tokio::spawn(async move { burst(&listens, "/shared", "d", 40).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    redis.stop();
    let statuses = during.await.unwrap();
    assert_eq!(
        count(&statuses, 200) + count(&statuses, 429),
        120,
        "{statuses:?}"
    );
    assert!(count(&statuses, 200) >= 30, "{statuses:?}");

    // Redis is dead: each gateway counts by itself (`local`), the strict
    // route refuses (`refuse`).
    let started = std::time::Instant::now();
    let statuses = burst(&listens, "/shared", "b", 40).await;
    assert_eq!(count(&statuses, 200), 90, "30 per gateway: {statuses:?}");
    assert_eq!(count(&statuses, 429), 30, "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "nothing waited on the dead Redis for long: {:?}",
        started.elapsed()
    );
    let strict = call(listens[1], "/strict", &[]).await;
    assert_eq!(strict.status, 503, "{strict:?}");
    assert_eq!(strict.header("retry-after"), Some("1"));
    for daemon in &daemons {
        let metrics = daemon.admin_get("/metrics");
        assert!(
            metric(
                &metrics,
                "xgate_rate_limit_redis_fallbacks_total{action=\"local\"}"
            ) >= 1.0,
            "{metrics}"
        );
        assert!(
            metric(&metrics, "xgate_redis_errors_total") >= 1.0,
            "{metrics}"
        );
    }
    assert!(
        metric(
            &daemons[1].admin_get("/metrics"),
            "xgate_rate_limit_redis_fallbacks_total{action=\"refuse\"}"
        ) >= 1.0
    );
    assert!(daemons[0].log().contains("Redis call failed"));

    // Redis is back (empty): once every gateway's workers have seen it,
    // the limit is shared again.
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut probe = 0;
    'wait: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateways did not go back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Several requests per gateway (connections go to every worker).
        for &listen in &listens {
            for _ in 0..8 {
                probe += 1;
                let tenant = format!("probe{probe}");
                call(listen, "/shared", &[&format!("x-tenant: {tenant}")]).await;
                let key = format!("xgate:rl2:shared:h{}:{tenant}", tenant.len());
                if redis.command(&["EXISTS", &key]).unwrap() != ":1" {
                    continue 'wait;
                }
            }
        }
        break;
    }
    let statuses = burst(&listens, "/shared", "c", 30).await;
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 60, "{statuses:?}");
    assert!(daemons[0].log().contains("Redis answers again"));
    assert!(
        metric(
            &daemons[0].admin_get("/metrics"),
            "xgate_redis_call_duration_seconds_count"
        ) >= 1.0
    );
}

/// Every algorithm counts the same in Redis (the script) as in memory:
/// the same statuses and headers, request by request.
#[tokio::test]
async fn redis_counts_every_algorithm_as_local_counters_do() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listen = free_port();
    let policies = [
        (
            "fixed",
            "algorithm: fixed_window, limits: [{requests: 5, per: 1h}]",
        ),
        (
            "bucket",
            "algorithm: token_bucket, limits: [{requests: 1, per: 1h, burst: 3}]",
        ),
        (
            "sliding",
            "limits: [{requests: 4, per: 1h}, {requests: 3, per: 1d}]",
        ),
    ];
    let mut routes = String::new();
    for (name, policy) in policies {
        for storage in ["local", "redis"] {
            routes.push_str(&format!(
                "  - {{name: {name}-{storage}, match: {{path_prefix: /{name}/{storage}}}, upstream: u,\n\
                 \x20   policies: [{{type: rate-limit, storage: {storage}, {policy}}}]}}\n"
            ));
        }
    }
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             redis: {{url: '{}', timeout: 1s}}\n\
             upstreams: {{u: {{targets: ['{}']}}}}\n\
             routes:\n{routes}",
            redis.url(),
            upstream.addr
        ),
        None,
    );
    for (name, _) in policies {
        let mut answers = Vec::new();
        for storage in ["local", "redis"] {
            let mut seen = Vec::new();
            for _ in 0..7 {
                let r = call(listen, &format!("/{name}/{storage}"), &[]).await;
                seen.push((
                    r.status,
                    r.header("ratelimit-limit").map(str::to_string),
                    r.header("ratelimit-remaining").map(str::to_string),
                    r.header("ratelimit-policy").map(str::to_string),
                ));
            }
            answers.push(seen);
        }
        assert_eq!(answers[0], answers[1], "{name}: local, then redis");
        let admitted = answers[1].iter().filter(|a| a.0 == 200).count();
        let expected = match name {
            "fixed" => 5,
            "bucket" => 3,
            _ => 3,
        };
        assert_eq!(admitted, expected, "{name}: {:?}", answers[1]);
        assert_eq!(
            answers[1][0].2.as_deref(),
            Some((expected - 1).to_string().as_str())
        );
    }
    // Nothing was counted locally instead (no fallback).
    assert_eq!(
        metric(
            &daemon.admin_get("/metrics"),
            "xgate_rate_limit_redis_fallbacks_total"
        ),
        0.0
    );
    assert_eq!(redis.command(&["DBSIZE"]).unwrap(), ":3");
}

/// Two gateways, one Redis, 300 requests in parallel: each gateway's
/// workers send the checks that wait behind a call in flight together
/// (`xgate_redis_batch_items`), and the two admit exactly the limit
/// between them, answering none from the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_checks_of_two_gateways_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start(any_port(), "u").await.unwrap();
    let listens: Vec<SocketAddr> = (0..2).map(|_| free_port()).collect();
    let daemons: Vec<Daemon> = listens
        .iter()
        .map(|&listen| {
            Daemon::start(
                &format!(
                    "listeners: [{{address: '{listen}'}}]\n\
                     redis: {{url: '{}', timeout: 5s}}\n\
                     upstreams: {{u: {{targets: ['{}']}}}}\n\
                     routes:\n\
                     \x20 - {{name: many, match: {{path_prefix: /many}}, upstream: u,\n\
                     \x20    policies: [{{type: rate-limit, name: many, storage: redis, key: ['header:x-tenant'], limits: [{{requests: 100, per: 1h}}]}}]}}\n",
                    redis.url(),
                    upstream.addr
                ),
                None,
            )
        })
        .collect();

    let statuses = burst(&listens, "/many", "m", 150).await;
    assert_eq!(count(&statuses, 200), 100, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 200, "{statuses:?}");
    let (mut checks, mut calls) = (0.0, 0.0);
    for daemon in &daemons {
        let metrics = daemon.admin_get("/metrics");
        assert_eq!(
            metric(&metrics, "xgate_rate_limit_redis_fallbacks_total"),
            0.0,
            "{metrics}"
        );
        checks += metric(&metrics, "xgate_redis_batch_items_sum");
        calls += metric(&metrics, "xgate_redis_batch_items_count");
    }
    assert_eq!(checks, 300.0, "every check went to Redis");
    assert!(
        calls < checks,
        "300 checks in parallel made {calls} calls: none carried several"
    );
    let (evalsha, failed) = redis.command_calls("evalsha");
    assert_eq!(evalsha - failed, calls as u64, "one script run per call");
}
