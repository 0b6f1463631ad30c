//! Load generators: wrk (HTTP/1.1 keep-alive) and h2load (HTTP/2 over TLS),
//! each run for a fixed time through [`sys::run`] (deadline, killed on a
//! signal), with its output parsed into a [`LoadResult`].
//!
//! Latency percentiles: wrk's from its own histogram (microseconds, through a
//! Lua `done` hook, so nothing is lost to its rounded text output); h2load's
//! from its per-request log (`--log-file`), because its text output has only
//! min/max/mean.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::sys::{self, command};

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Response bytes per request (headers and body as received).
    pub bytes_per_request: f64,
    /// Connect/read/write errors and timeouts.
    pub socket_errors: u64,
    /// Responses whose status was not 2xx.
    pub bad_status: u64,
    /// h2load only: what was negotiated.
    pub tls: Option<TlsInfo>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub protocol: String,
    pub cipher: String,
    pub alpn: String,
}

impl LoadResult {
    /// Fails unless every request got a 2xx answer of at least `min_bytes`
    /// and nothing failed at the socket level.
    pub fn check(&self, min_bytes: usize) -> Result<()> {
        if self.requests == 0 {
            bail!("no request completed");
        }
        if self.bad_status > 0 {
            bail!(
                "{} of {} responses were not 2xx",
                self.bad_status,
                self.requests
            );
        }
        if self.socket_errors > 0 {
            bail!(
                "{} socket errors or timeouts in {} requests",
                self.socket_errors,
                self.requests
            );
        }
        if self.bytes_per_request < min_bytes as f64 {
            bail!(
                "{:.0} bytes per response, fewer than the {min_bytes}-byte body",
                self.bytes_per_request
            );
        }
        Ok(())
    }
}

/// Shape of the load: the same for every target of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Load generator threads.
    pub threads: u32,
    /// Open connections.
    pub connections: u32,
    /// HTTP/2 only: concurrent streams per connection.
    pub streams: u32,
    pub seconds: u64,
}

const WRK_SCRIPT: &str = r#"-- written by xgate-bench: one machine-readable summary line
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "XGATE-BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%.1f p99_us=%.1f max_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

/// wrk, set up once per run directory.
pub struct Wrk {
    script: PathBuf,
    dir: PathBuf,
    pub version: String,
}

impl Wrk {
    pub fn new(dir: &Path) -> Result<Self> {
        let script = dir.join("wrk-summary.lua");
        std::fs::write(&script, WRK_SCRIPT)?;
        // `wrk -v` prints its version and usage, and exits 1.
        let out = sys::run_unchecked(command("wrk", ["-v"]))
            .context("wrk is not installed (apt package wrk; `cargo xtask bench` installs it)")?;
        let version = out
            .stdout
            .lines()
            .next()
            .unwrap_or("wrk")
            .split("Copyright")
            .next()
            .unwrap_or("wrk")
            .trim()
            .to_string();
        Ok(Self {
            script,
            dir: dir.to_path_buf(),
            version,
        })
    }

    /// `wrk -t T -c C -d S` against `url` with extra request `headers`.
    pub fn run(&self, url: &str, shape: Shape, headers: &[String]) -> Result<LoadResult> {
        self.run_script(&self.script, url, shape, headers)
    }

    /// As [`Wrk::run`], with `header` set to one of `keys` values on each
    /// request, in turn (`k0`, `k1`, ...; each wrk thread starts at a
    /// random one, seeded by the second): traffic spread over that many rate-limit keys.
    pub fn run_keyed(
        &self,
        url: &str,
        shape: Shape,
        headers: &[String],
        header: &str,
        keys: usize,
    ) -> Result<LoadResult> {
        let script = self.dir.join(format!("wrk-keys-{keys}.lua"));
        std::fs::write(
            &script,
            format!(
                "local keys = {keys}\n\
                 local i = 0\n\
                 init = function(args)\n  math.randomseed(os.time())\n  i = math.random(keys) - 1\nend\n\
                 request = function()\n  i = (i + 1) % keys\n  \
                 wrk.headers[\"{header}\"] = \"k\" .. i\n  return wrk.format()\nend\n{WRK_SCRIPT}"
            ),
        )?;
        self.run_script(&script, url, shape, headers)
    }

