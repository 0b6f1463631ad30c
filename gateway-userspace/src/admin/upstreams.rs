//! `GET /upstreams[/NAME]` (each target's state and why) and
//! `PUT /upstreams/NAME/targets/TARGET/state` (force it up or down, or back
//! to `auto`).

use std::net::SocketAddr;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::{
    proxy::Upstreams,
    upstream::health::{self, Forced, UpstreamStatus},
};

/// The body of `PUT /upstreams/NAME/targets/TARGET/state`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct SetState {
    pub state: TargetState,
}

/// What an operator sets a target to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    Up,
    Down,
    /// What the health checks say.
    Auto,
}

impl TargetState {
    fn forced(self) -> Option<Forced> {
        match self {
            TargetState::Up => Some(Forced::Up),
            TargetState::Down => Some(Forced::Down),
            TargetState::Auto => None,
        }
    }
}

/// Every upstream's status, by name.
pub fn list(upstreams: &Upstreams) -> Vec<UpstreamStatus> {
    let mut list: Vec<UpstreamStatus> = upstreams.values().map(|u| u.status()).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// One upstream's status; an unknown name is a 404 naming the known ones.
pub fn one(upstreams: &Upstreams, name: &str) -> Result<UpstreamStatus, (StatusCode, String)> {
    match upstreams.get(name) {
        Some(upstream) => Ok(upstream.status()),
        None => Err(unknown(upstreams, name)),
    }
}

/// `rest` is `NAME/targets/TARGET/state`.
pub fn set_state(
    upstreams: &Upstreams,
    rest: &str,
    request: SetState,
) -> Result<UpstreamStatus, (StatusCode, String)> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [name, "targets", target, "state"] = parts[..] else {
        return Err((
            StatusCode::NOT_FOUND,
            "expected /upstreams/NAME/targets/IP:PORT/state".to_string(),
        ));
    };
    let Some(upstream) = upstreams.get(name) else {
        return Err(unknown(upstreams, name));
    };
    let addr: SocketAddr = target.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("{target:?} is not a target address (IP:PORT)"),
        )
    })?;
    upstream
        .force(addr, request.state.forced())
        .map_err(|message| (StatusCode::NOT_FOUND, message))?;
    Ok(upstream.status())
}

fn unknown(upstreams: &Upstreams, name: &str) -> (StatusCode, String) {
    let mut names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
    names.sort_unstable();
    (
        StatusCode::NOT_FOUND,
        format!("no upstream {name:?} (upstreams: {})", names.join(", ")),
    )
}

/// The upstream series for /metrics, inserted before the text's `# EOF`.
pub fn add_metrics(upstreams: &Upstreams, text: &mut String) {
    let mut series = String::new();
    health::render(&list(upstreams), &mut series);
    let at = text.rfind("# EOF").unwrap_or(text.len());
    text.insert_str(at, &series);
}
