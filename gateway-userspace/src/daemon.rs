//! `xgate run`: wires config, the XDP data plane, the blocklist, the proxy
//! listeners and the admin API together, and tears them down in order.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    admin::server::{self as admin, AdminState},
    blocklist::Blocklist,
    config::Config,
    proxy::{self, Runtime},
    sys,
    telemetry::Metrics,
    xdp::{XdpDataPlane, XDP_OBJECT},
};

/// How long in-flight requests may run after a shutdown signal.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often expired blocklist entries are reaped.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;

    let (xdp, xdp_off_reason) = start_xdp(&config)?;
    let blocklist = Arc::new(
        Blocklist::open(&config.xdp.deny, &config.state_dir, xdp)
            .map_err(|e| anyhow::anyhow!("blocklist: {e}"))?,
    );
    let metrics = Arc::new(Metrics::default());
    let runtime = Arc::new(Runtime::compile(&config));

    let mut listeners = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.address)
            .await
            .with_context(|| format!("cannot listen on {}", listener.address))?;
        listeners.push(socket);
    }
    let admin_listener = admin::bind(&config.admin.socket).await?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let admin_state = Arc::new(AdminState {
        blocklist: blocklist.clone(),
        metrics: metrics.clone(),
        started: Instant::now(),
        listeners: config.listeners.iter().map(|l| l.address).collect(),
        routes: runtime.route_count(),
        xdp_off_reason,
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        config.admin.socket.clone(),
        admin_state,
        shutdown_rx.clone(),
    ));
    let mut proxy_tasks = Vec::new();
    for socket in listeners {
        proxy_tasks.push(tokio::spawn(proxy::server::serve(
            socket,
            runtime.clone(),
            blocklist.clone(),
            metrics.clone(),
            shutdown_rx.clone(),
            DRAIN_DEADLINE,
        )));
    }
    let reaper = {
        let blocklist = blocklist.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => { blocklist.reap_expired(); }
                    _ = shutdown.changed() => break,
                }
            }
        })
    };

    tracing::info!(
        listeners = ?config.listeners.iter().map(|l| l.address).collect::<Vec<_>>(),
        admin = %config.admin.socket.display(),
        routes = runtime.route_count(),
        "xgate ready"
    );

    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down: no new connections; draining for up to {DRAIN_DEADLINE:?}");
    let _ = shutdown_tx.send(true);
    for task in proxy_tasks {
        let _ = task.await;
    }
    let _ = admin_task.await;
    let _ = reaper.await;
    if let Some(xdp) = blocklist.take_xdp() {
        let interfaces: Vec<String> = xdp
            .attachments()
            .iter()
            .map(|a| a.interface.clone())
            .collect();
        drop(xdp);
        if !interfaces.is_empty() {
            tracing::info!(?interfaces, "XDP detached; pinned maps kept");
        }
    }
    Ok(())
}

/// Loads and attaches XDP when configured and permitted. Without the
/// privilege, says so in one line and carries on at L7.
fn start_xdp(config: &Config) -> anyhow::Result<(Option<XdpDataPlane>, Option<String>)> {
    if config.xdp.interfaces.is_empty() {
        return Ok((None, Some("no xdp.interfaces configured".into())));
    }
    if !sys::is_root() {
        let reason = "not running as root (XDP needs CAP_BPF and CAP_NET_ADMIN)".to_string();
        eprintln!(
            "xgate: {reason}: XDP is off, serving L7 only; the blocklist is enforced at accept()"
        );
        return Ok((None, Some(reason)));
    }
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, Some(&config.xdp.pin_path))
        .context("cannot load the XDP program")?;
    for interface in &config.xdp.interfaces {
        let mode = xdp.attach(interface, config.xdp.mode)?;
        tracing::info!(interface = %interface, mode = %mode, "XDP attached");
    }
    Ok((Some(xdp), None))
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
