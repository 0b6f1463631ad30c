//! The access log (its own writer, every field, both formats, no line lost
//! at shutdown), metrics hygiene across reloads, the health endpoints, and
//! upstream errors logged as text.

use std::{collections::HashMap, net::SocketAddr, path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use xgate_tests::{
    http::{exchange, get, send},
    ports::{any_port, free_port},
    process::Daemon,
    tls::{connect, ClientOptions, TestCa},
    upstream::EchoUpstream,
    TempDir,
};

/// Polls `check` for up to 20 s (a busy machine), returning its last value.
async fn eventually<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One logfmt line as key → value (quotes and escapes undone; `-` kept).
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = line.trim_end();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("key=value");
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            // A JSON string: find its closing quote.
            let mut end = 0;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = i;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let value: String = serde_json::from_str(&format!("\"{}\"", &quoted[..end])).unwrap();
            (value, &quoted[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        fields.push((key.to_string(), value));
        rest = after.trim_start();
    }
    fields
}

/// A JSON line's fields as the text format writes them, to compare both.
fn json_as_text(line: &serde_json::Value) -> Vec<(String, String)> {
    line.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(items) if items.is_empty() => "-".to_string(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                serde_json::Value::Number(n) if k.ends_with("_ms") => {
                    format!("{:.3}", n.as_f64().unwrap())
                }
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `RUST_LOG=warn` silences the daemon's info lines, not the access log:
/// the default text lines go to standard output by their own writer.
#[tokio::test]
async fn the_access_log_is_not_the_daemon_log() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start_with_env(
        TempDir::new("obs-warn"),
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  echo: {{targets: ['{}']}}\n\
             routes: [{{name: api, match: {{path_prefix: /}}, upstream: echo}}]\n",
            upstream.addr
        ),
        None,
        &[("RUST_LOG", "warn")],
    );
    let reply = get(listen, "/quiet?x=1", &[]).await;
    assert_eq!(reply.status, 200);
    let line = eventually(|| {
        daemon
            .log()
            .lines()
            .find(|l| l.contains("path=/quiet"))
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("no access line with RUST_LOG=warn:\n{}", daemon.log()));
    assert!(line.starts_with("ts="), "{line}");
    assert!(line.contains(" method=GET "), "{line}");
    assert!(line.contains(" query=\"x=1\" status=200 "), "{line}");
    assert!(
        !daemon.log().contains("xgate ready"),
        "info lines are filtered"
    );
}

/// Every field, with the right value, for known requests: HTTP/1.1 over
/// TLS 1.3 and HTTP/2 over TLS 1.2, written to a file as JSON and as text
/// (the same fields and values in both).
#[tokio::test]
async fn every_field_over_http1_and_http2_with_tls_in_json_and_text() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let mut by_format: HashMap<&str, Vec<Vec<(String, String)>>> = HashMap::new();
    for format in ["json", "text"] {
        let dir = TempDir::new("obs-fields");
        let ca = TestCa::new();
        let leaf = ca.leaf(&["gateway.test"], dir.path(), "server");
        let listen = free_port();
        let daemon = Daemon::start_in_dir(
            dir,
            &format!(
                "listeners:\n  - address: '{listen}'\n    name: public\n    http2: true\n    \
                 tls: {{certificates: [{{cert: '{}', key: '{}'}}]}}\n\
                 upstreams:\n  echo: {{targets: ['{}']}}\n\
                 routes: [{{name: api, match: {{path_prefix: /api/}}, upstream: echo}}]\n\
                 access_log: {{format: {format}, path: '{{dir}}/access.log'}}\n",
                leaf.cert.display(),
                leaf.key.display(),
                upstream.addr
            ),
            None,
        );

        // HTTP/1.1 over TLS 1.3, a body of 11 bytes.
        let options = ClientOptions {
            alpn: &[b"http/1.1"],
            versions: &[&rustls::version::TLS13],
            ..ClientOptions::verifying(&ca)
        };
        let mut tls = connect(listen, "gateway.test", &options).await.unwrap();
        let reply = exchange(
            &mut tls,
            "POST /api/items?q=1&r=two%20words HTTP/1.1\r\nHost: gateway.test\r\n\
             User-Agent: obs-test/1.0 (h1)\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
        let h1_id = reply.header("x-request-id").unwrap().to_string();
        let h1_out = reply.body.len().to_string();

        // HTTP/2 over TLS 1.2.
        let options = ClientOptions {
            alpn: &[b"h2"],
            versions: &[&rustls::version::TLS12],
            ..ClientOptions::verifying(&ca)
        };
        let tls = connect(listen, "gateway.test", &options).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = Request::get("https://gateway.test/api/h2")
            .header("user-agent", "obs-test/1.0 (h2)")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let h2_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let h2_out = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len()
            .to_string();
        drop(sender);
        let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;

        let dir = daemon.stop();
        let lines = lines_of(&dir.path().join("access.log"));
        assert_eq!(lines.len(), 2, "{lines:?}");
        let parsed: Vec<_> = lines
            .iter()
            .map(|l| match format {
                "json" => json_as_text(&serde_json::from_str(l).unwrap()),
                _ => logfmt(l),
            })
            .collect();
        by_format.insert(format, parsed);

        let lines = &by_format[format];
        let field = |line: usize, key: &str| -> String {
            lines[line]
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("{format}: no {key} in {:?}", lines[line]))
                .1
                .clone()
        };
        for (line, protocol, tls, method, path, query, bytes_in, bytes_out, id, agent) in [
            (
                0,
                "HTTP/1.1",
                "TLSv1.3",
                "POST",
                "/api/items",
                "q=1&r=two%20words",
                "11",
                &h1_out,
                &h1_id,
                "obs-test/1.0 (h1)",
            ),
            (
                1,
                "HTTP/2",
                "TLSv1.2",
                "GET",
                "/api/h2",
                "-",
                "0",
                &h2_out,
                &h2_id,
                "obs-test/1.0 (h2)",
            ),
        ] {
            let ts = field(line, "ts");
            assert!(
                ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
                "{format}: RFC 3339 UTC with ms: {ts}"
            );
            for (key, want) in [
                ("client_ip", "127.0.0.1"),
                ("listener", "public"),
                ("protocol", protocol),
                ("tls", tls),
                ("method", method),
                ("host", "gateway.test"),
                ("path", path),
                ("query", query),
                ("status", "200"),
                ("bytes_in", bytes_in),
                ("bytes_out", bytes_out.as_str()),
                ("upstream_target", &upstream.addr.to_string()),
                ("upstream_status", "200"),
                ("retries", "0"),
                ("route", "api"),
                ("consumer", "-"),
                ("request_id", id.as_str()),
                ("user_agent", agent),
                ("verdicts", "-"),
                ("rejection", "-"),
                ("detail", "-"),
            ] {
                assert_eq!(field(line, key), want, "{format} line {line}: {key}");
            }
            for key in ["duration_ms", "upstream_ms"] {
                let ms: f64 = field(line, key).parse().unwrap();
                assert!(ms > 0.0, "{format} line {line}: {key} {ms}");
            }
        }
    }
    // One set of field names, in one order, in both formats.
    let keys = |format: &str| -> Vec<String> {
        by_format[format][0]
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    };
    let mut json_keys = keys("json");
    json_keys.sort();
    let text_keys = keys("text");
    let mut sorted_text = text_keys.clone();
    sorted_text.sort();
    assert_eq!(json_keys, sorted_text);
    assert_eq!(text_keys[0], "ts");
}

/// A buffered log flushed only at exit (flush interval 1 m): N requests,
/// SIGTERM, N lines.
#[tokio::test]
async fn no_line_is_lost_at_shutdown() {
    const N: usize = 300;
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  echo: {{targets: ['{}']}}\n\
             routes: [{{name: api, match: {{path_prefix: /}}, upstream: echo}}]\n\
             access_log: {{path: '{{dir}}/access.log', buffer_bytes: 16777216, flush_interval: 1m}}\n",
            upstream.addr
        ),
        None,
    );
    let mut tasks = Vec::new();
    for worker in 0..4 {
        tasks.push(tokio::spawn(async move {
            for i in 0..N / 4 {
                let reply = get(listen, &format!("/n/{worker}/{i}"), &[]).await;
                assert_eq!(reply.status, 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let log = daemon.dir.path().join("access.log");
    assert!(lines_of(&log).len() < N, "held in the buffer until exit");
    let dir = daemon.stop();
    let lines = lines_of(&dir.path().join("access.log"));
    assert_eq!(lines.len(), N);
    let mut paths: Vec<_> = lines
        .iter()
        .map(|l| logfmt(l).into_iter().find(|(k, _)| k == "path").unwrap().1)
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), N, "every request once");
}

/// Log rotation: after the file is moved away, SIGUSR1 makes the daemon
/// write to a new file at the configured path.
#[tokio::test]
async fn sigusr1_reopens_the_access_log() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  echo: {{targets: ['{}']}}\n\
             routes: [{{name: api, match: {{path_prefix: /}}, upstream: echo}}]\n\
             access_log: {{format: json, path: '{{dir}}/access.log', flush_interval: 50ms}}\n",
            upstream.addr
        ),
        None,
    );
    let log = daemon.dir.path().join("access.log");
    assert_eq!(get(listen, "/before", &[]).await.status, 200);
    eventually(|| (lines_of(&log).len() == 1).then_some(()))
        .await
        .expect("the first line");
    let rotated = daemon.dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-USR1", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(|| log.exists().then_some(()))
        .await
        .unwrap_or_else(|| panic!("not reopened:\n{}", daemon.log()));
    assert_eq!(get(listen, "/after", &[]).await.status, 200);
    let new = eventually(|| {
        let lines = lines_of(&log);
        (lines.len() == 1).then_some(lines)
    })
    .await
    .expect("a line in the new file");
    assert!(new[0].contains("\"path\":\"/after\""), "{new:?}");
    let old = lines_of(&rotated);
    assert_eq!(old.len(), 1);
    assert!(old[0].contains("\"path\":\"/before\""), "{old:?}");
}

