//! `listeners[]`: where client traffic is accepted.

use std::{collections::HashMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use super::Errors;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Optional label used in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// `IP:port` to bind, e.g. `0.0.0.0:8080` or `[::]:8080`.
    pub address: SocketAddr,
}

pub(super) fn validate(listeners: &[Listener], errors: &mut Errors) {
    if listeners.is_empty() {
        errors.push("listeners", "at least one listener is required");
    }
    let mut addresses = HashMap::new();
    for (i, listener) in listeners.iter().enumerate() {
        if let Some(first) = addresses.insert(listener.address, i) {
            errors.push(
                format!("listeners[{i}].address"),
                format!("{} is already used by listeners[{first}]", listener.address),
            );
        }
    }
}