    /// As [`Wrk::run`], but every request is a POST with a body of
    /// `body_len` bytes (Content-Length framed).
    pub fn run_upload(&self, url: &str, shape: Shape, body_len: usize) -> Result<LoadResult> {
        let script = self.dir.join(format!("wrk-upload-{body_len}.lua"));
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {body_len})\n\
                 wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n{WRK_SCRIPT}"
            ),
        )?;
        self.run_script(&script, url, shape, &[])
    }

    fn run_script(
        &self,
        script: &Path,
        url: &str,
        shape: Shape,
        headers: &[String],
    ) -> Result<LoadResult> {
        sys::check_interrupted()?;
        let mut cmd = command(
            "wrk",
            [
                "-t".to_string(),
                shape.threads.to_string(),
                "-c".into(),
                shape.connections.to_string(),
                "-d".into(),
                format!("{}s", shape.seconds),
                "--timeout".into(),
                "10s".into(),
                "-s".into(),
                script.display().to_string(),
            ],
        );
        for header in headers {
            cmd.args(["-H", header]);
        }
        cmd.arg(url);
        let out = sys::run(cmd)?;
        parse_wrk(&out.stdout).with_context(|| format!("wrk output:\n{}", out.stdout))
    }
}

fn parse_wrk(stdout: &str) -> Result<LoadResult> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("XGATE-BENCH "))
        .context("wrk printed no summary line")?;
    let get = |key: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("no {key} in wrk's summary"))?
            .parse::<f64>()
            .with_context(|| format!("{key} in wrk's summary"))
    };
    let requests = get("requests")? as u64;
    let seconds = get("duration_us")? / 1e6;
    let socket_errors = ["connect", "read", "write", "timeout"]
        .iter()
        .map(|k| get(k).map(|v| v as u64))
        .sum::<Result<u64>>()?;
    Ok(LoadResult {
        requests,
        seconds,
        rps: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        p50_us: get("p50_us")?,
        p99_us: get("p99_us")?,
        max_us: get("max_us")?,
        bytes_per_request: get("bytes")? / (requests.max(1) as f64),
        socket_errors,
        bad_status: get("status")? as u64,
        tls: None,
    })
}

/// The one TLS 1.3 suite h2load offers, so that every server does the same
/// crypto (left to themselves, servers that prefer their own order pick
/// AES-256 and others AES-128).
pub const TLS13_CIPHER: &str = "TLS_AES_128_GCM_SHA256";

/// h2load, HTTP/2 over TLS, offering only h2 (`--npn-list=h2`, which sets
/// ALPN too): a server that cannot speak h2 fails the run instead of being
/// measured over HTTP/1.1.
pub struct H2load {
    dir: PathBuf,
    pub version: String,
}

