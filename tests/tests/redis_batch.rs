//! The batched Redis calls of shared rate limits (`gateway_userspace::redis`
//! `batch`), with the real rate-limit script on a real redis-server: what
//! one worker's checks gather into one call, that a batch admits exactly
//! what one call per check would (two clients standing for two gateways),
//! what Redis does per call (one read of all its keys, one write per
//! counted key), that keys not in the script's format count from zero,
//! and that a Redis that stops answering mid-batch leaves nobody waiting
//! past the timeout, then is used again once it answers.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use bytes::Bytes;
use gateway_userspace::{
    config,
    redis::{BatchScript, Redis, RedisError},
    telemetry::Metrics,
};
use xgate_tests::redis::RedisServer;

/// The rate-limit policy's script, as the policy runs it.
static SCRIPT: LazyLock<BatchScript> = LazyLock::new(|| {
    BatchScript::new(
        include_str!("../../gateway-userspace/src/policy/rate_limit/redis.lua"),
        5,
        128,
    )
});

/// A client of `server` (a distinct one per `timeout`, as two gateways
/// have).
fn client(server: &RedisServer, timeout: Duration) -> Arc<Redis> {
    Redis::shared(
        &config::Redis {
            url: server.url(),
            timeout,
            connect_timeout: Duration::from_secs(2),
            retry_interval: Duration::from_millis(50),
        },
        &Metrics::default().redis,
    )
    .unwrap()
}

