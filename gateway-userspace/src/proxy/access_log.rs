//! The access log: one line per request, written in a step that always runs
//! (also for rejected requests), as a `tracing` event or as JSON lines.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::Method;

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
            Sink::Stdout | Sink::File(_) => self.write_line(&serde_json::json!({
                "ts": now(),
                "request_id": null,
                "client_ip": client_ip.to_string(),
                "listener": listener,
                "method": null,
                "path": null,
                "route": null,
                "consumer": null,
                "upstream_target": null,
                "status": status,
                "duration_ms": null,
                "upstream_ms": null,
                "verdicts": [],
                "rejection": rejection,
                "detail": detail,
            })),
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
        let upstream_target = ctx.upstream_target.map(|t| t.to_string());
        match &self.sink {
            Sink::Off => {}
            Sink::Tracing => tracing::info!(
                client.ip = %ctx.client_ip,
                method = %method,
                path = %path,
                route = ctx.route_name(),
                upstream.target = upstream_target.as_deref().unwrap_or("-"),
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = ctx.request_id(),
                rejection = ctx.rejection.unwrap_or("-"),
                "access"
            ),
            Sink::Stdout | Sink::File(_) => self.write_line(&serde_json::json!({
                    "ts": now(),
                    "request_id": ctx.request_id(),
                    "client_ip": ctx.client_ip.to_string(),
                    "method": method.as_str(),
                    "path": path,
                    "route": ctx.route.as_deref().map(RouteMetrics::name),
                    "consumer": serde_json::Value::Null,
                    "upstream_target": upstream_target,
                    "status": status,
                    "duration_ms": elapsed.as_secs_f64() * 1000.0,
                    "upstream_ms": ctx.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
                    "verdicts": ctx.verdicts,
                    "rejection": ctx.rejection,
            })),
        }
    }

    /// One JSON line to the file or standard output.
    fn write_line(&self, line: &serde_json::Value) {
        match &self.sink {
            Sink::File(file) => {
                let mut file = file.lock().unwrap();
                let _ = writeln!(file, "{line}");
            }
            _ => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
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
