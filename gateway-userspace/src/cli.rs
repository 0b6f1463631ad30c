//! The `xgate` command line: `run` starts the daemon; every other command
//! talks to a running daemon through its admin API (or, for `validate`,
//! just reads a file).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use http::Method;
use ipnet::IpNet;

use crate::{
    admin::{
        api::{AddRequest, Ban, RevokedTokens},
        client,
    },
    config::{cli_settings, CliSettings, Config, XdpMode, DEFAULT_ADMIN_SOCKET},
    daemon, duration,
    lists::{parse_cidr, Listed, SourceLists},
    token_server::ClientTokens,
    xdp::{self, KernelRules, ListKind, XdpDataPlane, XDP_OBJECT},
};

mod config_cmd;
mod shell;

/// Where `run` and `validate` look when no --config is given.
pub const DEFAULT_CONFIG: &str = "/etc/xgate/xgate.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "xgate",
    version,
    about = "xgate: an API gateway that drops unwanted packets in the kernel (XDP) before they cost anything",
    long_about = "xgate: an API gateway that drops unwanted packets in the kernel (XDP) before they cost anything.\n\n\
Start the daemon with `xgate run --config FILE` (as root, or with CAP_BPF, CAP_PERFMON and\n\
CAP_NET_ADMIN, to attach XDP). Every other command talks to that daemon through its admin\n\
socket, found from --admin-socket, $XGATE_ADMIN_SOCKET, the admin.socket of --config, or\n\
/run/xgate/admin.sock, in that order; root and the members of admin.group may use it.",
    after_help = "Examples:\n  \
xgate validate -c /etc/xgate/xgate.yaml\n  \
sudo xgate run -c /etc/xgate/xgate.yaml\n  \
xgate blocklist add 203.0.113.0/24 --reason scanner --ttl 1h\n  \
xgate blocklist ls\n  \
xgate bans ls\n  \
xgate status\n  \
xgate config dump -c /etc/xgate/xgate.yaml"
)]
pub struct Cli {
    /// Config file (default: /etc/xgate/xgate.yaml for run, validate and config dump).
    #[arg(short, long, global = true, env = "XGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Admin API socket of the running daemon.
    #[arg(long, global = true, env = "XGATE_ADMIN_SOCKET", value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon in the foreground (SIGHUP reloads; SIGTERM/SIGINT drain and stop;
    /// under systemd it reports READY, RELOADING, STOPPING and feeds the watchdog: Type=notify).
    Run {
        /// Proxy worker threads (default: one per CPU the process may run on). Each runs its own
        /// event loop; connections are spread over them in turn and stay on
        /// theirs. Listening, the admin API and reloads run on one more thread.
        #[arg(long, env = "XGATE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        /// Where the proxy workers run. The CPUs the process may run on are
        /// its affinity mask (taskset, systemd's CPUAffinity=).
        #[arg(long, env = "XGATE_CPU_AFFINITY", value_enum, default_value_t)]
        cpu_affinity: crate::workers::CpuAffinity,
        /// Upgrade without downtime: take the listening sockets over from the daemon running with this config (its admin.socket), which then drains and exits.
        #[arg(long)]
        takeover: bool,
    },
    /// Check a config file: prints every error with its path, line and column, and warnings
    /// about settings that do less than they seem to (as `nginx -t`); exits 1 on any error.
    Validate,
    /// Show the running daemon's listeners, lists, the sources dropped most
    /// (XDP and L7), XDP attachment and counters.
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Make the daemon re-read the file it was started with (not -c's: a named file that differs is reported and exits 1): applied atomically, or refused with every error while the old config stays.
    Reload,
    /// Show the daemon's log level, or change it now: until a restart, or a reload that changes
    /// log.level in the file.
    #[command(after_help = "Examples:\n  \
xgate log-level\n  \
xgate log-level debug\n  \
xgate log-level 'info,gateway_userspace::proxy=trace'")]
    LogLevel {
        /// error, warn, info, debug, trace, off, or a RUST_LOG-style filter (target=level,...).
        level: Option<String>,
    },
    /// Deny list: sources dropped in XDP when attached, refused at L7 always.
    #[command(subcommand)]
    Blocklist(ListCommand),
    /// Allow list: sources never denied or rate-limited (an allow entry wins over a deny entry).
    #[command(subcommand)]
    Allowlist(ListCommand),
    /// Sources banned by the auto_ban rules (deny-list entries with a TTL): list and lift them.
    #[command(subcommand)]
    Bans(BansCommand),
    /// The kernel data plane: counters; attach, detach and cleanup without a daemon.
    #[command(subcommand)]
    Xdp(XdpCommand),
    /// Print an API key's `key_hash` for consumers[].keys[] (the key is read from standard input,
    /// so it stays out of shell history), or make a new random key with --generate.
    #[command(after_help = "Examples:\n  \
printf %s \"$KEY\" | xgate hash-key\n  \
xgate hash-key --generate")]
    HashKey {
        /// Make a random 256-bit key and print it with its hash.
        #[arg(long)]
        generate: bool,
    },
    /// The OAuth 2.0 token server (oauth2_server): refresh tokens held by clients.
    #[command(subcommand)]
    Oauth2(OAuth2Command),
    /// Upstream targets: their health (passive and active checks) and why; force one up or down.
    #[command(after_help = "Examples:\n  \
