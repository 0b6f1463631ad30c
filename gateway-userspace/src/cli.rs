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
    admin::{api::AddRequest, client},
    blocklist::{parse_cidr, Listed},
    config::{Config, DEFAULT_ADMIN_SOCKET},
    daemon, duration, telemetry,
};

/// Where `run` and `validate` look when no --config is given.
pub const DEFAULT_CONFIG: &str = "/etc/xgate/xgate.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "xgate",
    version,
    about = "xgate: an API gateway that drops unwanted packets in the kernel (XDP) before they cost anything",
    long_about = "xgate: an API gateway that drops unwanted packets in the kernel (XDP) before they cost anything.\n\n\
Start the daemon with `xgate run --config FILE` (as root to attach XDP). Every other command\n\
talks to that daemon through its admin socket, found from --admin-socket, $XGATE_ADMIN_SOCKET,\n\
the admin.socket of --config, or /run/xgate/admin.sock, in that order.",
    after_help = "Examples:\n  \
xgate validate -c /etc/xgate/xgate.yaml\n  \
sudo xgate run -c /etc/xgate/xgate.yaml\n  \
xgate blocklist add 203.0.113.0/24 --reason scanner --ttl 1h\n  \
xgate blocklist ls\n  \
xgate status"
)]
pub struct Cli {
    /// Config file (default: /etc/xgate/xgate.yaml for run and validate).
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
    /// Run the gateway daemon in the foreground (SIGTERM/SIGINT drain and stop it).
    Run,
    /// Check a config file: prints every error with its path; exits 1 if there is any.
    Validate,
    /// Show the running daemon's listeners, XDP attachment and counters.
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Manage the source blocklist: dropped in XDP when attached, refused at L7 always.
    #[command(subcommand)]
    Blocklist(BlocklistCommand),
}

#[derive(Debug, Subcommand)]
enum BlocklistCommand {
    /// Block a CIDR (or one address) now; persisted across restarts.
    Add {
        /// e.g. 203.0.113.0/24, 2001:db8::/48, 198.51.100.7
        #[arg(value_parser = parse_cidr)]
        cidr: IpNet,
        /// Free text shown by `ls` (who, why, ticket).
        #[arg(long)]
        reason: Option<String>,
        /// Remove the entry automatically after this long: 90s, 30m, 12h, 7d.
        #[arg(long, value_parser = duration::parse)]
        ttl: Option<Duration>,
    },
    /// Unblock a CIDR previously added with `add`.
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        Command::Run => {
            telemetry::init_logging();
            daemon::run(&config_path(&cli)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate => {
            let path = config_path(&cli);
            match Config::load(&path) {
                Ok(config) => {
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
        Command::Blocklist(action) => blocklist(&cli, action).await,
    }
}

async fn blocklist(cli: &Cli, action: &BlocklistCommand) -> anyhow::Result<ExitCode> {
    let socket = admin_socket(cli)?;
    match action {
        BlocklistCommand::Add { cidr, reason, ttl } => {
            let request = AddRequest {
                cidr: cidr.to_string(),
                reason: reason.clone(),
                ttl: ttl.map(duration::format),
            };
            client::call_ok(
                &socket,
                Method::POST,
                "/blocklist",
                Some(serde_json::to_value(request)?),
            )
            .await?;
            match ttl {
                Some(ttl) => println!("blocked {cidr} for {}", duration::format(*ttl)),
                None => println!("blocked {cidr}"),
            }
        }
        BlocklistCommand::Rm { cidr } => {
            client::call_ok(&socket, Method::DELETE, &format!("/blocklist/{cidr}"), None).await?;
            println!("unblocked {cidr}");
        }
        BlocklistCommand::Ls { json } => {
            let value = client::call_ok(&socket, Method::GET, "/blocklist", None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let entries: Vec<Listed> = serde_json::from_value(value)?;
                print_blocklist(&entries);
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
/// else the default path.
fn admin_socket(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(path) = &cli.admin_socket {
        return Ok(path.clone());
    }
    if let Some(path) = &cli.config {
        let config = Config::load(Path::new(path)).map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(config.admin.socket);
    }
    Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET))
}

fn print_blocklist(entries: &[Listed]) {
    if entries.is_empty() {
        println!("blocklist is empty");
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

fn print_status(s: &serde_json::Value) {
    let get = |k: &str| s.get(k).cloned().unwrap_or_default();
    println!(
        "xgate {} (up {}s)",
        get("version").as_str().unwrap_or("?"),
        get("uptime_secs")
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
    println!(
        "blocklist: {} entries; {} connections refused at L7",
        get("blocklist_entries"),
        get("l7_denied_connections")
    );
    match s.get("xdp") {
        Some(xdp) => {
            let attached: Vec<String> = xdp["attached"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|at| {
                            format!(
                                "{} ({})",
                                at["interface"].as_str().unwrap_or("?"),
                                at["mode"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!("xdp:       attached to {}", attached.join(", "));
            if let Some(dir) = xdp["pin_dir"].as_str() {
                println!("           maps pinned at {dir}");
            }
            if let Some(counters) = xdp["counters"].as_object() {
                println!("           packets:");
                for (name, value) in counters {
                    println!("             {name:<20} {value}");
                }
            }
        }
        None => println!(
            "xdp:       off ({})",
            s.get("xdp_off_reason")
                .and_then(|r| r.as_str())
                .unwrap_or("unknown reason")
        ),
    }
}
