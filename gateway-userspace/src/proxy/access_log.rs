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
    Lines(Arc<Lines>),
    Off,
}

/// Where JSON lines go, and the lines held back when `buffer_bytes` is set.
struct Lines {
    out: Mutex<Out>,
    /// `format: text` to a file: `key=value` lines with the JSON field names.
    text: bool,
    /// 0: every line is written as it is made.
    buffer: usize,
}

struct Out {
    target: Target,
    pending: Vec<u8>,
}

enum Target {
    Stdout,
    File(File),
}

impl Target {
    fn write(&mut self, bytes: &[u8]) {
        // A line that cannot be written is dropped: the request it
        // describes has been served, and the log must not stop the proxy.
        let _ = match self {
            Self::File(file) => file.write_all(bytes),
            Self::Stdout => std::io::stdout().lock().write_all(bytes),
        };
    }
}

impl Out {
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.target.write(&self.pending);
            self.pending.clear();
        }
    }
}

impl Lines {
    fn append(&self, line: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if self.buffer == 0 {
            out.target.write(line);
            return;
        }
        if out.pending.len() + line.len() > self.buffer {
            out.flush();
        }
        if line.len() > self.buffer {
            out.target.write(line);
        } else {
            out.pending.extend_from_slice(line);
        }
    }

    fn flush(&self) {
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
    }
}

impl Drop for Lines {
    /// The logger of a config that was replaced (or of a daemon shutting
    /// down) writes what it still holds.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes a buffered logger's lines every `interval`, on a thread of its
/// own (the logger is made where no runtime may be running), until the
/// logger is gone.
fn start_flusher(lines: &Arc<Lines>, interval: Duration) -> Result<(), String> {
    let lines = Arc::downgrade(lines);
    std::thread::Builder::new()
        .name("xgate-access-log".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            match lines.upgrade() {
                Some(lines) => lines.flush(),
                None => return,
            }
        })
        .map(drop)
        .map_err(|e| format!("access_log: cannot start the flushing thread: {e}"))
}

pub struct AccessLogger {
    sink: Sink,
}

