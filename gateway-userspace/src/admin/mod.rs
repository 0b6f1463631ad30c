//! Admin API: server (in the daemon) and client (in the CLI).

pub mod api;
pub mod client;
pub mod health;
pub mod server;
pub mod upstreams;
pub mod upstreams_cli;
