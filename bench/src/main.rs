//! Benchmark harness (issue: benchmark suite): xgate against peers, every
//! ratio taken between numbers measured in the same run on the same machine.
//! Run it through `cargo xtask bench` (as root), or directly:
//!
//! ```text
//! xgate-bench [--repeat N] [--rounds R] [--duration S] SCENARIO...   (or `all`)
//! ```
//!
//! Each scenario is one entry in [`SCENARIOS`]; it returns a [`Report`] that
//! is merged into `bench/results.json` and `bench/RESULTS.md`.
//!
//! `xgate-bench serve-upstream --listen ADDR` is not a scenario: it is the
//! fast HTTP upstream the proxy scenarios start as a child process, and
//! `xgate-bench pgo-train` is the training run of the profile-guided build
//! (`cargo xtask dist`).

mod bots;
mod flood;
mod keys;
mod lab;
mod live;
mod load;
mod peers;
mod policies;
mod proxy;
mod report;
mod rules;
mod scale;
mod shapes;
mod soak;
mod stats;
mod synflood;
mod sys;
mod upstream;
mod xdp;
mod xdp_filter;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use report::Report;

/// Settings shared by every scenario.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Repetitions per measurement (BPF_PROG_TEST_RUN `repeat`, ...).
    pub repeat: u32,
    /// Measurements per case, the median is reported; `None`: the
    /// scenario's own default.
    pub rounds: Option<usize>,
    /// Seconds of load per measurement (HTTP scenarios); `None`: the
    /// scenario's own default.
    pub duration: Option<u64>,
    /// `--only`: the comparisons to run, comma-separated (scenarios that
    /// have named comparisons: `scale`); `None`: all of them.
    pub only: Option<&'static str>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            repeat: 1_000_000,
            rounds: None,
            duration: None,
            only: None,
        }
    }
}

impl Settings {
    /// Rounds to run: `--rounds`, else the scenario's `default`.
    pub fn rounds_or(&self, default: usize) -> usize {
        self.rounds.unwrap_or(default)
    }

    /// Seconds per load run: `--duration`, else the scenario's `default`.
    pub fn duration_or(&self, default: u64) -> u64 {
        self.duration.unwrap_or(default)
    }
}

struct Scenario {
    name: &'static str,
    about: &'static str,
    run: fn(&Settings) -> Result<Report>,
}

/// Every scenario, in the order `all` runs them. Later ones (flood
/// survival) are added here.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "xdp",
        about: "per-packet cost of the XDP program (BPF_PROG_TEST_RUN) against xdp-filter",
        run: xdp::run,
    },
    Scenario {
        name: "proxy",
        about: "L7 reverse proxy (HTTP/1.1 and HTTP/2 over TLS) against nginx, HAProxy and Envoy",
        run: proxy::run,
    },
    Scenario {
        name: "shapes",
        about: "L7 proxy in four load shapes (one core pinned, 1,000 connections) with a hyper and an nginx origin",
        run: shapes::run,
    },
    Scenario {
        name: "policies",
        about: "cost of key-auth, RS256 JWT and rate limiting against HAProxy and Envoy",
        run: policies::run,
    },
    Scenario {
        name: "bots",
        about: "bot detection per request in process (1,000 patterns): cache hit and miss",
        run: bots::run,
    },
    Scenario {
        name: "flood",
        about: "legitimate goodput under UDP/SYN floods: XDP against L7-only and nftables",
        run: flood::run,
    },
    Scenario {
        name: "synflood",
        about: "legitimate goodput under a spoofed SYN flood: XDP SYN cookies against the kernel's",
        run: synflood::run,
    },
    Scenario {
        name: "scale",
        about: "per-request cost with 10 vs 10,000 routes, 10 vs 100,000 deny CIDRs, consumers and rate-limit keys",
        run: scale::run,
    },
];

