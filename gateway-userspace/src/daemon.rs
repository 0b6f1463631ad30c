//! `xgate run`: wires config, the XDP data plane, the source lists, the proxy
//! listeners and the admin API together; reloads on SIGHUP or `POST /reload`;
//! tears everything down in order on SIGTERM/SIGINT.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::{watch, Notify},
};

use crate::{
    admin::{
        access::Access,
        api::ReloadReport,
        health::{self, Observed, Readiness},
        server::{self as admin, AdminState},
        status_page::StatusPage,
    },
    autoban::AutoBan,
    config::Config,
    lists::{cluster::ClusterSync, SourceLists},
    proxy::{
        self,
        server::{DrainTimeout, Settings, SettingsHandle},
        workers::{CpuAffinity, Workers},
        Runtime, RuntimeHandle,
    },
    service::{capabilities, notify},
    telemetry::Metrics,
    token_server::RefreshTokens,
    xdp::{OnExit, XdpDataPlane, XDP_OBJECT},
};

/// How often expired list entries are reaped.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Re-reads the config file and applies it: validated and compiled first
/// (new listeners bound, upstream names resolved); on any error the running
/// config stays and the error is returned.
pub struct Reloader {
    /// The file the daemon was started with (absolute): the one every
    /// reload reads.
    path: PathBuf,
    current: tokio::sync::Mutex<Config>,
    /// The config the daemon started with: what the settings only a
    /// restart applies are running with.
    started_with: Config,
    lists: Arc<SourceLists>,
    runtime: Arc<RuntimeHandle>,
    metrics: Arc<Metrics>,
    workers: Arc<Workers>,
    /// The token server's refresh tokens, kept across reloads (in
    /// `state_dir`, which only a restart changes).
    refresh_tokens: Arc<RefreshTokens>,
    /// `shutdown.drain_timeout`, as the last reload left it.
    drain: Arc<DrainTimeout>,
    /// The listeners serving now, by address.
    listeners: Mutex<Vec<Running>>,
    /// Every listener task started, including removed ones still draining:
    /// shutdown waits for all of them.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set once the listening sockets went to a new process (`xgate run
    /// --takeover`): this one drains and exits, leaving XDP attached.
    handed_over: AtomicBool,
    takeover: Notify,
    /// The auto-ban rules' counts, kept across reloads.
    auto_ban: Arc<AutoBan>,
}

/// A listener a reload adds: its index in the config, bound, compiled.
type Added = (usize, TcpListener, Settings);
/// A listener that stays, and its new settings.
type Changed = (Arc<SettingsHandle>, Settings);

/// One listener that is serving.
struct Running {
    address: SocketAddr,
    settings: Arc<SettingsHandle>,
    /// Flipped to stop accepting and drain (a reload removed it, or the
    /// daemon is stopping).
    stop: watch::Sender<bool>,
    /// The listening socket, for a handoff to a new process (a copy of the
    /// serving task's).
    socket: OwnedFd,
}

