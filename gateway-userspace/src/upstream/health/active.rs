//! Active health checks: a background task per upstream probes every
//! target each `interval` (plus up to `jitter`), over TCP or with an
//! HTTP/1.1 `GET` (over TLS when the upstream uses TLS); `healthy_threshold`
//! passes in a row bring a target back, `unhealthy_threshold` failures in a
//! row take it down.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};

use super::Health;
use crate::{
    config::{ActiveCheck, CheckKind},
    upstream::{stream, TlsConnector},
};

/// What the checks found about one target.
#[derive(Debug, Clone)]
pub struct Active {
    pub healthy: bool,
    passes: u32,
    failures: u32,
    /// The last failed check's error, kept while the target is down.
    pub last_error: Option<String>,
}

impl Default for Active {
    /// A target starts healthy: a start or a reload must not take traffic
    /// away until the checks have had their say.
    fn default() -> Self {
        Self {
            healthy: true,
            passes: 0,
            failures: 0,
            last_error: None,
        }
    }
}

impl Active {
    /// Records one check; `Some(healthy)` when the target changed state.
    pub fn record(&mut self, result: Result<(), String>, config: &ActiveCheck) -> Option<bool> {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                if !self.healthy && self.passes >= config.healthy_threshold {
                    self.healthy = true;
                    self.last_error = None;
                    return Some(true);
                }
            }
            Err(error) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(error);
                if self.healthy && self.failures >= config.unhealthy_threshold {
                    self.healthy = false;
                    return Some(false);
                }
            }
        }
        None
    }

    /// Failures in a row (while healthy: towards going down).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// How the checks reach the targets.
pub struct Prober {
    pub config: ActiveCheck,
    pub tls: Option<Arc<TlsConnector>>,
}

impl Prober {
    /// One check of `target`, within the check's timeout.
    pub async fn check(&self, target: SocketAddr) -> Result<(), String> {
        let timeout = self.config.timeout;
        match tokio::time::timeout(timeout, self.probe(target)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn probe(&self, target: SocketAddr) -> Result<(), String> {
        let mut stream = stream::connect(target, self.config.timeout, self.tls.as_deref())
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        if self.config.kind == CheckKind::Tcp {
            return Ok(());
        }
        let host = match &self.config.host {
            Some(host) => host.clone(),
            None => target.to_string(),
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xgate-health-check\r\n\
             Connection: close\r\n\r\n",
            self.config.path
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the check: {e}"))?;
        let status = read_status(&mut stream).await?;
        if self.config.passes(status) {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// The status code of the response's status line.
async fn read_status(stream: &mut stream::Stream) -> Result<u16, String> {
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    loop {
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&head[..end]);
            let mut parts = line.split(' ');
            return match (parts.next(), parts.next().map(str::parse::<u16>)) {
                (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
                _ => Err(format!("not an HTTP/1.1 answer: {:?}", line.trim_end())),
            };
        }
        if head.len() > 4096 {
            return Err("no status line in the first 4 KiB".to_string());
        }
        let read = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if read == 0 {
            return Err("connection closed before an answer".to_string());
        }
        head.extend_from_slice(&buf[..read]);
    }
}

/// Checks every target of `health` until the task is aborted (the
/// upstream is dropped): all targets at once, then `interval` plus up to
/// `jitter`. The first round starts at once.
pub async fn run(health: Arc<Health>, prober: Prober) {
    let prober = Arc::new(prober);
    loop {
        let round = Instant::now();
        let mut checks = tokio::task::JoinSet::new();
        for target in health.targets() {
            let prober = prober.clone();
            checks.spawn(async move {
                let result = prober.check(target.addr).await;
                (target, result)
            });
        }
        while let Some(done) = checks.join_next().await {
            if let Ok((target, result)) = done {
                health.check_result(&target, result, &prober.config);
            }
        }
        let jitter = Duration::from_nanos(fastrand::u64(
            0..=u64::try_from(prober.config.jitter.as_nanos()).unwrap_or(u64::MAX),
        ));
        tokio::time::sleep_until(round + prober.config.interval + jitter).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy: u32, unhealthy: u32) -> ActiveCheck {
        ActiveCheck {
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            ..ActiveCheck::default()
        }
    }

    #[test]
    fn thresholds_decide_when_the_state_changes() {
        let c = check(2, 3);
        let mut a = Active::default();
        let fail = || Err("refused".to_string());
        assert_eq!(a.record(fail(), &c), None);
        assert_eq!(a.record(fail(), &c), None);
        assert_eq!(a.record(Ok(()), &c), None, "a pass resets the failures");
        assert_eq!(a.record(fail(), &c), None);
        assert_eq!(a.record(fail(), &c), None);
        assert_eq!(a.record(fail(), &c), Some(false));
        assert!(!a.healthy);
        assert_eq!(a.last_error.as_deref(), Some("refused"));
        assert_eq!(a.record(Ok(()), &c), None);
        assert_eq!(a.record(fail(), &c), None, "a failure resets the passes");
        assert_eq!(a.record(Ok(()), &c), None);
        assert_eq!(a.record(Ok(()), &c), Some(true));
        assert!(a.healthy && a.last_error.is_none());
    }

    #[tokio::test]
    async fn http_checks_read_the_status_and_tcp_checks_connect() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for status in [200, 503] {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(
                    request.starts_with("GET /healthz HTTP/1.1\r\n"),
                    "{request}"
                );
                assert!(request.contains("\r\nHost: api.internal\r\n"), "{request}");
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let http = Prober {
            config: ActiveCheck {
                path: "/healthz".to_string(),
                host: Some("api.internal".to_string()),
                ..ActiveCheck::default()
            },
            tls: None,
        };
        assert_eq!(http.check(addr).await, Ok(()));
        assert_eq!(http.check(addr).await, Err("answered 503".to_string()));
        server.await.unwrap();

        let tcp = Prober {
            config: ActiveCheck {
                kind: CheckKind::Tcp,
                ..ActiveCheck::default()
            },
            tls: None,
        };
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let error = tcp.check(closed).await.unwrap_err();
        assert!(error.starts_with("cannot connect"), "{error}");
    }
}