/// A connection the blocklist refuses at accept gets a line.
#[tokio::test]
async fn connections_refused_at_accept_are_logged() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}', name: public}}]\n\
             upstreams:\n  echo: {{targets: ['{}']}}\n\
             routes: [{{name: api, match: {{path_prefix: /}}, upstream: echo}}]\n\
             access_log: {{format: json, path: '{{dir}}/access.log', buffer_bytes: 0}}\n",
            upstream.addr
        ),
        None,
    );
    let out = daemon.cli(&["blocklist", "add", "127.0.0.77"]);
    assert!(out.status.success(), "{out:?}");
    let source: SocketAddr = "127.0.0.77:0".parse().unwrap();
    let refused = send(
        listen,
        Some(source),
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|r| r.status == 0),
        "{refused:?}"
    );
    let log = daemon.dir.path().join("access.log");
    let line = eventually(|| lines_of(&log).into_iter().next())
        .await
        .expect("a line for the refused connection");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["client_ip"], "127.0.0.77");
    assert_eq!(line["listener"], "public");
    assert_eq!(line["status"], 0);
    assert_eq!(line["rejection"], "blocked_at_accept");
    assert_eq!(line["detail"], "blocklist rule 127.0.0.77/32");
}

/// An upstream that refuses connections: the daemon's line is text that
/// says so, with the request id, the route and the target; no debug dump.
#[tokio::test]
async fn upstream_errors_are_logged_as_text_with_the_request_id() {
    let dead = free_port();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  gone: {{targets: ['{dead}'], retries: 0}}\n\
             routes: [{{name: dead-end, match: {{path_prefix: /}}, upstream: gone}}]\n"
        ),
        None,
    );
    let reply = get(listen, "/x", &[]).await;
    assert_eq!(reply.status, 502);
    let id = reply.header("x-request-id").unwrap().to_string();
    let line = eventually(|| {
        daemon
            .log()
            .lines()
            .find(|l| l.contains("request failed"))
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("no error line:\n{}", daemon.log()));
    assert!(line.contains(&format!("request_id={id}")), "{line}");
    assert!(line.contains("route=dead-end"), "{line}");
    assert!(line.contains(&format!("upstream.target={dead}")), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    for dump in ["Some(", "Os {", "Connect(", "kind:"] {
        assert!(!line.contains(dump), "debug dump `{dump}` in: {line}");
    }
}

fn metrics_config(listen: SocketAddr, targets: &[(&str, SocketAddr)]) -> String {
    let mut yaml = format!("listeners: [{{address: '{listen}'}}]\nupstreams:\n");
    for (name, addr) in targets {
        yaml.push_str(&format!("  {name}: {{targets: ['{addr}']}}\n"));
    }
    yaml.push_str("routes:\n");
    for (name, _) in targets {
        yaml.push_str(&format!(
            "  - {{name: {name}, match: {{path_prefix: /{name}/}}, upstream: {name}}}\n"
        ));
    }
    yaml
}

/// Series of a route and a target a reload removed disappear (its health
/// series too); a refused reload is counted; build and process metrics are
/// there; the consumer label is `-` when no consumer is known.
#[tokio::test]
async fn metrics_follow_the_config_and_tell_no_made_up_values() {
    let kept = EchoUpstream::start(any_port(), "kept").await.unwrap();
    let gone = EchoUpstream::start(any_port(), "gone").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &metrics_config(listen, &[("kept", kept.addr), ("gone", gone.addr)]),
        None,
    );
    for path in ["/kept/a", "/gone/a"] {
        assert_eq!(get(listen, path, &[]).await.status, 200);
    }
    let text = daemon.admin_get("/metrics");
    let gone_target = gone.addr.to_string();
    assert!(text.contains("route=\"gone\""), "{text}");
    assert!(text.contains(&gone_target), "{text}");
    assert!(
        text.contains(
            "xgate_requests_total{route=\"kept\",method=\"GET\",status=\"200\",consumer=\"-\"} 1"
        ),
        "{text}"
    );
    // Health is the targets' real state (passive health, on by default):
    // both answered, both take traffic.
    assert!(
        text.contains(&format!(
            "xgate_upstream_target_healthy{{upstream=\"gone\",target=\"{gone_target}\"}} 1"
        )),
        "the health series is the target's state:\n{text}"
    );
    for family in [
        "xgate_build_info{version=\"",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "xgate_response_body_bytes_total{route=\"kept\"} ",
        "xgate_request_body_bytes_total{route=\"kept\"} 0",
    ] {
        assert!(text.contains(family), "missing {family}:\n{text}");
    }

    let out = daemon.reload_with(&metrics_config(listen, &[("kept", kept.addr)]));
    assert!(out.status.success(), "{out:?}");
    let text = eventually(|| {
        let text = daemon.admin_get("/metrics");
        (!text.contains("route=\"gone\"") && !text.contains(&gone_target)).then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("removed series stay:\n{}", daemon.admin_get("/metrics")));
    assert!(
        text.contains(
            "xgate_requests_total{route=\"kept\",method=\"GET\",status=\"200\",consumer=\"-\"} 1"
        ),
        "a kept route counts on:\n{text}"
    );
    assert!(text.contains("xgate_reload_failures_total 0"), "{text}");

    let out = daemon.reload_with("listeners: [not a listener]\n");
    assert!(!out.status.success());
    let text = daemon.admin_get("/metrics");
    assert!(text.contains("xgate_reload_failures_total 1"), "{text}");
}

async fn http_status(addr: SocketAddr, path: &str) -> (u16, String) {
    let reply = get(addr, path, &[]).await;
    (
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

/// /livez and /readyz on `admin.metrics_address` (and the admin socket);
/// /readyz answers 503 while the daemon drains.
#[tokio::test]
async fn readiness_turns_503_during_the_drain() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let probe = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  echo: {{targets: ['{}']}}\n\
             routes: [{{name: api, match: {{path_prefix: /}}, upstream: echo}}]\n\
             admin:\n  socket: '{{dir}}/admin.sock'\n  metrics_address: '{probe}'\n",
            upstream.addr
        ),
        None,
    );
    assert_eq!(http_status(probe, "/livez").await, (200, "live\n".into()));
    assert_eq!(http_status(probe, "/readyz").await, (200, "ready\n".into()));
    let (status, metrics) = http_status(probe, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("xgate_build_info"), "{metrics}");
    // The admin API is not on it (`/status` there is the status page).
    assert_eq!(http_status(probe, "/bans").await.0, 404, "read-only");
    assert_eq!(http_status(probe, "/upstreams").await.0, 404, "read-only");
    assert_eq!(daemon.admin_get("/readyz"), "ready\n");

    // A request in flight (its body not all sent) keeps the drain going.
    let mut held = tokio::net::TcpStream::connect(listen).await.unwrap();
    held.write_all(b"POST /slow HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 10\r\n\r\nhalf")
        .await
        .unwrap();
    // Give the daemon the request before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let draining = loop {
        let answer = http_status(probe, "/readyz").await;
        if answer.0 == 503 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(draining, (503, "draining\n".to_string()));
    assert_eq!(
        http_status(probe, "/livez").await.0,
        200,
        "alive while draining"
    );
    held.write_all(b"-complete").await.unwrap();
    drop(held);
    daemon.stop();
}

