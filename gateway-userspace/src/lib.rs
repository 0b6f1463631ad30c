//! xgate userspace: the daemon (`xgate run`), its admin API, and the CLI.
//!
//! Layout: `config` (file → validated model), `exchange` (the request
//! types both ends share), `proxy` (listeners, the
//! HTTP/1.1 server, router, forwarding), `upstream` (targets, balancing,
//! pooled client), `http1` (HTTP/1.1 on the wire, shared by the server and
//! the upstream client), `tls` (certificates and keys from files;
//! TLS as a client, to upstreams and fetched documents), `lists`
//! (source deny/allow lists and the kernel rate policy), `policy` (API
//! policies and consumers), `jws` (token signatures checked with keys
//! parsed once), `token_server` (the gateway as an OAuth 2.0
//! authorization server), `xdp` (the kernel
//! half seen from here), `admin` (API server and client), `cli`, `daemon`
//! (wiring and reload), `handoff` (listening sockets to a new process, for
//! upgrades), `telemetry`, `redis` (the connection to a shared Redis), `service`
//! (systemd notifications, capabilities, the daemon's log), `fuzzing` (the fuzz
//! targets' bodies; feature `fuzzing`, and unit tests).
#![deny(unsafe_code)]

pub mod admin;
pub mod autoban;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod error_text;
pub mod exchange;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod handoff;
pub mod http1;
pub mod jws;
pub mod lists;
pub mod policy;
pub mod proxy;
pub mod redis;
pub mod service;
pub mod sys;
pub mod telemetry;
pub mod tls;
pub mod token_server;
pub mod upstream;
pub mod workers;
pub mod xdp;