xgate upstreams\n  \
xgate upstreams ls api --json\n  \
xgate upstreams set-state api 10.0.0.7:8080 down\n  \
xgate upstreams set-state api 10.0.0.7:8080 auto")]
    Upstreams {
        #[command(subcommand)]
        action: Option<crate::admin::upstreams_cli::UpstreamsCommand>,
    },
    /// The config file's JSON Schema, and the effective config with secrets redacted.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    #[command(after_help = "Examples:\n  \
xgate completions bash > /etc/bash_completion.d/xgate\n  \
xgate completions zsh > /usr/local/share/zsh/site-functions/_xgate\n  \
xgate completions fish > ~/.config/fish/completions/xgate.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (xgate.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum OAuth2Command {
    /// Live refresh tokens, by client.
    Tokens {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Revoke every refresh token of a client (its access tokens work until they expire).
    Revoke {
        /// The client's client_id.
        client_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ListCommand {
    /// Add a CIDR (or one address) now; persisted across restarts.
    ///
    /// IPv4-mapped IPv6 forms (::ffff:198.51.100.7) are stored as IPv4, as IPv4
    /// clients are matched. When the other list overrules the new entry (an allow
    /// entry wins over a deny entry), the entry is added and a warning names the
    /// overruling entry.
    Add {
        /// e.g. 203.0.113.0/24, 2001:db8::/48, 198.51.100.7
        #[arg(value_parser = checked_cidr)]
        cidr: String,
        /// Free text shown by `ls` (who, why, ticket).
        #[arg(long)]
        reason: Option<String>,
        /// Remove the entry automatically after this long: 90s, 30m, 12h, 7d.
        #[arg(long, value_parser = duration::parse)]
        ttl: Option<Duration>,
        /// Needed for a prefix of length 0 (0.0.0.0/0, ::/0): every source
        /// of that address family.
        #[arg(long)]
        force: bool,
    },
    /// Remove a CIDR previously added with `add`.
    Rm {
        #[arg(value_parser = parse_cidr)]
        cidr: IpNet,
    },
    /// List every entry: from the config file and added at runtime.
    Ls {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BansCommand {
    /// Every ban in force: source, rule, reason, expiry.
    Ls {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Lift a ban now: give the banned CIDR, or an address (the narrowest ban covering it is lifted).
    /// With cluster mode, every node lifts it.
    #[command(
        after_help = "Examples:\n  xgate bans rm 203.0.113.7\n  xgate bans rm 203.0.113.0/24"
    )]
    Rm {
        /// e.g. 203.0.113.7 (a banned address, or one inside a banned network) or 203.0.113.0/24
        #[arg(value_parser = parse_cidr, value_name = "ADDRESS|CIDR")]
        source: IpNet,
    },
}

#[derive(Debug, Subcommand)]
enum XdpCommand {
    /// Packet counters by verdict and reason, summed over CPUs (from the running daemon):
    /// the total over every attached interface and a column per interface.
    Stats {
        /// Print the raw JSON document (the totals, or with --iface that interface's).
        #[arg(long)]
        json: bool,
        /// Only this attached interface's counters.
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
    },
    /// Attach the XDP program to an interface and leave it enforcing, without a daemon
    /// (development; `cargo xtask attach`). With --config, its lists and rate limit are loaded.
    Attach {
        #[arg(long, value_name = "IFACE")]
        iface: String,
        #[arg(long, value_enum, default_value = "auto")]
        mode: CliXdpMode,
        /// bpffs directory for pinned maps and links (default: xdp.pin_path of
        /// --config, else /sys/fs/bpf/xgate).
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    /// Detach an attachment left in place (by `xdp attach` or `xdp.on_exit: keep`). Stop the daemon first.
    Detach {
        #[arg(long, value_name = "IFACE")]
        iface: String,
        /// Default: xdp.pin_path of --config, else /sys/fs/bpf/xgate.
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    /// Remove the pinned maps a stopped xgate left behind, freeing their kernel memory.
    ///
    /// Removes the map directories and the empty pin directories. Refused while XDP is
    /// attached with them or the daemon answers. Run it when xgate is stopped for good
    /// or its pin_path changes; not between restarts (the maps carry runtime lists and
    /// rate state over).
    Cleanup {
        /// Default: xdp.pin_path of --config, else /sys/fs/bpf/xgate.
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CliXdpMode {
    Auto,
    Native,
    Generic,
}

impl From<CliXdpMode> for XdpMode {
    fn from(mode: CliXdpMode) -> Self {
        match mode {
            CliXdpMode::Auto => XdpMode::Auto,
            CliXdpMode::Native => XdpMode::Native,
            CliXdpMode::Generic => XdpMode::Generic,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The control runtime: commands, and for `run` the listeners' accept
    // loops, the admin API and reloads. Proxying runs on the workers.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Run {
            workers,
            cpu_affinity,
            takeover,
        } => {
            let workers = workers.map_or_else(
                || std::thread::available_parallelism().map_or(1, usize::from),
                usize::from,
            );
            daemon::run(&config_path(&cli), workers, *cpu_affinity, *takeover).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::HashKey { generate } => hash_key(*generate),
        Command::Validate => {
            let path = config_path(&cli);
            match Config::load(&path) {
                Ok(config) => {
                    // As `nginx -t` does: valid, but worth a second look.
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    for warning in config.warnings() {
                        let position = crate::config::locate(&text, &warning.path)
                            .map(|p| format!(" ({p})"))
                            .unwrap_or_default();
                        eprintln!("{}: WARNING: {warning}{position}", path.display());
                    }
                    for note in crate::config::ipv4_mapped_notes(&text) {
                        let position = crate::config::locate(&text, &note.path)
                            .map(|p| format!(" ({p})"))
                            .unwrap_or_default();
                        eprintln!("{}: note: {note}{position}", path.display());
                    }
                    println!(
                        "{}: ok ({} listener(s), {} upstream(s), {} route(s), {} deny entr{})",
                        path.display(),
                        config.listeners.len(),
                        config.upstreams.len(),
                        config.routes.len(),
                        config.xdp.deny.len(),
                        if config.xdp.deny.len() == 1 {
                            "y"
                        } else {
                            "ies"
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprint!("{errors}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Status { json } => {
            let status =
                client::call_ok(&admin_socket(&cli)?, Method::GET, "/status", None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload => {
            let report =
                client::call_ok(&admin_socket(&cli)?, Method::POST, "/reload", None).await?;
            let loaded = report["path"].as_str().unwrap_or("its config file");
            println!("reloaded {loaded}");
            let mut code = ExitCode::SUCCESS;
            // The daemon re-reads the file it was started with (nginx -s
            // reload does the same): a -c naming another file must not look
            // as if that file were now running.
            if let Some(named) = &cli.config {
                let named = named.canonicalize().unwrap_or_else(|_| named.clone());
                if named != Path::new(loaded) {
                    eprintln!(
                        "xgate: warning: the daemon re-read ITS OWN file {loaded}, not {}: a \
                         reload never switches files; to run {} restart the daemon with -c {}",
                        named.display(),
                        named.display(),
                        named.display()
                    );
                    code = ExitCode::FAILURE;
                }
            }
            if let Some(changes) = report["needs_restart"].as_array().filter(|c| !c.is_empty()) {
                let changes: Vec<&str> = changes.iter().filter_map(|c| c.as_str()).collect();
                println!(
                    "changed but applied only after a restart: {}",
                    changes.join(", ")
                );
            }
            Ok(code)
        }
        Command::LogLevel { level } => {
            crate::admin::log_level::cli(&admin_socket(&cli)?, level.as_deref()).await
        }
        Command::Blocklist(action) => list(&cli, ListKind::Deny, action).await,
        Command::Allowlist(action) => list(&cli, ListKind::Allow, action).await,
        Command::Bans(action) => bans_command(&cli, action).await,
        Command::Xdp(action) => xdp_command(&cli, action).await,
        Command::Oauth2(action) => oauth2_command(&cli, action).await,
        Command::Upstreams { action } => {
            crate::admin::upstreams_cli::run(&admin_socket(&cli)?, action.as_ref()).await
        }
        Command::Config(action) => config_cmd::run(&config_path(&cli), action),
        Command::Completions { shell } => shell::completions(*shell),
        Command::Man { out_dir } => shell::man(out_dir),
    }
}

async fn oauth2_command(cli: &Cli, action: &OAuth2Command) -> anyhow::Result<ExitCode> {
    let socket = admin_socket(cli)?;
    match action {
        OAuth2Command::Tokens { json } => {
            let value =
                client::call_ok(&socket, Method::GET, "/oauth2/refresh-tokens", None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::SUCCESS);
            }
            let clients: Vec<ClientTokens> = serde_json::from_value(value)?;
            if clients.is_empty() {
                println!("no live refresh tokens");
                return Ok(ExitCode::SUCCESS);
            }
            let now = crate::policy::unix_now();
            println!("{:<32} {:>6}  LAST EXPIRES", "CLIENT_ID", "ACTIVE");
            for c in clients {
                let left = Duration::from_secs(c.last_expiry.saturating_sub(now).max(0) as u64);
                println!(
                    "{:<32} {:>6}  in {}",
                    c.client_id,
                    c.active,
                    duration::format(left)
                );
            }
        }
        OAuth2Command::Revoke { client_id } => {
            let path = format!("/oauth2/refresh-tokens/{client_id}");
            let value = client::call_ok(&socket, Method::DELETE, &path, None).await?;
            let revoked: RevokedTokens = serde_json::from_value(value)?;
            println!(
                "revoked {} refresh token(s) of {}; its access tokens work until they expire",
                revoked.revoked, revoked.client_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn bans_command(cli: &Cli, action: &BansCommand) -> anyhow::Result<ExitCode> {
    let socket = admin_socket(cli)?;
    match action {
        BansCommand::Ls { json } => {
            let value = client::call_ok(&socket, Method::GET, "/bans", None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::SUCCESS);
            }
            let bans: Vec<Ban> = serde_json::from_value(value)?;
            if bans.is_empty() {
                println!("no bans");
                return Ok(ExitCode::SUCCESS);
            }
            let now = crate::policy::unix_now().max(0) as u64;
            println!("{:<43} {:<20} {:<16} REASON", "SOURCE", "RULE", "EXPIRES");
            for ban in bans {
                let expires = match ban.expires_at {
                    None => "never".to_string(),
                    Some(t) => format!(
                        "in {}",
                        duration::format(Duration::from_secs(t.saturating_sub(now)))
                    ),
                };
                println!(
                    "{:<43} {:<20} {:<16} {}",
                    ban.source.to_string(),
                    ban.rule,
                    expires,
                    ban.reason.as_deref().unwrap_or("")
                );
            }
        }
        BansCommand::Rm { source } => {
            let value =
                client::call_ok(&socket, Method::DELETE, &format!("/bans/{source}"), None).await?;
            let ban: Ban = serde_json::from_value(value)?;
            println!("lifted the ban on {} (rule {})", ban.source, ban.rule);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn xdp_command(cli: &Cli, action: &XdpCommand) -> anyhow::Result<ExitCode> {
    match action {
        XdpCommand::Stats { json, iface } => {
            let status = client::call_ok(&admin_socket(cli)?, Method::GET, "/status", None).await?;
            let Some(xdp) = status.get("xdp") else {
                anyhow::bail!(
                    "XDP is not attached: {}",
                    status["xdp_off_reason"]
                        .as_str()
                        .unwrap_or("unknown reason")
                );
            };
            let counters = match iface {
                Some(iface) => {
                    let by_interface = &xdp["interface_counters"];
                    let Some(counters) = by_interface.get(iface) else {
                        let attached: Vec<&str> = by_interface
                            .as_object()
                            .map(|m| m.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        anyhow::bail!(
                            "XDP is not attached to {iface} (attached to: {})",
                            attached.join(", ")
                        );
                    };
                    counters
                }
                None => &xdp["counters"],
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(counters)?);
            } else if let Some(iface) = iface {
                print_counter_columns(&[(iface.as_str(), counters)]);
            } else {
                print_counters(xdp);
            }
        }
        XdpCommand::Attach {
            iface,
            mode,
            pin_path,
        } => {
            let pin_path = pin_path_of(cli, pin_path);
            let mut plane = XdpDataPlane::load(XDP_OBJECT, Some(&pin_path))?;
            let attachment = plane.attach(iface, (*mode).into())?;
            match &cli.config {
                Some(path) => {
                    let config = Config::load(path)?;
                    SourceLists::open(&config, Some(plane)).map_err(|e| anyhow::anyhow!(e))?;
                }
                None => plane.replace_rules(&KernelRules::default())?,
            }
            println!(
                "attached to {iface} ({} mode{}); it stays until `xgate xdp detach --iface {iface}`",
                attachment.mode,
                if attachment.adopted { ", replaced the program of an existing attachment" } else { "" }
            );
        }
        XdpCommand::Detach { iface, pin_path } => {
            let pin_path = pin_path_of(cli, pin_path);
            if xdp::detach_pinned(&pin_path, iface).map_err(|e| anyhow::anyhow!(e))? {
                println!("detached from {iface}");
            } else {
                anyhow::bail!(
                    "no pinned attachment for {iface} under {}",
                    xdp::links_dir(&pin_path).display()
                );
            }
        }
        XdpCommand::Cleanup { pin_path } => {
            let pin_path = pin_path_of(cli, pin_path);
            xdp_cleanup(cli, &pin_path).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(cli: &Cli, kind: ListKind, action: &ListCommand) -> anyhow::Result<ExitCode> {
    let socket = admin_socket(cli)?;
    let base = format!("/{}", kind.name());
    let verb = match kind {
        ListKind::Deny => ("blocked", "unblocked"),
        ListKind::Allow => ("allowed", "removed from the allowlist:"),
    };
    match action {
        ListCommand::Add {
            cidr,
            reason,
            ttl,
            force,
        } => {
            let request = AddRequest {
                cidr: cidr.clone(),
                reason: reason.clone(),
                ttl: ttl.map(duration::format),
                force: *force,
            };
            let body = Some(serde_json::to_value(request)?);
            let added = client::call_ok(&socket, Method::POST, &base, body).await?;
            let stored = added["cidr"].as_str().unwrap_or(cidr);
            match ttl {
                Some(ttl) => println!("{} {stored} for {}", verb.0, duration::format(*ttl)),
                None => println!("{} {stored}", verb.0),
            }
            for warning in added["warnings"].as_array().into_iter().flatten() {
                eprintln!("xgate: warning: {}", warning.as_str().unwrap_or_default());
            }
        }
        ListCommand::Rm { cidr } => {
            client::call_ok(&socket, Method::DELETE, &format!("{base}/{cidr}"), None).await?;
            println!("{} {cidr}", verb.1);
        }
        ListCommand::Ls { json } => {
            let value = client::call_ok(&socket, Method::GET, &base, None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let entries: Vec<Listed> = serde_json::from_value(value)?;
                print_list(kind, &entries);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// --admin-socket / $XGATE_ADMIN_SOCKET, else the config's admin.socket,
/// else the default path. The config file is read leniently (it may be
/// mid-edit): only admin.socket matters here.
fn admin_socket(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(path) = &cli.admin_socket {
        return Ok(path.clone());
    }
    if let Some(path) = &cli.config {
        return Ok(lenient_settings(path).admin_socket);
    }
    Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET))
}

/// --pin-path, else the config's xdp.pin_path, else the default.
fn pin_path_of(cli: &Cli, given: &Option<PathBuf>) -> PathBuf {
    match (given, &cli.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => lenient_settings(config).pin_path,
        (None, None) => PathBuf::from(crate::config::DEFAULT_PIN_PATH),
    }
}

/// The CLI's settings from a config file, with a note on stderr when it had
/// to fall back to a default.
fn lenient_settings(path: &Path) -> CliSettings {
    let settings = cli_settings(path);
    if let Some(note) = &settings.note {
        eprintln!("xgate: note: {note}");
    }
    settings
}

/// `xgate xdp cleanup`: refused while the daemon answers with XDP on these
/// pins, or while a link is pinned (see [`xdp::cleanup`]).
async fn xdp_cleanup(cli: &Cli, pin_path: &Path) -> anyhow::Result<()> {
    let socket = admin_socket(cli)?;
    if let Ok(status) = client::call_ok(&socket, Method::GET, "/status", None).await {
        let daemon_pins = status["xdp"]["pin_path"].as_str().map(PathBuf::from);
        if status.get("xdp").is_some() && daemon_pins.as_deref().is_none_or(|p| p == pin_path) {
            anyhow::bail!(
                "a running xgate daemon (admin socket {}) uses the maps under {}; stop it first",
                socket.display(),
                pin_path.display()
            );
        }
    }
    let removed = xdp::cleanup(pin_path).map_err(|e| anyhow::anyhow!(e))?;
    if removed.maps == 0 && removed.dirs.is_empty() {
        println!("nothing pinned under {}", pin_path.display());
    } else {
        println!(
            "removed {} pinned map(s) and {} director{} under {}",
            removed.maps,
            removed.dirs.len(),
            if removed.dirs.len() == 1 { "y" } else { "ies" },
            pin_path.display()
        );
    }
    Ok(())
}

/// Validates a CIDR argument before anything is sent, but keeps the text as
/// typed: the daemon stores its canonical form and says what it changed.
fn checked_cidr(text: &str) -> Result<String, String> {
    parse_cidr(text).map(|_| text.trim().to_string())
}

fn print_list(kind: ListKind, entries: &[Listed]) {
    if entries.is_empty() {
        println!("{} is empty", kind.name());
        return;
    }
    println!("{:<43} {:<7} {:<20} REASON", "CIDR", "SOURCE", "EXPIRES");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for e in entries {
        let expires = match e.expires_at {
            None => "never".to_string(),
            Some(t) => format!(
                "in {}",
                duration::format(Duration::from_secs(t.saturating_sub(now)))
            ),
        };
        println!(
            "{:<43} {:<7} {:<20} {}",
            e.cidr.to_string(),
            e.source,
            expires,
            e.reason.as_deref().unwrap_or("")
        );
    }
}

/// The top dropped sources (XDP packets, sampled, and L7 refusals).
fn print_dropped_sources(rows: &serde_json::Value) {
    let Some(rows) = rows.as_array().filter(|r| !r.is_empty()) else {
        return;
    };
    println!("dropped:   the sources dropped most (XDP: packets, sampled; L7: refusals)");
    for row in rows.iter().take(5) {
        let reasons: Vec<String> = row["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{} {} {}",
                    if r["layer"] == "xdp" { "XDP" } else { "L7" },
                    r["reason"].as_str().unwrap_or("?"),
                    r["count"]
                )
            })
            .collect();
        println!(
            "           {:<39} {:>10}  {}",
            row["source"].as_str().unwrap_or("?"),
            row["dropped"],
            reasons.join(", ")
        );
    }
}

fn print_status(s: &serde_json::Value) {
    let get = |k: &str| s.get(k).cloned().unwrap_or_default();
    println!(
        "xgate {} (up {}s, {} reloads)",
        get("version").as_str().unwrap_or("?"),
        get("uptime_secs"),
        get("reloads")
    );
    let listeners: Vec<String> = get("listeners")
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    println!("listeners: {}", listeners.join(", "));
    println!("routes:    {}", get("routes"));
    if let Some(note) = s.get("metrics_listener").and_then(|n| n.as_str()) {
        println!("metrics:   {note} (/metrics, /livez, /readyz, /status)");
    }
    println!(
        "lists:     {} blocked ({} bans), {} allowed; {} connections refused at L7",
        get("blocklist_entries"),
        get("bans"),
        get("allowlist_entries"),
        get("l7_denied_connections")
    );
    print_dropped_sources(&get("top_dropped_sources"));
    if let Some(cluster) = s.get("cluster") {
        println!(
            "cluster:   node {}, {}",
            cluster["node"].as_str().unwrap_or("?"),
            if cluster["synced"].as_bool() == Some(true) {
                "synced with Redis"
            } else {
                "NOT synced (Redis unreachable): enforcing the local lists"
            }
        );
    }
    match s.get("xdp") {
        Some(xdp) => {
            let attached: Vec<String> = xdp["attached"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|at| {
                            format!(
                                "{} ({}{})",
                                at["interface"].as_str().unwrap_or("?"),
                                at["mode"].as_str().unwrap_or("?"),
                                if at["adopted"].as_bool() == Some(true) {
                                    ", adopted"
                                } else {
                                    ""
                                }
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!("xdp:       attached to {}", attached.join(", "));
            if let Some(dir) = xdp["pin_path"].as_str() {
                println!(
                    "           pinned under {dir}; active rule slot {}",
                    xdp["active_slot"]
                );
            }
            println!("           {} rate buckets", xdp["rate_buckets"]);
            print_counters(xdp);
        }
        None => println!(
            "xdp:       off ({})",
            s.get("xdp_off_reason")
                .and_then(|r| r.as_str())
                .unwrap_or("unknown reason")
        ),
    }
}

/// The XDP status's packet counters: the total and one column per
/// attached interface.
fn print_counters(xdp: &serde_json::Value) {
    let mut columns = vec![("total", &xdp["counters"])];
    if let Some(by_interface) = xdp["interface_counters"].as_object() {
        columns.extend(by_interface.iter().map(|(name, c)| (name.as_str(), c)));
    }
    print_counter_columns(&columns);
}

fn print_counter_columns(columns: &[(&str, &serde_json::Value)]) {
    let width = |name: &str| name.len().max(12);
    let mut header = format!("           {:<27}", "packets:");
    for (name, _) in columns {
        header.push_str(&format!(" {name:>w$}", w = width(name)));
    }
    println!("{}", header.trim_end());
    for stat in gateway_common::Stat::ALL {
        let verdict = stat.verdict();
        let mut line = format!("             {:<20} {verdict:<4}", stat.name());
        for (name, counters) in columns {
            // A JSON value ignores the width: format the number.
            let value = counters[stat.name()]
                .as_u64()
                .map_or_else(|| "?".to_string(), |n| n.to_string());
            line.push_str(&format!(" {value:>w$}", w = width(name)));
        }
        println!("{line}");
    }
}

/// `xgate hash-key`: the `sha256:<hex>` form of a key from standard input,
/// or of a new random one.
fn hash_key(generate: bool) -> anyhow::Result<ExitCode> {
    use std::io::Read;
    let key = if generate {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
        let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        println!("key:      {key}");
        key
    } else {
        let mut key = String::new();
        std::io::stdin().read_to_string(&mut key)?;
        // `echo KEY |` adds a newline that is not part of the key.
        let key = key.trim_end_matches(['\r', '\n']).to_string();
        if key.is_empty() {
            anyhow::bail!("no key on standard input (try: printf %s \"$KEY\" | xgate hash-key)");
        }
        key
    };
    let digest = crate::policy::consumers::sha256(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if generate {
        println!("key_hash: sha256:{hex}");
    } else {
        println!("sha256:{hex}");
    }
    Ok(ExitCode::SUCCESS)
}