/// /metrics in Prometheus's classic text format passes `promtool check
/// metrics` (names, `_total` counters, units, help texts); a scraper that
/// asks for OpenMetrics (as Prometheus does) gets it, counter families named
/// without `_total` and the text closed by `# EOF`.
#[tokio::test]
async fn metrics_pass_promtool_and_speak_openmetrics_when_asked() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let probe = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  echo: {{targets: ['{}']}}\n  down: {{targets: ['127.0.0.1:1']}}\n\
             routes:\n  - {{name: api, match: {{path_prefix: /api/}}, upstream: echo}}\n\
             \x20 - {{name: down, match: {{path_prefix: /down/}}, upstream: down}}\n\
             admin:\n  socket: '{{dir}}/admin.sock'\n  metrics_address: '{probe}'\n",
            upstream.addr
        ),
        None,
    );
    // Requests that fill every kind of family: counters, histograms, errors.
    assert_eq!(get(listen, "/api/a", &[]).await.status, 200);
    assert_eq!(get(listen, "/down/a", &[]).await.status, 502);

    let classic = get(probe, "/metrics", &[]).await;
    assert_eq!(classic.status, 200);
    assert_eq!(
        classic.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(classic.body).unwrap();
    assert!(
        text.contains("# TYPE xgate_requests_total counter"),
        "{text}"
    );
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let open = get(
        probe,
        "/metrics",
        &["Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"],
    )
    .await;
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = String::from_utf8(open.body).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(text.contains("# TYPE xgate_requests counter"), "{text}");
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    // No counter family is named after its samples in OpenMetrics.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        if line.ends_with(" counter") {
            assert!(!name.ends_with("_total"), "{line}");
        }
    }
    // The admin socket negotiates the same way.
    assert!(daemon
        .admin_get("/metrics")
        .contains("# TYPE xgate_requests_total counter"));
}

