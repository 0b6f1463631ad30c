//! xgate userspace: the daemon (`xgate run`), its admin API, and the CLI.
//!
//! Layout: `config` (file → validated model), `proxy` (listeners, router,
//! forwarding), `upstream` (targets, balancing, pooled client), `blocklist`
//! (source deny rules, kernel + L7), `xdp` (the kernel half seen from here),
//! `admin` (API server and client), `cli`, `daemon` (wiring), `telemetry`.
#![deny(unsafe_code)]

pub mod admin;
pub mod blocklist;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod proxy;
pub mod sys;
pub mod telemetry;
pub mod upstream;
pub mod xdp;