impl Reloader {
    /// Applies the file; a refusal is counted (`xgate_reload_failures_total`).
    /// systemd hears RELOADING, then READY (with the outcome).
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        notify::reloading();
        let outcome = self
            .apply()
            .await
            .inspect_err(|_| self.metrics.reload_failed());
        notify::reloaded(&outcome.as_ref().map(|_| ()).map_err(Clone::clone));
        outcome
    }

    async fn apply(&self) -> Result<ReloadReport, String> {
        let mut current = self.current.lock().await;
        let config = Config::load(&self.path).map_err(|e| e.to_string().trim_end().to_string())?;
        let previous = self.runtime.load();
        let runtime = Runtime::compile(
            &config,
            self.metrics.clone(),
            Some(self.lists.clone()),
            &self.refresh_tokens,
            Some(&previous),
        )?
        .with_signals(signals(&self.auto_ban, &config));
        drop(previous);
        let (changed, added) = self.compile_listeners(&config)?;
        runtime.names_resolved().await;
        self.lists.reload(&config)?;
        self.auto_ban.reconfigure(&config);
        self.runtime.store(runtime);
        for (handle, settings) in changed {
            handle.store(settings);
        }
        self.drain.set(config.shutdown.drain_timeout);
        self.replace_listeners(&config, added);
        warn_about(&config);
        let needs_restart = restart_only_changes(&self.started_with, &config);
        for change in &needs_restart {
            tracing::warn!(change = %change, "changed in the config file; applies after a restart");
        }
        crate::service::logging::reloaded(&config.log);
        *current = config;
        self.metrics.reloaded();
        tracing::info!(path = %self.path.display(), "configuration reloaded");
        Ok(ReloadReport {
            path: self.path.display().to_string(),
            needs_restart,
        })
    }

    /// The running config, unless a reload is replacing it right now.
    pub fn config_now(&self) -> Option<Config> {
        self.current.try_lock().ok().map(|config| config.clone())
    }

    pub fn route_count(&self) -> usize {
        self.runtime.load().route_count()
    }

    /// The addresses being served now.
    pub fn listener_addresses(&self) -> Vec<SocketAddr> {
        let listeners = self.listeners.lock().unwrap();
        listeners.iter().map(|l| l.address).collect()
    }

    /// The running upstreams, by name.
    pub fn upstreams(&self) -> crate::proxy::Upstreams {
        self.runtime.load().upstreams().clone()
    }

    /// New settings for every running listener still in `config` (matched
    /// by address), certificate files re-read; and the listeners `config`
    /// adds, bound. Nothing is applied unless all of them compile and bind.
    fn compile_listeners(&self, config: &Config) -> Result<(Vec<Changed>, Vec<Added>), String> {
        let running: Vec<(SocketAddr, Arc<SettingsHandle>)> = {
            let listeners = self.listeners.lock().unwrap();
            listeners
                .iter()
                .map(|l| (l.address, l.settings.clone()))
                .collect()
        };
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for (index, listener) in config.listeners.iter().enumerate() {
            let settings = Settings::compile(config, index)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            match running
                .iter()
                .find(|(address, _)| *address == listener.address)
            {
                Some((_, handle)) => changed.push((handle.clone(), settings)),
                None => {
                    let socket = bind(listener.address).map_err(|e| {
                        format!(
                            "listeners[{index}]: {}",
                            capabilities::listen_error(listener.address, &e)
                        )
                    })?;
                    added.push((index, socket, settings));
                }
            }
        }
        Ok((changed, added))
    }

    /// Starts the listeners `added` and stops (drains) those `config` no
    /// longer has; the others go on with their open connections.
    fn replace_listeners(&self, config: &Config, added: Vec<Added>) {
        let mut listeners = self.listeners.lock().unwrap();
        listeners.retain(|running| {
            let kept = config
                .listeners
                .iter()
                .any(|l| l.address == running.address);
            if !kept {
                tracing::info!(
                    listener = %running.address,
                    "listener removed: no new connections; draining the open ones"
                );
                let _ = running.stop.send(true);
            }
            kept
        });
        for (index, socket, settings) in added {
            let running = self.start_listener(config, index, socket, settings);
            tracing::info!(listener = %running.address, "listener added");
            listeners.push(running);
        }
    }

    /// Spawns the task that serves `config.listeners[index]` on `socket`.
    fn start_listener(
        &self,
        config: &Config,
        index: usize,
        socket: TcpListener,
        settings: Settings,
    ) -> Running {
        let listener = &config.listeners[index];
        let name = listener
            .name
            .clone()
            .unwrap_or_else(|| listener.address.to_string());
        let settings = Arc::new(SettingsHandle::new(settings));
        let copy = socket
            .as_fd()
            .try_clone_to_owned()
            .expect("a listening socket's descriptor can be duplicated");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(proxy::server::serve(
            proxy::server::Listener {
                name,
                socket,
                settings: settings.clone(),
            },
            self.runtime.clone(),
            self.lists.clone(),
            self.metrics.clone(),
            self.workers.clone(),
            stopped,
            self.drain.clone(),
        ));
        self.tasks.lock().unwrap().push(task);
        Running {
            address: listener.address,
            settings,
            stop,
            socket: copy,
        }
    }

    /// Hands every listening socket to the process listening on `path`
    /// (`xgate run --takeover`), then stops accepting: the new process
    /// accepts from the same sockets, so no connection is refused between
    /// the two. The daemon then drains and exits.
    pub fn hand_over(&self, path: &Path) -> Result<Vec<SocketAddr>, String> {
        let mut listeners = self.listeners.lock().unwrap();
        if self.handed_over.load(Ordering::Acquire) {
            return Err("the listeners were handed over already".into());
        }
        let sockets: Vec<_> = listeners.iter().map(|l| l.socket.as_fd()).collect();
        crate::handoff::hand_over(path, &sockets)
            .map_err(|e| format!("cannot hand the listeners to {}: {e}", path.display()))?;
        self.handed_over.store(true, Ordering::Release);
        // Stopped, and this process's copies of the sockets closed: the new
        // process holds them now.
        let handed = std::mem::take(&mut *listeners);
        for running in &handed {
            let _ = running.stop.send(true);
        }
        let addresses = handed.iter().map(|l| l.address).collect();
        tracing::info!(
            listeners = ?addresses,
            "listening sockets handed to a new process: draining and exiting"
        );
        self.takeover.notify_one();
        Ok(addresses)
    }

    /// Stops every listener and waits until each has drained.
    async fn stop_listeners(&self) {
        // Dropped, so that each socket closes (new connections refused) as
        // soon as its task lets go of it too.
        let listeners = std::mem::take(&mut *self.listeners.lock().unwrap());
        for running in &listeners {
            let _ = running.stop.send(true);
        }
        drop(listeners);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// A listening socket for client traffic. SO_REUSEADDR, as tokio's own
/// `TcpListener::bind` sets, so a restarted daemon binds at once while old
/// connections sit in TIME_WAIT.
fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// Logs the config's unsafe settings (`verify: false`, ...), on start and on
/// every reload, so that they are never silent.
fn warn_about(config: &Config) {
    for warning in config.warnings() {
        tracing::warn!(path = %warning.path, "UNSAFE SETTING: {}", warning.message);
    }
}

/// Settings bound at start-up (the admin socket, the state directory, XDP
/// attachments) that a reload cannot change in place: `running` is the
/// config the daemon started with, so a change stays reported on every
/// reload until a restart applies it.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    let (old, mut changes) = (running, Vec::new());
    if old.admin.socket != new.admin.socket {
        changes.push("admin.socket".to_string());
    }
    if old.admin.group != new.admin.group {
        changes.push("admin.group".to_string());
    }
    if old.log.format != new.log.format {
        changes.push("log.format".to_string());
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
    if old.cluster != new.cluster {
        changes.push("cluster".to_string());
    }
    changes
}

/// Where the runtime reports refusals: the auto-ban rules, when there are
/// any (none: the chains skip reporting).
fn signals(auto_ban: &Arc<AutoBan>, config: &Config) -> Option<Arc<dyn crate::policy::Signals>> {
    config
        .auto_ban
        .is_some()
        .then(|| auto_ban.clone() as Arc<dyn crate::policy::Signals>)
}

/// Runs the daemon with `workers` proxy worker threads until SIGTERM/SIGINT
/// (or a new process takes its listeners over). With `takeover`, the
/// listening sockets come from the daemon already running (see `handoff`).
pub async fn run(
    config_path: &Path,
    workers: usize,
    affinity: CpuAffinity,
    takeover: bool,
) -> anyhow::Result<()> {
    // Reloads re-read this file: absolute, so that `xgate reload` can name
    // it whatever the daemon's working directory.
    let config_path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.into());
    let config_path = config_path.canonicalize().unwrap_or(config_path);
    let config = Config::load(&config_path)?;
    crate::service::logging::init(&config.log);
    notify::start_watchdog();
    // First: upstreams keep one connection pool per worker.
    let workers = Arc::new(
        Workers::start(workers, affinity).context("cannot start the proxy worker threads")?,
    );

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
    let auto_ban = Arc::new(AutoBan::new(&config, lists.clone(), metrics.clone()));
    let runtime = Runtime::compile(
        &config,
        metrics.clone(),
        Some(lists.clone()),
        &refresh_tokens,
        None,
    )
    .map_err(|e| anyhow::anyhow!(e))?
    .with_signals(signals(&auto_ban, &config));
    runtime.names_resolved().await;
    let runtime = Arc::new(RuntimeHandle::new(runtime));

    let mut settings = Vec::new();
    for index in 0..config.listeners.len() {
        settings.push(
            Settings::compile(&config, index)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?,
        );
    }
    // Everything that can fail on the config has passed: only now may the
    // running daemon give its listeners up.
    let mut inherited = if takeover {
        let inherited = crate::handoff::take_over(&config.admin.socket)
            .await
            .context("takeover")?;
        tracing::info!(
            listeners = ?inherited.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            "took the listening sockets over from the running daemon"
        );
        inherited
    } else {
        Vec::new()
    };
    let mut sockets = Vec::new();
    for (listener, settings) in config.listeners.iter().zip(settings) {
        let socket = match inherited.iter().position(|(a, _)| *a == listener.address) {
            Some(position) => TcpListener::from_std(inherited.swap_remove(position).1)?,
            None => bind(listener.address)
                .map_err(|e| anyhow::anyhow!(capabilities::listen_error(listener.address, &e)))?,
        };
        sockets.push((socket, settings));
    }
    // Handed over but no longer configured: closed.
    drop(inherited);
    let access = Access::resolve(config.admin.group.as_deref())?;
    let admin_listener = admin::bind(&config.admin.socket, takeover, &access).await?;
    let (metrics_listener, metrics_note) = health::bind(crate::config::MetricsListen::of(
        config.admin.metrics_address,
    ))
    .await?;
    let readiness = Arc::new(Readiness::default());
    let observed = Arc::new(Observed {
        metrics: metrics.clone(),
        runtime: runtime.clone(),
        lists: lists.clone(),
        readiness: readiness.clone(),
    });

    let reloader = Arc::new(Reloader {
        path: config_path.clone(),
        current: tokio::sync::Mutex::new(config.clone()),
        started_with: config.clone(),
        lists: lists.clone(),
        runtime: runtime.clone(),
        metrics: metrics.clone(),
        workers: workers.clone(),
        refresh_tokens: refresh_tokens.clone(),
        drain: Arc::new(DrainTimeout::new(config.shutdown.drain_timeout)),
        listeners: Mutex::default(),
        tasks: Mutex::default(),
        handed_over: AtomicBool::new(false),
        takeover: Notify::new(),
        auto_ban,
    });
    for (index, (socket, settings)) in sockets.into_iter().enumerate() {
        let running = reloader.start_listener(&config, index, socket, settings);
        reloader.listeners.lock().unwrap().push(running);
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let cluster_sync = config
        .cluster
        .as_ref()
        .map(|cluster| ClusterSync::new(cluster, lists.clone(), metrics.clone()));
    let admin_state = Arc::new(AdminState {
        lists: lists.clone(),
        metrics: metrics.clone(),
        reloader: reloader.clone(),
        refresh_tokens: refresh_tokens.clone(),
        started: Instant::now(),
        xdp_off_reason: xdp_off_reason.clone(),
        metrics_listener: metrics_note,
        cluster: cluster_sync.as_ref().map(ClusterSync::state),
        observed: observed.clone(),
        access,
    });
    // Stopped after the drain, so /readyz answers 503 through it.
    let (stop_metrics, metrics_stop) = watch::channel(false);
    let page = Arc::new(StatusPage::new(
        observed,
        reloader.clone(),
        xdp_off_reason,
        config.admin.status_token.clone(),
    ));
    let metrics_task =
        metrics_listener.map(|listener| tokio::spawn(health::serve(listener, page, metrics_stop)));
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        config.admin.socket.clone(),
        admin_state,
        shutdown_rx.clone(),
    ));
    let cluster = cluster_sync.map(|sync| tokio::spawn(sync.run(shutdown_rx.clone())));
    let reaper = {
        let lists = lists.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        lists.reap_expired();
                        lists.syn_cookie_tick();
                    }
                    _ = shutdown.changed() => break,
                }
            }
        })
    };

    // Before READY: a SIGTERM right after it must drain, not kill.
    let signals = Signals::new()?;
    readiness.set_ready();
    notify::ready();
    tracing::info!(
        listeners = ?config.listeners.iter().map(|l| l.address).collect::<Vec<_>>(),
        admin = %config.admin.socket.display(),
        routes = reloader.route_count(),
        "xgate ready"
    );

    wait_for_shutdown(&reloader, &runtime, signals).await;
    notify::stopping();
    readiness.set_draining();
    tracing::info!(
        "shutting down: no new connections; draining for up to {}",
        crate::duration::format(reloader.drain.get())
    );
    let _ = shutdown_tx.send(true);
    reloader.stop_listeners().await;
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
    if let Some(cluster) = cluster {
        let _ = cluster.await;
    }
    if let Some(mut xdp) = lists.take_xdp() {
        let interfaces: Vec<String> = xdp
            .attachments()
            .iter()
            .map(|a| a.interface.clone())
            .collect();
        let on_exit = if reloader.handed_over.load(Ordering::Acquire) {
            // The new process adopted the attachment.
            OnExit::Keep
        } else {
            reloader.current.lock().await.xdp.on_exit
        };
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
    if let Some(missing) = capabilities::first_missing(&capabilities::XDP) {
        let reason = capabilities::explain(missing, "XDP cannot be attached");
        if config.xdp.required {
            anyhow::bail!("{reason} (xdp.required is true)");
        }
        eprintln!(
            "xgate: {reason}; XDP is off, serving L7 only; the lists are enforced at accept()"
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

/// The signals the daemon answers, caught from before it says it is ready.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Serves SIGHUP (reload) and SIGUSR1 (reopen the access log file, for
/// log rotation, as nginx's USR1) until SIGTERM or SIGINT.
async fn wait_for_shutdown(reloader: &Reloader, runtime: &RuntimeHandle, signals: Signals) {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return; }
            _ = int.recv() => { tracing::info!("SIGINT received"); return; }
            () = reloader.takeover.notified() => return,
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1 received: reopening the access log");
                runtime.load().reopen_access_log();
            }
            _ = hup.recv() => {
                if let Err(error) = reloader.reload().await {
                    tracing::error!(%error, "reload failed; the running configuration stays");
                }
            }
        }
    }
}