/// Metric names in `text`: maximal runs of `[a-z0-9_]` starting with
/// `xgate_` or `process_`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
            && (bytes[i..].starts_with(b"xgate_") || bytes[i..].starts_with(b"process_"));
        if starts {
            let end = bytes[i..]
                .iter()
                .position(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_'))
                .map_or(bytes.len(), |n| i + n);
            names.insert(String::from_utf8_lossy(&bytes[i..end]).into_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The Grafana dashboard in examples/ queries only metrics that are
/// documented in docs/observability.md and that a running daemon exports
/// (the XDP family needs an attached interface: documented is enough).
#[tokio::test]
async fn the_grafana_dashboard_uses_only_metrics_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = std::fs::read_to_string(root.join("examples/grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 10));
    let docs = std::fs::read_to_string(root.join("docs/observability.md")).unwrap();
    let documented = metric_names(&docs);

    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             upstreams:\n  echo:\n    targets: ['{}']\n    health_checks: {{active: {{path: /health, interval: 2s, timeout: 1s}}}}\n\
             routes: [{{name: api, match: {{path_prefix: /}}, upstream: echo, \
             policies: [{{type: rate-limit, limits: [{{requests: 1000, per: 1s}}]}}]}}]\n",
            upstream.addr
        ),
        None,
    );
    assert_eq!(get(listen, "/a", &[]).await.status, 200);
    let scrape = daemon.admin_get("/metrics");
    let exported = metric_names(&scrape);

    let queried = metric_names(&dashboard);
    assert!(queried.len() > 15, "{queried:?}");
    for name in &queried {
        // Histogram series are documented and typed under the family name.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            documented.contains(family),
            "the dashboard queries {name}, which docs/observability.md does not document"
        );
        if !family.starts_with("xgate_xdp_") {
            assert!(
                exported.contains(name.as_str()) || exported.contains(family),
                "the dashboard queries {name}, which the daemon does not export:\n{scrape}"
            );
        }
    }
}

/// `routes[].respond` answers a fixed status and body on a client
/// listener (a load balancer's health check), with its access log line.
#[tokio::test]
async fn a_respond_route_answers_itself() {
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}'}}]\n\
             routes:\n\
             \x20 - {{name: health, match: {{path: /healthz}}, respond: {{status: 200, body: ok}}}}\n\
             \x20 - {{name: closed, match: {{path_prefix: /old/}}, respond: {{status: 410, body: \"gone for good\"}}}}\n\
             access_log: {{format: json, path: '{{dir}}/access.log', buffer_bytes: 0}}\n"
        ),
        None,
    );
    let reply = get(listen, "/healthz", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, b"ok");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let reply = get(listen, "/old/page", &[]).await;
    assert_eq!(reply.status, 410);
    assert_eq!(reply.body, b"gone for good");
    assert_eq!(get(listen, "/other", &[]).await.status, 404);

    let log = daemon.dir.path().join("access.log");
    let lines = eventually(|| {
        let lines = lines_of(&log);
        (lines.len() == 3).then_some(lines)
    })
    .await
    .expect("three lines");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["route"], "health");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_out"], 2);
    assert!(first["upstream_target"].is_null(), "{first}");
    assert!(first["retries"].is_null(), "{first}");
}