impl H2load {
    pub fn new(dir: &Path) -> Result<Self> {
        let out = sys::run_unchecked(command("h2load", ["--version"])).context(
            "h2load is not installed (apt package nghttp2-client; `cargo xtask bench` installs it)",
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            version: out.stdout.trim().to_string(),
        })
    }

    /// A timed run: `-D seconds`, `-c` connections with `-m` streams each.
    /// No `--warm-up-time` (the harness warms every target up with a run of
    /// its own): so the request count, the request log and the CPU time the
    /// harness measures around the run cover the same period.
    pub fn run(&self, url: &str, shape: Shape, headers: &[String]) -> Result<LoadResult> {
        sys::check_interrupted()?;
        let log = self.dir.join("h2load-requests.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = command(
            "h2load",
            [
                "-t".to_string(),
                shape.threads.to_string(),
                "-c".into(),
                shape.connections.to_string(),
                "-m".into(),
                shape.streams.to_string(),
                "-D".into(),
                shape.seconds.to_string(),
                "--npn-list=h2".into(),
                format!("--tls13-ciphers={TLS13_CIPHER}"),
                "--log-file".into(),
                log.display().to_string(),
            ],
        );
        for header in headers {
            cmd.args(["-H", header]);
        }
        cmd.arg(url);
        let out = sys::run(cmd)?;
        let mut result =
            parse_h2load(&out.stdout).with_context(|| format!("h2load output:\n{}", out.stdout))?;
        let durations = read_h2load_log(&log)?;
        let _ = std::fs::remove_file(&log);
        result.p50_us = percentile(&durations, 50.0);
        result.p99_us = percentile(&durations, 99.0);
        result.max_us = durations.last().copied().unwrap_or(f64::NAN);
        Ok(result)
    }

    /// A few requests on one connection: does `url` answer 2xx over h2?
    pub fn probe(&self, url: &str, headers: &[String]) -> Result<TlsInfo> {
        let mut cmd = command(
            "h2load",
            [
                "-n".to_string(),
                "4".into(),
                "-c".into(),
                "1".into(),
                "--npn-list=h2".into(),
                format!("--tls13-ciphers={TLS13_CIPHER}"),
            ],
        );
        for header in headers {
            cmd.args(["-H", header]);
        }
        cmd.arg(url);
        let out = sys::run_unchecked(cmd)?;
        let result = parse_h2load(&out.stdout).with_context(|| {
            format!(
                "h2load output:\n{}\n{}",
                out.stdout.trim(),
                out.stderr.trim()
            )
        })?;
        let tls = result.tls.clone().unwrap_or_default();
        if tls.alpn != "h2" {
            bail!(
                "no HTTP/2 over TLS: h2load negotiated {:?}; its output:\n{}",
                tls.alpn,
                out.stdout.trim()
            );
        }
        if result.requests < 4 || result.bad_status > 0 || result.socket_errors > 0 {
            bail!(
                "h2load's 4 requests did not all succeed with 2xx:\n{}",
                out.stdout.trim()
            );
        }
        Ok(tls)
    }
}

/// The numbers of a line like `requests: 10 total, 10 started, 9 done, 9
/// succeeded, 1 failed, 0 errored, 0 timeout`, by the word after each.
fn counts(line: &str) -> Vec<(String, f64)> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .filter_map(|w| Some((w[1].to_string(), w[0].parse::<f64>().ok()?)))
        .collect()
}

