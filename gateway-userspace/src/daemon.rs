//! `xgate run`: wires config, the XDP data plane, the source lists, the proxy
//! listeners and the admin API together; reloads on SIGHUP or `POST /reload`;
//! tears everything down in order on SIGTERM/SIGINT.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::{
    admin::{
        api::ReloadReport,
        health::{self, Observed, Readiness},
        server::{self as admin, AdminState},
    },
    config::Config,
    lists::SourceLists,
    proxy::{
        self,
        server::{Settings, SettingsHandle},
        workers::Workers,
        Runtime, RuntimeHandle,
    },
    sys,
    telemetry::Metrics,
    token_server::RefreshTokens,
    xdp::{OnExit, XdpDataPlane, XDP_OBJECT},
};

/// How long in-flight requests may run after a shutdown signal.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often expired list entries are reaped.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Re-reads the config file and applies it: validated and compiled first;
/// on any error the running config stays and the error is returned.
pub struct Reloader {
    path: PathBuf,
    current: Mutex<Config>,
    lists: Arc<SourceLists>,
    runtime: Arc<RuntimeHandle>,
    metrics: Arc<Metrics>,
    /// The token server's refresh tokens, kept across reloads (in
    /// `state_dir`, which only a restart changes).
    refresh_tokens: Arc<RefreshTokens>,
    /// Each running listener's settings (TLS certificates, limits, ...),
    /// by the address it is bound to.
    listeners: Vec<(SocketAddr, Arc<SettingsHandle>)>,
}

impl Reloader {
    /// Applies the file; a refusal is counted (`xgate_reload_failures_total`).
    pub fn reload(&self) -> Result<ReloadReport, String> {
        self.apply().inspect_err(|_| self.metrics.reload_failed())
    }

    fn apply(&self) -> Result<ReloadReport, String> {
        let mut current = self.current.lock().unwrap();
        let config = Config::load(&self.path).map_err(|e| e.to_string().trim_end().to_string())?;
        let previous = self.runtime.load();
        let runtime = Runtime::compile(
            &config,
            self.metrics.clone(),
            Some(self.lists.clone()),
            &self.refresh_tokens,
            Some(&previous),
        )?;
        drop(previous);
        let listeners = self.compile_listeners(&config)?;
        self.lists.reload(&config)?;
        self.runtime.store(runtime);
        for (handle, settings) in listeners {
            handle.store(settings);
        }
        warn_about(&config);
        let needs_restart = restart_only_changes(&current, &config);
        for change in &needs_restart {
            tracing::warn!(change = %change, "changed in the config file; applies after a restart");
        }
        *current = config;
        self.metrics.reloaded();
        tracing::info!(path = %self.path.display(), "configuration reloaded");
        Ok(ReloadReport { needs_restart })
    }

    pub fn route_count(&self) -> usize {
        self.runtime.load().route_count()
    }

    /// New settings for every running listener still in `config` (matched
    /// by address; the others need a restart), certificate files re-read.
    /// Nothing is applied unless all of them compile.
    fn compile_listeners(
        &self,
        config: &Config,
    ) -> Result<Vec<(Arc<SettingsHandle>, Settings)>, String> {
        let mut compiled = Vec::new();
        for (address, handle) in &self.listeners {
            if let Some(index) = config.listeners.iter().position(|l| l.address == *address) {
                let settings = Settings::compile(config, index)
                    .map_err(|e| format!("{}: {e}", self.path.display()))?;
                compiled.push((handle.clone(), settings));
            }
        }
        Ok(compiled)
    }
}

/// Logs the config's unsafe settings (`verify: false`, ...), on start and on
/// every reload, so that they are never silent.
fn warn_about(config: &Config) {
    for warning in config.warnings() {
        tracing::warn!(path = %warning.path, "UNSAFE SETTING: {}", warning.message);
    }
}

/// Settings bound at start-up (sockets, attachments) that a reload cannot
/// change in place.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let addresses = |c: &Config| c.listeners.iter().map(|l| l.address).collect::<Vec<_>>();
    if addresses(old) != addresses(new) {
        changes.push("listeners".to_string());
    }
    if old.admin.socket != new.admin.socket {
        changes.push("admin.socket".to_string());
    }
    if old.admin.metrics_address != new.admin.metrics_address {
        changes.push("admin.metrics_address".to_string());
    }
    if old.state_dir != new.state_dir {
        changes.push("state_dir".to_string());
    }
    if old.xdp.interfaces != new.xdp.interfaces || old.xdp.mode != new.xdp.mode {
        changes.push("xdp.interfaces / xdp.mode".to_string());
    }
    if old.xdp.pin_path != new.xdp.pin_path {
        changes.push("xdp.pin_path".to_string());
    }
    changes
}