/// Behind a trusted balancer, the client the PROXY header names is
/// checked against the blocklist too, and its refusal gets a line.
#[tokio::test]
async fn a_blocked_client_named_by_a_proxy_header_is_logged() {
    let upstream = EchoUpstream::start(any_port(), "one").await.unwrap();
    let listen = free_port();
    let daemon = Daemon::start(
        &format!(
            "listeners: [{{address: '{listen}', name: edge, proxy_protocol: true}}]\n\
             trusted_proxies: ['127.0.0.1/32']\n\
             upstreams:\n  echo: {{targets: ['{}']}}\n\
             routes: [{{name: api, match: {{path_prefix: /}}, upstream: echo}}]\n\
             access_log: {{format: json, path: '{{dir}}/access.log', buffer_bytes: 0}}\n",
            upstream.addr
        ),
        None,
    );
    let out = daemon.cli(&["blocklist", "add", "198.51.100.0/24"]);
    assert!(out.status.success(), "{out:?}");
    let refused = send(
        listen,
        None,
        "PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n\
         GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|r| r.status == 0),
        "{refused:?}"
    );
    let log = daemon.dir.path().join("access.log");
    let line = eventually(|| lines_of(&log).into_iter().next())
        .await
        .expect("a line for the refused client");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["client_ip"], "198.51.100.7");
    assert_eq!(line["listener"], "edge");
    assert_eq!(line["rejection"], "blocked_at_accept");
    assert_eq!(line["detail"], "blocklist rule 198.51.100.0/24");
}