fn usage() -> String {
    let mut s = String::from(
        "usage: xgate-bench [--repeat N] [--rounds R] [--duration S] [--only A,B] SCENARIO... | all\n\n\
         scenarios:\n",
    );
    for scenario in SCENARIOS {
        s.push_str(&format!("  {:<8} {}\n", scenario.name, scenario.about));
    }
    let d = Settings::default();
    s.push_str(&format!(
        "\noptions:\n  --repeat N     repetitions per measurement (xdp; bots: decisions, at most 200000; default {})\n  \
         --rounds R     measurements per case, the median is reported \
         (default: xdp {}, proxy {}, shapes {}, policies {}, bots {})\n  \
         --duration S   seconds of load per measurement (proxy, shapes, policies; default {})\n  \
         --only A,B     only these comparisons (scale: {})\n\n\
         Needs root. Writes bench/RESULTS.md and bench/results.json \
         (or into $XGATE_BENCH_OUT). xdp: $XGATE_BENCH_XDP_OBJECT loads xgate's \
         program from that object file (another build) instead of the built-in one.\n\n\
         not scenarios:\n  \
         serve-upstream --listen ADDR   the upstream the proxy scenarios start\n  \
         pgo-train                      the training run of `cargo xtask dist` \
         (trains the xgate in $XGATE_BENCH_XGATE)\n  \
         soak --minutes N ...           xgate under mixed traffic and periodic events \
         (`cargo xtask soak`; `soak --help`)\n",
        d.repeat,
        xdp::DEFAULT_ROUNDS,
        proxy::DEFAULT_ROUNDS,
        shapes::DEFAULT_ROUNDS,
        policies::DEFAULT_ROUNDS,
        bots::DEFAULT_ROUNDS,
        proxy::DEFAULT_DURATION_S,
        scale::COMPARISONS.join(", "),
    ));
    s
}

fn scenario_names() -> String {
    SCENARIOS
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

enum Parsed {
    Help,
    Run(Settings, Vec<&'static Scenario>),
}

fn parse(args: &[String]) -> Result<Parsed> {
    let mut settings = Settings::default();
    let mut chosen: Vec<&'static Scenario> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" | "help" => return Ok(Parsed::Help),
            "--repeat" => {
                let value = args.next().context("--repeat needs a number")?;
                settings.repeat = value
                    .replace('_', "")
                    .parse()
                    .with_context(|| format!("--repeat {value}: not a number"))?;
                if settings.repeat == 0 {
                    bail!("--repeat must be at least 1");
                }
            }
            "--rounds" => {
                let value = args.next().context("--rounds needs a number")?;
                let rounds: usize = value
                    .parse()
                    .with_context(|| format!("--rounds {value}: not a number"))?;
                if !(1..=101).contains(&rounds) {
                    bail!("--rounds must be between 1 and 101");
                }
                settings.rounds = Some(rounds);
            }
            "--duration" => {
                let value = args
                    .next()
                    .context("--duration needs a number of seconds")?;
                let seconds: u64 = value
                    .trim_end_matches('s')
                    .parse()
                    .with_context(|| format!("--duration {value}: not a number of seconds"))?;
                if !(1..=60).contains(&seconds) {
                    bail!("--duration must be between 1 and 60 seconds");
                }
                settings.duration = Some(seconds);
            }
            "--only" => {
                let value = args.next().context("--only needs comparison names")?;
                if value.split(',').any(str::is_empty) {
                    bail!("--only {value}: empty comparison name");
                }
                // Settings are Copy: the one list of the run lives as long
                // as the process.
                settings.only = Some(Box::leak(value.clone().into_boxed_str()));
            }
            "all" => chosen.extend(SCENARIOS.iter()),
            name if name.starts_with('-') => {
                bail!("unknown option {name}\n\n{}", usage())
            }
            name => match SCENARIOS.iter().find(|s| s.name == name) {
                Some(scenario) => chosen.push(scenario),
                None => bail!(
                    "unknown scenario `{name}`; the scenarios are: {} (or `all`)",
                    scenario_names()
                ),
            },
        }
    }
    if chosen.is_empty() {
        bail!(
            "name a scenario to run: {} (or `all`)\n\n{}",
            scenario_names(),
            usage()
        );
    }
    let mut seen = Vec::new();
    chosen.retain(|s| {
        let first = !seen.contains(&s.name);
        seen.push(s.name);
        first
    });
    if let Some(only) = settings.only {
        if let Some(other) = chosen.iter().find(|s| s.name != "scale") {
            bail!(
                "--only names comparisons of `scale`; `{}` has none",
                other.name
            );
        }
        scale::chosen(Some(only))?;
    }
    Ok(Parsed::Run(settings, chosen))
}

/// The subcommand that runs the remote opa case's policy server.
pub const SERVE_POLICY: &str = "serve-policy";

