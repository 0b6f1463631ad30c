//! Admin API: server (in the daemon) and client (in the CLI).

pub mod access;
pub mod api;
pub mod client;
pub mod health;
pub mod log_level;
pub mod server;
pub mod status_page;
pub mod upstreams;
pub mod upstreams_cli;