/// Runs every check as its own task (as requests are) on this
/// single-threaded runtime and returns the answers in order.
async fn checks(
    checks: Vec<(Arc<Redis>, &'static str, &'static str)>,
) -> Vec<Result<Vec<i64>, RedisError>> {
    let tasks: Vec<_> = checks
        .into_iter()
        .map(|(redis, key, spec)| {
            tokio::spawn(async move {
                redis
                    .batched(
                        &SCRIPT,
                        key.as_bytes().to_vec(),
                        Bytes::from_static(spec.as_bytes()),
                    )
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// 300 checks asked at once through two clients: each client sends what
/// waits in a few calls (at most 128 checks each), and the limit admits
/// exactly 60 of each key, each admitted check seeing the ones before it
/// (remaining 59 down to 0, once each).
#[tokio::test]
async fn waiting_checks_share_calls_and_admit_exactly() {
    let server = RedisServer::start();
    let a = client(&server, Duration::from_secs(5));
    let b = client(&server, Duration::from_millis(5001));
    assert!(!Arc::ptr_eq(&a, &b));
    const SPEC: &str = "s 60 3600000000 60";
    let list = (0..300)
        .map(|i| {
            let redis = if i % 2 == 0 { a.clone() } else { b.clone() };
            let key = if i % 3 == 0 {
                "xgate:rl2:t:cold"
            } else {
                "xgate:rl2:t:hot"
            };
            (redis, key, SPEC)
        })
        .collect::<Vec<_>>();
    let keys: Vec<&str> = list.iter().map(|c| c.1).collect();
    let answers = checks(list).await;
    for key in ["xgate:rl2:t:hot", "xgate:rl2:t:cold"] {
        let mut remaining: Vec<i64> = answers
            .iter()
            .zip(&keys)
            .filter(|(_, k)| **k == key)
            .map(|(a, _)| a.as_ref().expect("Redis answers"))
            .filter(|a| a[0] == 1)
            .map(|a| a[2])
            .collect();
        remaining.sort_unstable();
        assert_eq!(remaining, (0..60).collect::<Vec<_>>(), "{key}");
        assert_eq!(
            server.command(&["GET", key]).unwrap().split(' ').nth(1),
            Some("60"),
            "{key}: the count is in Redis"
        );
    }
    let refused = answers
        .iter()
        .filter(|a| a.as_ref().unwrap()[0] == 0)
        .count();
    assert_eq!(refused, 300 - 120);
    let (calls, failed) = server.command_calls("evalsha");
    // 150 checks per client: 128 + 22, plus a NOSCRIPT answer (then the
    // script is loaded) per client.
    assert!(
        calls - failed <= 6,
        "{calls} EVALSHA ({failed} failed) for 300 checks"
    );
}

/// The Redis work of a call (`redis.lua`): one MGET for every key it
/// checks and one SET per key it counted on, whether the checks share
/// keys or not; no command per check.
#[tokio::test]
async fn a_call_reads_its_keys_at_once_and_writes_each_counted_key_once() {
    let server = RedisServer::start();
    let redis = client(&server, Duration::from_secs(5));
    const SPEC: &str = "s 1000 3600000000 0";
    // The script loaded (NOSCRIPT, then SCRIPT LOAD) before counting.
    let warm = checks(vec![(redis.clone(), "xgate:rl2:w:warm", SPEC)]).await;
    assert_eq!(warm[0].as_ref().expect("Redis answers")[0], 1);

    let distinct: Vec<&'static str> = (0..200)
        .map(|i| -> &'static str { format!("xgate:rl2:w:k{i}").leak() })
        .collect();
    for keys in [distinct, vec!["xgate:rl2:w:shared"; 200]] {
        assert_eq!(server.command(&["CONFIG", "RESETSTAT"]).unwrap(), "+OK");
        let list = keys.iter().map(|&k| (redis.clone(), k, SPEC)).collect();
        let answers = checks(list).await;
        assert!(answers.iter().all(|a| a.as_ref().unwrap()[0] == 1));
        let (calls, failed) = server.command_calls("evalsha");
        let calls = calls - failed;
        assert!((2..200).contains(&calls), "{calls} calls for 200 checks");
        assert_eq!(server.command_calls("mget").0, calls, "one read per call");
        let sets = server.command_calls("set").0;
        if keys[0] == keys[1] {
            assert_eq!(sets, calls, "one write per call of the shared key");
        } else {
            assert_eq!(sets, 200, "one write per distinct key");
        }
        for command in ["get", "hmget", "hset", "pexpire"] {
            assert_eq!(server.command_calls(command).0, 0, "{command}");
        }
    }
    assert_eq!(
        server
            .command(&["GET", "xgate:rl2:w:shared"])
            .unwrap()
            .split(' ')
            .nth(1),
        Some("200")
    );
}

/// What the script does not recognise as its counters is no count: a key
/// of another type (a hash, as the previous version wrote under
/// `xgate:rl:`) or a string of another shape is read as fresh, and the
/// first admitted check replaces it; no WRONGTYPE error, no misread count.
#[tokio::test]
async fn a_key_not_in_the_scripts_format_counts_from_zero() {
    let server = RedisServer::start();
    let redis = client(&server, Duration::from_secs(5));
    const SPEC: &str = "f 3 3600000000 3";
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600;
    let full = format!("{hour} 3 0");
    server
        .command(&["HSET", "xgate:rl2:f:hash", "1", &full])
        .unwrap();
    server
        .command(&["SET", "xgate:rl2:f:text", "three requests"])
        .unwrap();
    for key in ["xgate:rl2:f:hash", "xgate:rl2:f:text"] {
        let answers = checks(vec![(redis.clone(), key, SPEC); 4]).await;
        let allowed: Vec<i64> = answers
            .iter()
            .map(|a| a.as_ref().expect("no error")[0])
            .collect();
        assert_eq!(allowed, [1, 1, 1, 0], "{key}");
        assert_eq!(server.command(&["TYPE", key]).unwrap(), "+string");
        // Three counted (not compared whole: the hour may have turned).
        let value = server.command(&["GET", key]).unwrap();
        assert_eq!(value.split(' ').nth(1), Some("3"), "{key}: {value}");
    }
}

/// Redis freezes with checks on the wire and more waiting: every check is
/// answered (an error, so the policy's fallback decides) within the
/// timeout of the batch on the wire, the waiting ones at once; new checks
/// fail at once without trying; once Redis answers again the probe puts
/// the client back to it.
#[tokio::test]
async fn a_redis_that_stops_answering_mid_batch_fails_every_check_fast() {
    let server = RedisServer::start();
    let redis = client(&server, Duration::from_millis(300));
    const SPEC: &str = "f 1000000 3600000000 1000000";
    let first = checks(vec![(redis.clone(), "xgate:rl2:o:k", SPEC)]).await;
    assert_eq!(first[0].as_ref().expect("Redis answers")[0], 1);

    server.pause();
    let list = (0..200)
        .map(|_| (redis.clone(), "xgate:rl2:o:k", SPEC))
        .collect::<Vec<_>>();
    // Generous bound: the contract is 300 ms; a hang is what fails here.
    let answers = tokio::time::timeout(Duration::from_secs(20), checks(list))
        .await
        .expect("no check waits on a frozen Redis");
    for answer in &answers {
        assert!(
            matches!(
                answer,
                Err(RedisError::Batch(_) | RedisError::Down | RedisError::Timeout(_))
            ),
            "{answer:?}"
        );
    }
    // The call on the wire timed out (ours, or the connection's own
    // response timeout, whichever fired first).
    assert!(
        answers.iter().any(|a| match a {
            Err(RedisError::Batch(e)) => match &**e {
                RedisError::Timeout(_) => true,
                RedisError::Failed(e) => e.is_timeout(),
                _ => false,
            },
            _ => false,
        }),
        "the batch on the wire timed out: {:?}",
        answers
            .iter()
            .find(|a| matches!(a, Err(RedisError::Batch(_))))
    );
    assert!(!redis.available());
    let now = checks(vec![(redis.clone(), "xgate:rl2:o:k", SPEC)]).await;
    assert!(matches!(now[0], Err(RedisError::Down)), "{:?}", now[0]);

    server.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = checks(vec![(redis.clone(), "xgate:rl2:o:k", SPEC)]).await;
        if let Ok(values) = &answer[0] {
            assert_eq!(values[0], 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "back to Redis once it answers: {:?}",
            answer[0]
        );
    }
}