/// `serve-policy --listen ADDR --policy FILE`: regorus behind OPA's data
/// API and Envoy's ext_authz check (the tests' policy server), until
/// killed.
fn serve_policy(args: &[String]) -> anyhow::Result<()> {
    use anyhow::Context;
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .with_context(|| format!("{name} is required"))
    };
    let listen: std::net::SocketAddr = value("--listen")?.parse()?;
    let policy = std::path::PathBuf::from(value("--policy")?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let _server =
                xgate_tests::policy_server::PolicyServer::start(&[policy.as_path()], Some(listen))
                    .await;
            std::future::pending::<()>().await;
        });
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(upstream::SUBCOMMAND) {
        return match upstream::main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xgate-bench {}: {e:#}", upstream::SUBCOMMAND);
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some(soak::SUBCOMMAND) {
        return match soak::main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xgate-bench {}: {e:#}", soak::SUBCOMMAND);
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some(SERVE_POLICY) {
        return match serve_policy(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xgate-bench {SERVE_POLICY}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some(PGO_TRAIN) {
        return match pgo_train(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xgate-bench {PGO_TRAIN}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match real_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The training run of `cargo xtask dist` (see [`proxy::train`]).
const PGO_TRAIN: &str = "pgo-train";

/// Seconds of each training load.
const PGO_TRAIN_SECONDS: u64 = 3;

fn pgo_train(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!(
            "unexpected argument {arg:?}: `xgate-bench {PGO_TRAIN}` takes none; \
             it trains the binary in $XGATE_BENCH_XGATE"
        );
    }
    proxy::train(PGO_TRAIN_SECONDS)?;
    policies::train(PGO_TRAIN_SECONDS)
}

fn real_main(args: &[String]) -> Result<()> {
    let (settings, chosen) = match parse(args)? {
        Parsed::Help => {
            print!("{}", usage());
            return Ok(());
        }
        Parsed::Run(settings, chosen) => (settings, chosen),
    };
    if !gateway_userspace::sys::is_root() {
        bail!("needs root (BPF programs, network and mount namespaces); run `cargo xtask bench` as root");
    }
    if settings.repeat < 1_000_000 {
        eprintln!(
            "xgate-bench: note: --repeat {} is below 1,000,000; numbers will be noisier",
            settings.repeat
        );
    }
    sys::install_signal_handlers();
    sys::sweep_stale();
    for scenario in chosen {
        eprintln!("==> scenario {}: {}", scenario.name, scenario.about);
        let started = std::time::Instant::now();
        let report =
            (scenario.run)(&settings).with_context(|| format!("scenario {}", scenario.name))?;
        eprintln!(
            "==> scenario {} took {:.0} s",
            scenario.name,
            started.elapsed().as_secs_f64()
        );
        println!("{}", report.markdown);
        // Written as each scenario ends: a later one that fails loses
        // nothing measured before it.
        let (md, json) = report::write(&report::out_dir(), std::slice::from_ref(&report))?;
        eprintln!("==> wrote {} and {}", md.display(), json.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unknown_scenarios_are_named_with_the_list() {
        let Err(e) = parse(&args(&["nope"])) else {
            panic!("accepted an unknown scenario");
        };
        let text = e.to_string();
        assert!(text.contains("`nope`") && text.contains("xdp"), "{text}");
    }

    #[test]
    fn options_and_scenarios() {
        let Ok(Parsed::Run(settings, chosen)) =
            parse(&args(&["--repeat", "2_000_000", "xdp", "all"]))
        else {
            panic!("did not parse");
        };
        assert_eq!(settings.repeat, 2_000_000);
        assert_eq!(settings.rounds, None);
        assert_eq!(settings.rounds_or(9), 9);
        assert_eq!(chosen.len(), SCENARIOS.len());
        assert!(parse(&args(&[])).is_err());
        assert!(parse(&args(&["--rounds", "0", "xdp"])).is_err());
        let Ok(Parsed::Run(settings, chosen)) = parse(&args(&[
            "--rounds",
            "2",
            "--duration",
            "3s",
            "proxy",
            "policies",
        ])) else {
            panic!("did not parse");
        };
        assert_eq!((settings.rounds_or(9), settings.duration_or(5)), (2, 3));
        assert_eq!(chosen.len(), 2);
    }

    #[test]
    fn only_names_scale_comparisons() {
        let Ok(Parsed::Run(settings, _)) = parse(&args(&[
            "--only",
            "redis-ratelimit-keys,ratelimit-keys",
            "scale",
        ])) else {
            panic!("did not parse");
        };
        assert_eq!(settings.only, Some("redis-ratelimit-keys,ratelimit-keys"));
        let Err(e) = parse(&args(&["--only", "no-such", "scale"])) else {
            panic!("accepted an unknown comparison");
        };
        assert!(e.to_string().contains("redis-ratelimit-keys"), "{e}");
        assert!(parse(&args(&["--only", "routes", "proxy"])).is_err());
        assert!(parse(&args(&["--only", "routes,", "scale"])).is_err());
    }
}