/// Runs the daemon with `workers` proxy worker threads until SIGTERM/SIGINT.
pub async fn run(config_path: &Path, workers: usize) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    // First: upstreams keep one connection pool per worker.
    let workers =
        Arc::new(Workers::start(workers).context("cannot start the proxy worker threads")?);

    let (xdp, xdp_off_reason) = start_xdp(&config)?;
    let lists = Arc::new(
        SourceLists::open(&config, xdp).map_err(|e| anyhow::anyhow!("source lists: {e}"))?,
    );
    let metrics = Arc::new(Metrics::default());
    warn_about(&config);
    let refresh_tokens = Arc::new(
        RefreshTokens::open(&config.state_dir)
            .map_err(|e| anyhow::anyhow!("OAuth 2.0 refresh tokens: {e}"))?,
    );
    let runtime = Runtime::compile(
        &config,
        metrics.clone(),
        Some(lists.clone()),
        &refresh_tokens,
        None,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let runtime = Arc::new(RuntimeHandle::new(runtime));

    let mut listeners = Vec::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let settings = Settings::compile(&config, index)
            .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
        let socket = TcpListener::bind(listener.address)
            .await
            .with_context(|| format!("cannot listen on {}", listener.address))?;
        listeners.push((socket, Arc::new(SettingsHandle::new(settings))));
    }
    let admin_listener = admin::bind(&config.admin.socket).await?;
    let metrics_listener = match config.admin.metrics_address {
        Some(address) => Some(health::bind(address).await?),
        None => None,
    };
    let readiness = Arc::new(Readiness::default());
    let observed = Arc::new(Observed {
        metrics: metrics.clone(),
        lists: lists.clone(),
        readiness: readiness.clone(),
    });

    let reloader = Arc::new(Reloader {
        path: config_path.to_path_buf(),
        current: Mutex::new(config.clone()),
        lists: lists.clone(),
        runtime: runtime.clone(),
        metrics: metrics.clone(),
        refresh_tokens: refresh_tokens.clone(),
        listeners: config
            .listeners
            .iter()
            .zip(&listeners)
            .map(|(l, (_, settings))| (l.address, settings.clone()))
            .collect(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let admin_state = Arc::new(AdminState {
        lists: lists.clone(),
        metrics: metrics.clone(),
        reloader: reloader.clone(),
        refresh_tokens: refresh_tokens.clone(),
        started: Instant::now(),
        listeners: config.listeners.iter().map(|l| l.address).collect(),
        xdp_off_reason,
        observed: observed.clone(),
    });
    // Stopped after the drain, so /readyz answers 503 through it.
    let (stop_metrics, metrics_stop) = watch::channel(false);
    let metrics_task = metrics_listener
        .map(|listener| tokio::spawn(health::serve(listener, observed, metrics_stop)));
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        config.admin.socket.clone(),
        admin_state,
        shutdown_rx.clone(),
    ));
    let mut proxy_tasks = Vec::new();
    for ((socket, settings), listener) in listeners.into_iter().zip(&config.listeners) {
        let name = listener
            .name
            .clone()
            .unwrap_or_else(|| listener.address.to_string());
        proxy_tasks.push(tokio::spawn(proxy::server::serve(
            proxy::server::Listener {
                name,
                socket,
                settings,
            },
            runtime.clone(),
            lists.clone(),
            metrics.clone(),
            workers.clone(),
            shutdown_rx.clone(),
            DRAIN_DEADLINE,
        )));
    }
    let reaper = {
        let lists = lists.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => { lists.reap_expired(); }
                    _ = shutdown.changed() => break,
                }
            }
        })
    };

    readiness.set_ready();
    tracing::info!(
        listeners = ?config.listeners.iter().map(|l| l.address).collect::<Vec<_>>(),
        admin = %config.admin.socket.display(),
        routes = reloader.route_count(),
        "xgate ready"
    );

    wait_for_shutdown(&reloader, &runtime).await?;
    readiness.set_draining();
    tracing::info!("shutting down: no new connections; draining for up to {DRAIN_DEADLINE:?}");
    let _ = shutdown_tx.send(true);
    for task in proxy_tasks {
        let _ = task.await;
    }
    // Every request has been answered: the buffered access log lines are
    // all there is to write. (A replaced config's logger wrote its own when
    // its last connection ended.)
    runtime.load().flush_access_log();
    let _ = stop_metrics.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    // Every listener has drained: nothing is left on the workers but idle
    // upstream connections.
    if let Ok(workers) = Arc::try_unwrap(workers) {
        workers.shutdown().await;
    }
    let _ = admin_task.await;
    let _ = reaper.await;
    if let Some(mut xdp) = lists.take_xdp() {
        let interfaces: Vec<String> = xdp
            .attachments()
            .iter()
            .map(|a| a.interface.clone())
            .collect();
        let on_exit = reloader.current.lock().unwrap().xdp.on_exit;
        match on_exit {
            OnExit::Detach => {
                xdp.unpin_links();
                drop(xdp);
                tracing::info!(?interfaces, "XDP detached; pinned maps kept");
            }
            OnExit::Keep => {
                drop(xdp);
                tracing::info!(
                    ?interfaces,
                    "XDP left attached (xdp.on_exit: keep); the next start adopts it"
                );
            }
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
            "xgate: {reason}: XDP is off, serving L7 only; the lists are enforced at accept()"
        );
        return Ok((None, Some(reason)));
    }
    let mut xdp = XdpDataPlane::load(XDP_OBJECT, Some(&config.xdp.pin_path))
        .context("cannot load the XDP program")?;
    for interface in &config.xdp.interfaces {
        let attachment = xdp.attach(interface, config.xdp.mode)?;
        tracing::info!(
            interface = %interface,
            mode = %attachment.mode,
            adopted = attachment.adopted,
            "XDP attached"
        );
    }
    Ok((Some(xdp), None))
}

/// Serves SIGHUP (reload) and SIGUSR1 (reopen the access log file, for
/// log rotation, as nginx's USR1) until SIGTERM or SIGINT.
async fn wait_for_shutdown(reloader: &Reloader, runtime: &RuntimeHandle) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT received"); return Ok(()); }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1 received: reopening the access log");
                runtime.load().reopen_access_log();
            }
            _ = hup.recv() => {
                if let Err(error) = reloader.reload() {
                    tracing::error!(%error, "reload failed; the running configuration stays");
                }
            }
        }
    }
}
