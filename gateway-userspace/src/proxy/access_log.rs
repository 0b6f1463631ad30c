//! The access log: one line per request, written in a step that always runs
//! (also for rejected requests), as a `tracing` event or as JSON lines.

use std::{
    cell::RefCell,
    fs::{File, OpenOptions},
    io::Write,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::Method;
use serde::Serialize;

use super::RequestContext;
use crate::config::{AccessLog, AccessLogFormat};
use crate::telemetry::RouteMetrics;

enum Sink {
    Tracing,
    Stdout,
    File(Arc<Mutex<File>>),
    Off,
}

pub struct AccessLogger {
    sink: Sink,
}

impl AccessLogger {
    pub fn open(config: &AccessLog) -> Result<Self, String> {
        let sink = match (config.format, &config.path) {
            (AccessLogFormat::Off, _) => Sink::Off,
            (AccessLogFormat::Text, None) => Sink::Tracing,
            (AccessLogFormat::Json, None) => Sink::Stdout,
            // To a file, text is written as JSON lines too: one parseable
            // line per request is what log shippers want.
            (_, Some(path)) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("access_log.path: cannot open {}: {e}", path.display()))?;
                Sink::File(Arc::new(Mutex::new(file)))
            }
        };
        Ok(Self { sink })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    /// A request head the HTTP/1.1 server refused itself (400, 431, 408).
    /// It never became a request: there is no method, path, route or
    /// request id to log, but the client, the listener, the status and why
    /// (`rejection`, and the parser's `detail`) are.
    pub fn write_refused_head(
        &self,
        client_ip: IpAddr,
        listener: &str,
        status: u16,
        rejection: &str,
        detail: &str,
    ) {
        match &self.sink {
            Sink::Off => {}
            Sink::Tracing => tracing::info!(
                client.ip = %client_ip,
                listener,
                status,
                rejection,
                detail,
                "access (request head refused)"
            ),
            Sink::Stdout | Sink::File(_) => self.write_line(&Line {
                ts: now(),
                request_id: None,
                client_ip,
                listener: Some(listener),
                method: None,
                path: None,
                route: None,
                consumer: None,
                upstream_target: None,
                status,
                duration_ms: None,
                upstream_ms: None,
                verdicts: &[],
                rejection: Some(rejection),
                detail: Some(detail),
            }),
        }
    }

    pub fn write(
        &self,
        ctx: &RequestContext,
        method: &Method,
        path: &str,
        status: u16,
        elapsed: Duration,
    ) {
        match &self.sink {
            Sink::Off => {}
            Sink::Tracing => tracing::info!(
                client.ip = %ctx.client_ip,
                method = %method,
                path = %path,
                route = ctx.route_name(),
                upstream.target = %ctx
                    .upstream_target
                    .map_or_else(|| "-".to_string(), |t| t.to_string()),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = ctx.request_id(),
                rejection = ctx.rejection.unwrap_or("-"),
                "access"
            ),
            Sink::Stdout | Sink::File(_) => self.write_line(&Line {
                ts: now(),
                request_id: Some(ctx.request_id()),
                client_ip: ctx.client_ip,
                listener: None,
                method: Some(method.as_str()),
                path: Some(path),
                route: ctx.route.as_deref().map(RouteMetrics::name),
                consumer: None,
                upstream_target: ctx.upstream_target,
                status,
                duration_ms: Some(elapsed.as_secs_f64() * 1000.0),
                upstream_ms: ctx.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
                verdicts: &ctx.verdicts,
                rejection: ctx.rejection,
                detail: None,
            }),
        }
    }

    /// One JSON line to the file or standard output, in one write: formatted
    /// into this thread's buffer first (writing the pieces as they were
    /// formatted took a system call each, about a hundred per line on an
    /// unbuffered file), then appended whole, so lines from several workers
    /// never interleave.
    fn write_line(&self, line: &Line<'_>) {
        thread_local! {
            static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            if serde_json::to_writer(&mut *buf, line).is_err() {
                return;
            }
            buf.push(b'\n');
            let _ = match &self.sink {
                Sink::File(file) => file
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write_all(buf),
                _ => std::io::stdout().lock().write_all(buf),
            };
            // A rare huge line does not keep its buffer.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
        });
    }
}

/// One JSON access log line; the fields keep this order.
#[derive(Serialize)]
struct Line<'a> {
    ts: f64,
    request_id: Option<&'a str>,
    client_ip: IpAddr,
    /// Only on the lines of refused heads, which have no route.
    #[serde(skip_serializing_if = "Option::is_none")]
    listener: Option<&'a str>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    route: Option<&'a str>,
    consumer: Option<&'a str>,
    upstream_target: Option<SocketAddr>,
    status: u16,
    duration_ms: Option<f64>,
    upstream_ms: Option<f64>,
    verdicts: &'a [&'static str],
    rejection: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// Seconds since the epoch, for `ts`.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, thread};

    use super::*;

    /// A file of its own under the system's temp dir, removed on drop.
    struct TempLog(PathBuf);

    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn json_lines_from_several_workers_stay_whole() {
        let log = TempLog(std::env::temp_dir().join(format!(
            "xgate-access-log-test-{}-{:?}.jsonl",
            std::process::id(),
            SystemTime::now()
        )));
        let logger = Arc::new(
            AccessLogger::open(&AccessLog {
                format: AccessLogFormat::Json,
                path: Some(log.0.clone()),
            })
            .unwrap(),
        );
        // Long details make lines of several KiB, written while other
        // threads write theirs.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let logger = logger.clone();
                thread::spawn(move || {
                    for i in 0..250 {
                        let detail = format!("{t}-{i}-{}", "x".repeat(i * 20));
                        logger.write_refused_head(
                            IpAddr::from([192, 0, 2, t as u8]),
                            "public",
                            400,
                            "malformed_head",
                            &detail,
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let text = std::fs::read_to_string(&log.0).unwrap();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
            assert_eq!(line["status"], 400);
            assert_eq!(line["listener"], "public");
            assert_eq!(line["rejection"], "malformed_head");
            assert!(line["request_id"].is_null() && line["route"].is_null());
            let detail = line["detail"].as_str().unwrap();
            let ip = line["client_ip"].as_str().unwrap();
            let t = detail.split('-').next().unwrap();
            assert_eq!(ip, format!("192.0.2.{t}"), "{detail:.20}");
            seen.insert(detail.to_string());
        }
        assert_eq!(seen.len(), 1000, "every line once");
    }
}
