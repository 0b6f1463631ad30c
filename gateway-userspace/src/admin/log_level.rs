//! `GET /log-level` and `PUT /log-level {"level": "debug"}`: the daemon's
//! log filter, changed at run time (until a restart, or a reload that
//! changes `log.level` in the file).

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::server::{error, json, read_json, Body};
use crate::service::logging;

/// The body of both: a level (`error` ... `trace`) or a filter directive
/// as in `RUST_LOG` (`info,gateway_userspace::proxy=debug`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLevel {
    pub level: String,
}

pub async fn answer(req: Request<Incoming>) -> Response<Body> {
    if req.method() == Method::GET {
        return json(
            StatusCode::OK,
            &LogLevel {
                level: logging::level(),
            },
        );
    }
    let wanted: LogLevel = match read_json(req).await {
        Ok(w) => w,
        Err(message) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("{message} (expected {{\"level\": \"debug\"}})"),
            )
        }
    };
    match logging::set_level(&wanted.level) {
        Ok(()) => {
            tracing::info!(level = %wanted.level, "log level changed through the admin API");
            json(StatusCode::OK, &wanted)
        }
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

/// `xgate log-level [LEVEL]`.
pub async fn cli(
    socket: &std::path::Path,
    level: Option<&str>,
) -> anyhow::Result<std::process::ExitCode> {
    let answer = match level {
        None => super::client::call_ok(socket, Method::GET, "/log-level", None).await?,
        Some(level) => {
            let body = serde_json::json!({ "level": level });
            super::client::call_ok(socket, Method::PUT, "/log-level", Some(body)).await?
        }
    };
    let now: LogLevel = serde_json::from_value(answer)?;
    match level {
        None => println!("{}", now.level),
        Some(_) => println!("log level now {}", now.level),
    }
    Ok(std::process::ExitCode::SUCCESS)
}