impl AccessLogger {
    pub fn open(config: &AccessLog) -> Result<Self, String> {
        if !config.writes_lines() {
            let sink = match config.format {
                AccessLogFormat::Off => Sink::Off,
                _ => Sink::Tracing,
            };
            return Ok(Self { sink });
        }
        let target = match &config.path {
            None => Target::Stdout,
            Some(path) => Target::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("access_log.path: cannot open {}: {e}", path.display()))?,
            ),
        };
        let buffer = config.buffer_bytes.unwrap_or(0);
        let lines = Arc::new(Lines {
            out: Mutex::new(Out {
                target,
                pending: Vec::with_capacity(buffer),
            }),
            text: config.format == AccessLogFormat::Text,
            buffer,
        });
        if buffer > 0 {
            start_flusher(
                &lines,
                config
                    .flush_interval
                    .unwrap_or(AccessLog::DEFAULT_FLUSH_INTERVAL),
            )?;
        }
        Ok(Self {
            sink: Sink::Lines(lines),
        })
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
            Sink::Lines(_) => self.write_line(&Line {
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
                consumer = ctx.consumer().map_or("-", |c| &*c.username),
                upstream.target = %ctx
                    .upstream_target
                    .map_or_else(|| "-".to_string(), |t| t.to_string()),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = ctx.request_id(),
                rejection = ctx.rejection.unwrap_or("-"),
                "access"
            ),
            Sink::Lines(_) => self.write_line(&Line {
                ts: now(),
                request_id: Some(ctx.request_id()),
                client_ip: ctx.client_ip,
                listener: None,
                method: Some(method.as_str()),
                path: Some(path),
                route: ctx.route.as_deref().map(RouteMetrics::name),
                consumer: ctx.consumer().map(|c| &*c.username),
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

    /// Writes the lines held in the buffer (`buffer_bytes`) now; the
    /// daemon calls it when it shuts down.
    pub fn flush(&self) {
        if let Sink::Lines(lines) = &self.sink {
            lines.flush();
        }
    }

    /// One JSON line to the file or standard output, in one write (or
    /// into the buffer): formatted into this thread's buffer first (writing
    /// the pieces as they were formatted took a system call each, about a
    /// hundred per line on an unbuffered file), then appended whole, so
    /// lines from several workers never interleave.
    fn write_line(&self, line: &Line<'_>) {
        let Sink::Lines(lines) = &self.sink else {
            return;
        };
        thread_local! {
            static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            if lines.text {
                line.write_text(buf);
            } else if serde_json::to_writer(&mut *buf, line).is_err() {
                return;
            }
            buf.push(b'\n');
            lines.append(buf);
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

impl Line<'_> {
    /// `format: text` to a file: the JSON line's fields as `key=value`
    /// (logfmt), `-` for an absent value, quoted when it has a space.
    fn write_text(&self, out: &mut Vec<u8>) {
        fn field(out: &mut Vec<u8>, key: &str, value: Option<&dyn std::fmt::Display>) {
            if !out.is_empty() {
                out.push(b' ');
            }
            let value = value.map_or_else(|| "-".to_string(), ToString::to_string);
            let value = if value.is_empty() || value.contains([' ', '"', '=']) {
                format!("{value:?}")
            } else {
                value
            };
            let _ = write!(out, "{key}={value}");
        }
        let verdicts = self.verdicts.join(",");
        field(out, "ts", Some(&format_args!("{:.3}", self.ts)));
        field(out, "request_id", self.request_id.as_ref().map(|v| v as _));
        field(out, "client_ip", Some(&self.client_ip));
        if let Some(listener) = &self.listener {
            field(out, "listener", Some(listener));
        }
        field(out, "method", self.method.as_ref().map(|v| v as _));
        field(out, "path", self.path.as_ref().map(|v| v as _));
        field(out, "route", self.route.as_ref().map(|v| v as _));
        field(out, "consumer", self.consumer.as_ref().map(|v| v as _));
        field(
            out,
            "upstream_target",
            self.upstream_target.as_ref().map(|v| v as _),
        );
        field(out, "status", Some(&self.status));
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.3}"));
        field(
            out,
            "duration_ms",
            ms(self.duration_ms).as_ref().map(|v| v as _),
        );
        field(
            out,
            "upstream_ms",
            ms(self.upstream_ms).as_ref().map(|v| v as _),
        );
        field(
            out,
            "verdicts",
            (!verdicts.is_empty()).then_some(&verdicts as _),
        );
        field(out, "rejection", self.rejection.as_ref().map(|v| v as _));
        if let Some(detail) = &self.detail {
            field(out, "detail", Some(detail));
        }
    }
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

    impl TempLog {
        fn new(name: &str) -> Self {
            Self(std::env::temp_dir().join(format!(
                "xgate-access-log-{name}-{}-{:?}.jsonl",
                std::process::id(),
                SystemTime::now()
            )))
        }

        fn config(&self, buffer_bytes: Option<usize>, flush: Option<Duration>) -> AccessLog {
            AccessLog {
                format: AccessLogFormat::Json,
                path: Some(self.0.clone()),
                buffer_bytes,
                flush_interval: flush,
            }
        }

        /// The whole lines written so far, each parsed.
        fn lines(&self) -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            assert!(text.is_empty() || text.ends_with('\n'), "a line cut short");
            text.lines()
                .map(|l| serde_json::from_str(l).expect("a whole JSON line"))
                .collect()
        }
    }

    fn refused(logger: &AccessLogger, detail: &str) {
        logger.write_refused_head(
            IpAddr::from([192, 0, 2, 1]),
            "public",
            400,
            "malformed_head",
            detail,
        );
    }

    #[test]
    fn text_to_a_file_is_written_as_text() {
        let log = TempLog::new("text");
        let config = AccessLog {
            format: AccessLogFormat::Text,
            ..log.config(None, None)
        };
        let logger = AccessLogger::open(&config).unwrap();
        refused(&logger, "bad request line");
        let text = std::fs::read_to_string(&log.0).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
        assert!(!text.starts_with('{'), "{text}");
        assert!(
            text.contains(" client_ip=192.0.2.1 listener=public method=- path=- "),
            "{text}"
        );
        assert!(
            text.contains(" status=400 ")
                && text.ends_with(" rejection=malformed_head detail=\"bad request line\"\n"),
            "{text}"
        );
    }

    #[test]
    fn json_lines_from_several_workers_stay_whole() {
        let log = TempLog::new("workers");
        let logger = Arc::new(AccessLogger::open(&log.config(None, None)).unwrap());
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

    #[test]
    fn unbuffered_lines_are_written_at_once() {
        let log = TempLog::new("unbuffered");
        let logger = AccessLogger::open(&log.config(None, None)).unwrap();
        refused(&logger, "first");
        assert_eq!(log.lines().len(), 1);
    }

    /// With `buffer_bytes`, lines wait until the next one would not fit,
    /// then go out whole; the rest is written when the logger is dropped
    /// (a replaced config's, or at shutdown through `flush`).
    #[test]
    fn buffered_lines_wait_for_a_full_buffer_or_the_end() {
        let log = TempLog::new("buffered");
        // A flush interval far beyond the test: only size and drop write.
        let logger =
            AccessLogger::open(&log.config(Some(4096), Some(Duration::from_secs(60)))).unwrap();
        refused(&logger, "one");
        refused(&logger, "two");
        assert!(log.lines().is_empty(), "held in the buffer");
        logger.flush();
        assert_eq!(log.lines().len(), 2);

        // Lines of about 1 KiB: the fourth does not fit in 4 KiB with the
        // three before it.
        for i in 0..4 {
            refused(&logger, &format!("{i}-{}", "x".repeat(1000)));
        }
        let written = log.lines();
        assert_eq!(
            written.len(),
            5,
            "the first three went out when the fourth came"
        );
        assert!(written[4]["detail"].as_str().unwrap().starts_with("2-"));

        // A line larger than the whole buffer goes straight out, after
        // the lines before it.
        refused(&logger, &"y".repeat(5000));
        let written = log.lines();
        assert_eq!(written.len(), 7);
        assert!(written[5]["detail"].as_str().unwrap().starts_with("3-"));
        assert!(written[6]["detail"].as_str().unwrap().starts_with("yyy"));

        refused(&logger, "last");
        drop(logger);
        let written = log.lines();
        assert_eq!(written.len(), 8, "dropping the logger wrote the rest");
        assert_eq!(written[7]["detail"], "last");
    }

    #[test]
    fn buffered_lines_are_written_within_the_flush_interval() {
        let log = TempLog::new("interval");
        let logger =
            AccessLogger::open(&log.config(Some(1 << 20), Some(Duration::from_millis(10))))
                .unwrap();
        refused(&logger, "waits for the flusher");
        // No size or drop will write it: only the flushing thread can. It
        // runs every 10 ms; give it up to 10 s on a busy machine.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.lines().is_empty() && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let written = log.lines();
        assert_eq!(written.len(), 1, "the flushing thread wrote the line");
        assert_eq!(written[0]["detail"], "waits for the flusher");
    }
}
