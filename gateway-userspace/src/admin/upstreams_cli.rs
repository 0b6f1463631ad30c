//! `xgate upstreams`: the CLI's side of `/upstreams` (each target's state and
//! why; forcing a target up or down).

use std::{net::SocketAddr, path::Path, process::ExitCode};

use clap::Subcommand;
use http::Method;

use super::{
    client,
    upstreams::{SetState, TargetState},
};
use crate::upstream::health::UpstreamStatus;

#[derive(Debug, Subcommand)]
pub enum UpstreamsCommand {
    /// Each target's state and why (the default).
    Ls {
        /// Only this upstream.
        upstream: Option<String>,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Force a target up (takes traffic whatever the checks say) or down (takes none),
    /// or hand it back to the health checks (auto). Kept across reloads while the
    /// upstream's config does not change; a restart clears it.
    SetState {
        upstream: String,
        /// The target's address as configured: IP:PORT.
        target: SocketAddr,
        #[arg(value_enum)]
        state: CliTargetState,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CliTargetState {
    Up,
    Down,
    Auto,
}

pub async fn run(socket: &Path, action: Option<&UpstreamsCommand>) -> anyhow::Result<ExitCode> {
    match action {
        None => list(socket, None, false).await,
        Some(UpstreamsCommand::Ls { upstream, json }) => {
            list(socket, upstream.as_deref(), *json).await
        }
        Some(UpstreamsCommand::SetState {
            upstream,
            target,
            state,
        }) => {
            let state = match state {
                CliTargetState::Up => TargetState::Up,
                CliTargetState::Down => TargetState::Down,
                CliTargetState::Auto => TargetState::Auto,
            };
            let path = format!("/upstreams/{upstream}/targets/{target}/state");
            let body = serde_json::to_value(SetState { state })?;
            let value = client::call_ok(socket, Method::PUT, &path, Some(body)).await?;
            let status: UpstreamStatus = serde_json::from_value(value)?;
            print(&[status], Some(*target));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(socket: &Path, upstream: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let path = match upstream {
        Some(name) => format!("/upstreams/{name}"),
        None => "/upstreams".to_string(),
    };
    let value = client::call_ok(socket, Method::GET, &path, None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let upstreams: Vec<UpstreamStatus> = match upstream {
        Some(_) => vec![serde_json::from_value(value)?],
        None => serde_json::from_value(value)?,
    };
    print(&upstreams, None);
    Ok(ExitCode::SUCCESS)
}

/// A table: one line per target (only `only`, when given).
fn print(upstreams: &[UpstreamStatus], only: Option<SocketAddr>) {
    println!(
        "{:<16} {:<22} {:<12} {:<7} REASON",
        "UPSTREAM", "TARGET", "STATE", "TRAFFIC"
    );
    for upstream in upstreams {
        for target in &upstream.targets {
            if only.is_some_and(|only| only.to_string() != target.target) {
                continue;
            }
            println!(
                "{:<16} {:<22} {:<12} {:<7} {}",
                upstream.name,
                target.target,
                target.state,
                if target.takes_traffic { "yes" } else { "no" },
                target.reason
            );
        }
    }
    if only.is_none() {
        for upstream in upstreams {
            let limits: Vec<String> = upstream
                .limits
                .iter()
                .map(|l| format!("{} {}/{} ({} shed)", l.limit, l.now, l.max, l.shed))
                .collect();
            println!("{}: {}", upstream.name, limits.join(", "));
        }
    }
}