fn parse_h2load(stdout: &str) -> Result<LoadResult> {
    let mut r = LoadResult::default();
    let mut tls = TlsInfo::default();
    let mut saw_requests = false;
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 5.00s, 12345.60 req/s, 1.23MB/s
            let mut parts = rest.split(',');
            let secs = parts.next().unwrap_or("").trim();
            r.seconds = if let Some(ms) = secs.strip_suffix("ms") {
                ms.parse::<f64>().unwrap_or(0.0) / 1e3
            } else {
                secs.trim_end_matches('s').parse().unwrap_or(0.0)
            };
            r.rps = parts
                .next()
                .and_then(|p| p.trim().strip_suffix(" req/s"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("requests:") {
            saw_requests = true;
            let c = counts(rest);
            let get = |k: &str| {
                c.iter()
                    .find(|(w, _)| w == k)
                    .map(|(_, v)| *v as u64)
                    .unwrap_or(0)
            };
            r.requests = get("succeeded");
            r.socket_errors = get("failed") + get("errored") + get("timeout");
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            r.bad_status = counts(rest)
                .iter()
                .filter(|(w, _)| w != "2xx")
                .map(|(_, v)| *v as u64)
                .sum();
        } else if let Some(rest) = line.strip_prefix("traffic:") {
            // traffic: 1.2MB (1234567) total, ...  or  traffic: 1234567 bytes total, ...
            let total = rest.split(',').next().unwrap_or("");
            let bytes = total
                .split_once('(')
                .and_then(|(_, b)| b.split(')').next())
                .or_else(|| total.split_whitespace().next())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            r.bytes_per_request = bytes;
        } else if let Some(v) = line.strip_prefix("Application protocol:") {
            tls.alpn = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("Cipher:") {
            tls.cipher = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("TLS Protocol:") {
            tls.protocol = v.trim().to_string();
        }
    }
    if !saw_requests {
        bail!("h2load printed no `requests:` line");
    }
    // `succeeded` counts 2xx-5xx answers alike; count only the good ones.
    r.requests = r.requests.saturating_sub(r.bad_status);
    r.bytes_per_request /= (r.requests + r.bad_status).max(1) as f64;
    if r.rps == 0.0 && r.seconds > 0.0 {
        r.rps = r.requests as f64 / r.seconds;
    }
    if !tls.alpn.is_empty() || !tls.cipher.is_empty() {
        r.tls = Some(tls);
    }
    Ok(r)
}

/// Request durations (µs, sorted) from h2load's `--log-file`: one line per
/// request, `start_us <TAB> status <TAB> duration_us`.
fn read_h2load_log(log: &Path) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("h2load wrote no request log {}", log.display()))?;
    let mut durations: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let _start = f.next()?;
            let _status = f.next()?;
            f.next()?.trim().parse().ok()
        })
        .collect();
    if durations.is_empty() {
        bail!("h2load's request log {} is empty", log.display());
    }
    durations.sort_by(f64::total_cmp);
    Ok(durations)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_summary_line() {
        let out = "Running 5s test @ http://127.0.0.1:1/small\n  2 threads and 64 connections\n\
                   XGATE-BENCH requests=100000 duration_us=5000000 bytes=20000000 connect=0 read=1 \
                   write=0 status=3 timeout=2 p50_us=512.0 p99_us=2048.5 max_us=9000.0\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 100_000);
        assert_eq!(r.rps, 20_000.0);
        assert_eq!((r.p50_us, r.p99_us), (512.0, 2048.5));
        assert_eq!(r.socket_errors, 3);
        assert_eq!(r.bad_status, 3);
        assert_eq!(r.bytes_per_request, 200.0);
        assert!(r.check(64).is_err());
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn h2load_text_output() {
        let out = "starting benchmark...\n\
TLS Protocol: TLSv1.3\nCipher: TLS_AES_256_GCM_SHA384\nServer Temp Key: X25519 253 bits\n\
Application protocol: h2\n\n\
finished in 5.00s, 12345.60 req/s, 1.23MB/s\n\
requests: 61728 total, 61728 started, 61728 done, 61728 succeeded, 0 failed, 0 errored, 0 timeout\n\
status codes: 61728 2xx, 0 3xx, 0 4xx, 0 5xx\n\
traffic: 7.04MB (7382345) total, 1.03MB (1083456) headers (space savings 90.00%), 3.77MB (3950592) data\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!(r.requests, 61_728);
        assert_eq!(r.rps, 12_345.6);
        assert_eq!(r.seconds, 5.0);
        assert_eq!(r.bad_status, 0);
        assert!((r.bytes_per_request - 7_382_345.0 / 61_728.0).abs() < 1e-6);
        let tls = r.tls.unwrap();
        assert_eq!(tls.alpn, "h2");
        assert_eq!(tls.cipher, "TLS_AES_256_GCM_SHA384");
        let bad = out.replace("61728 2xx, 0 3xx, 0 4xx", "61000 2xx, 0 3xx, 728 4xx");
        let r = parse_h2load(&bad).unwrap();
        assert_eq!((r.requests, r.bad_status), (61_000, 728));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn h2load_log_durations() {
        let dir = xgate_tests::TempDir::new("bench-h2log");
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            "30\t200\t3000\n10\t200\t1000\n20\t200\t2000\nbad line\n",
        )
        .unwrap();
        assert_eq!(read_h2load_log(&log).unwrap(), vec![1000.0, 2000.0, 3000.0]);
        std::fs::write(&log, "").unwrap();
        assert!(read_h2load_log(&log).is_err());
    }
}
