//! Upstream targets by DNS name (`host:port`), as nginx's `resolve`, Envoy's
//! STRICT_DNS and Kong's upstream DNS do: every address a name returns is a
//! target; the name is looked up again when its answer's TTL (bounded by
//! `resolver.min_ttl` and `resolver.max_ttl`) runs out, and sooner after a
//! connect failure (at most once per `min_ttl`). A lookup that fails keeps
//! the addresses of the last one that did not; a name that never resolved
//! gives no target, which is a warning in the log (requests get 503), never
//! a refused config. See docs/upstreams.md, "Targets by DNS name".
//!
//! Each upstream with names has one task on the control runtime; it ends
//! when the upstream is dropped (a reload that replaced it). The target set
//! changes only through [`Upstream::set_targets`].

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use hickory_resolver::{
    config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
    TokioResolver,
};
use tokio::{sync::oneshot, time::Instant};

use super::Upstream;
use crate::config;

/// A lookup that failed is tried again after this (bounded by `min_ttl`
/// and `max_ttl`): often enough to notice a name come back, rarely enough
/// not to hammer a DNS server that is down.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One config's DNS client: /etc/hosts first, then the configured servers
/// (or those of /etc/resolv.conf).
pub struct Resolver {
    dns: TokioResolver,
    config: config::Resolver,
}

impl Resolver {
    pub fn new(config: &config::Resolver) -> Self {
        let provider = TokioConnectionProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(builder) => builder,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "cannot read the system's DNS configuration (/etc/resolv.conf): \
                         only /etc/hosts names resolve; set resolver.nameservers"
                    );
                    TokioResolver::builder_with_config(ResolverConfig::new(), provider)
                }
            }
        } else {
            let servers: Vec<NameServerConfig> = config
                .nameservers
                .iter()
                .flat_map(|&address| {
                    [Protocol::Udp, Protocol::Tcp]
                        .map(|protocol| NameServerConfig::new(address, protocol))
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                provider,
            )
        };
        let options = builder.options_mut();
        options.use_hosts_file = ResolveHosts::Always;
        // Every address is a target: A and AAAA both (the default takes
        // the AAAA records only when there is no A).
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = config.timeout;
        options.attempts = 1;
        // No cache: each upstream's task keeps its answers for their TTL
        // already, and a lookup after a connect failure must ask the
        // server, not get the answer that led to the failure.
        options.cache_size = 0;
        Self {
            dns: builder.build(),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &config::Resolver {
        &self.config
    }

    /// The addresses of `host`, sorted, and how long they may be used.
    async fn lookup(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), String> {
        let answer = self.dns.lookup_ip(host).await.map_err(|e| e.to_string())?;
        let mut addresses: Vec<IpAddr> = answer.iter().collect();
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            return Err("no addresses in the answer".into());
        }
        let ttl = answer
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        Ok((addresses, self.bounded(ttl)))
    }

    fn bounded(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.config.min_ttl, self.config.max_ttl)
    }
}

/// The resolver of one compiled config, and the first lookups of the
/// upstreams it keeps resolved.
pub struct Resolution {
    resolver: Option<Arc<Resolver>>,
    first: Mutex<Vec<oneshot::Receiver<()>>>,
}

impl Resolution {
    /// A resolver when any upstream of `config` names a host: the previous
    /// config's when its settings are the same (its cache goes on).
    pub fn new(config: &config::Config, previous: Option<&Resolution>) -> Self {
        let needed = config.upstreams.values().any(|u| {
            u.targets
                .iter()
                .any(|t| matches!(t.address, config::TargetAddress::Name { .. }))
        });
        let resolver = needed.then(|| {
            previous
                .and_then(|p| p.resolver.clone())
                .filter(|r| r.config == config.resolver)
                .unwrap_or_else(|| Arc::new(Resolver::new(&config.resolver)))
        });
        Self {
            resolver,
            first: Mutex::default(),
        }
    }

    /// Whether an upstream with names may keep the resolving task of the
    /// previous config (same resolver settings).
    pub fn same_resolver(&self, previous: &Resolution) -> bool {
        match (&self.resolver, &previous.resolver) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Keeps the named targets of `upstream` resolved (nothing to do when
    /// it has none).
    pub fn watch(&self, upstream: &Arc<Upstream>) {
        let Some(resolver) = &self.resolver else {
            return;
        };
        if upstream.named_targets().next().is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(upstream = %upstream.name, "no runtime to resolve the targets on");
            return;
        };
        let (done, first) = oneshot::channel();
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(first);
        runtime.spawn(keep_resolved(
            Arc::downgrade(upstream),
            resolver.clone(),
            done,
        ));
    }

    /// Resolves when every upstream watched so far has had its first
    /// lookups answered (or failed): a new config serves with its names
    /// resolved.
    pub async fn first_lookups(&self) {
        let pending =
            std::mem::take(&mut *self.first.lock().unwrap_or_else(PoisonError::into_inner));
        for first in pending {
            let _ = first.await;
        }
    }
}

/// One host name's state in the resolving task.
struct Name {
    host: String,
    port: u16,
    weight: u32,
    /// The last answer that had addresses.
    addresses: Vec<IpAddr>,
    failing: bool,
}

/// Looks the names of `upstream` up, sets its targets, and sleeps until
/// the first answer expires or a connect failure asks for a fresh look;
/// until the upstream is gone.
async fn keep_resolved(
    upstream: Weak<Upstream>,
    resolver: Arc<Resolver>,
    done: oneshot::Sender<()>,
) {
    let (name, mut names, fixed, refresh) = {
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        let names: Vec<Name> = upstream
            .named_targets()
            .map(|(host, port, weight)| Name {
                host: host.to_string(),
                port,
                weight,
                addresses: Vec::new(),
                failing: false,
            })
            .collect();
        let fixed: Vec<(SocketAddr, u32)> = upstream.fixed_targets().collect();
        (
            upstream.name.clone(),
            names,
            fixed,
            upstream.refresh.clone(),
        )
    };
    let mut done = Some(done);
    loop {
        let looked_up = Instant::now();
        // One after the other: an upstream names few hosts, and each lookup
        // is bounded by resolver.timeout.
        let mut answers = Vec::with_capacity(names.len());
        for entry in &names {
            answers.push(resolver.lookup(&entry.host).await);
        }
        let mut next = resolver.config.max_ttl;
        let mut changed = false;
        for (entry, answer) in names.iter_mut().zip(answers) {
            match answer {
                Ok((addresses, ttl)) => {
                    next = next.min(ttl);
                    if entry.failing || addresses != entry.addresses {
                        tracing::info!(
                            upstream = %name,
                            name = %entry.host,
                            addresses = ?addresses,
                            ttl = ?ttl,
                            "upstream targets resolved"
                        );
                    }
                    changed |= addresses != entry.addresses;
                    entry.addresses = addresses;
                    entry.failing = false;
                }
                Err(error) => {
                    next = next.min(resolver.bounded(RETRY_AFTER_FAILURE));
                    if !entry.failing {
                        if entry.addresses.is_empty() {
                            tracing::warn!(
                                upstream = %name,
                                name = %entry.host,
                                %error,
                                "cannot resolve an upstream target's name: it adds no target \
                                 until it resolves (an upstream with no target answers 503)"
                            );
                        } else {
                            tracing::warn!(
                                upstream = %name,
                                name = %entry.host,
                                %error,
                                kept = ?entry.addresses,
                                "cannot resolve an upstream target's name: keeping its last addresses"
                            );
                        }
                    }
                    entry.failing = true;
                }
            }
        }
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        if changed || done.is_some() {
            let targets = combine(&fixed, &names);
            if targets.is_empty() {
                tracing::warn!(
                    upstream = %name,
                    "upstream has no targets: none of its names resolves; requests to it get 503"
                );
            }
            upstream.set_targets(targets);
        }
        drop(upstream);
        if let Some(done) = done.take() {
            let _ = done.send(());
        }
        tokio::select! {
            () = tokio::time::sleep_until(looked_up + next) => {}
            () = refresh.notified() => {
                // At most one lookup per min_ttl, however many failures.
                tokio::time::sleep_until(looked_up + resolver.config.min_ttl).await;
            }
        }
    }
}

/// The fixed targets, then each name's addresses with the name's weight;
/// an address listed twice counts once (its first weight).
fn combine(fixed: &[(SocketAddr, u32)], names: &[Name]) -> Vec<(SocketAddr, u32)> {
    let mut seen = BTreeMap::new();
    let mut targets = Vec::new();
    let resolved = names.iter().flat_map(|n| {
        n.addresses
            .iter()
            .map(|&ip| (SocketAddr::new(ip, n.port), n.weight))
    });
    for (address, weight) in fixed.iter().copied().chain(resolved) {
        if seen.insert(address, ()).is_none() {
            targets.push((address, weight));
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str, port: u16, weight: u32, addresses: &[&str]) -> Name {
        Name {
            host: host.into(),
            port,
            weight,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            failing: false,
        }
    }

    #[test]
    fn every_address_of_every_name_is_a_target_once() {
        let fixed = [("127.0.0.9:80".parse().unwrap(), 2)];
        let names = [
            name("a", 80, 1, &["127.0.0.1", "127.0.0.9"]),
            name("b", 81, 3, &["127.0.0.1"]),
        ];
        let targets: Vec<String> = combine(&fixed, &names)
            .iter()
            .map(|(a, w)| format!("{a}*{w}"))
            .collect();
        assert_eq!(
            targets,
            ["127.0.0.9:80*2", "127.0.0.1:80*1", "127.0.0.1:81*3"]
        );
    }

    #[test]
    fn set_targets_keeps_the_state_of_targets_that_stay() {
        let config: config::Upstream =
            serde_yaml::from_str("{targets: ['127.0.0.1:9001', 'svc.test:9000']}").unwrap();
        let upstream = Upstream::new("u", &config, &Arc::default()).unwrap();
        let addresses = |u: &Upstream| -> Vec<String> {
            u.target_set()
                .targets
                .iter()
                .map(|t| t.addr.to_string())
                .collect()
        };
        // Until the name resolves, only the IP target.
        assert_eq!(addresses(&upstream), ["127.0.0.1:9001"]);
        let a: SocketAddr = "127.0.0.2:9000".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:9000".parse().unwrap();
        upstream.set_targets(vec![(a, 1), (b, 1)]);
        let in_flight = upstream.target_set().targets[1].start();
        // `b` stays (its request in flight counts on), `a` goes, `c` comes.
        let c: SocketAddr = "127.0.0.4:9000".parse().unwrap();
        upstream.set_targets(vec![(b, 1), (c, 1)]);
        let set = upstream.target_set();
        assert_eq!(addresses(&upstream), ["127.0.0.3:9000", "127.0.0.4:9000"]);
        assert_eq!(
            (set.targets[0].in_flight(), set.targets[1].in_flight()),
            (1, 0)
        );
        drop(in_flight);
        assert_eq!(set.targets[0].in_flight(), 0);
        upstream.set_targets(Vec::new());
        assert!(upstream.target_set().balancer.is_none());
    }

    #[tokio::test]
    async fn hosts_file_names_resolve_and_ttls_are_bounded() {
        let resolver = Resolver::new(&config::Resolver {
            // Nothing answers here: only /etc/hosts can.
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(300),
            ..config::Resolver::default()
        });
        let (addresses, ttl) = resolver.lookup("localhost").await.unwrap();
        assert!(
            addresses.iter().all(|a| a.is_loopback()) && !addresses.is_empty(),
            "{addresses:?}"
        );
        assert!(ttl <= config::Resolver::default().max_ttl, "{ttl:?}");
        assert_eq!(
            resolver.bounded(Duration::ZERO),
            config::Resolver::default().min_ttl
        );
        let error = resolver.lookup("no-such-name.invalid").await.unwrap_err();
        assert!(!error.is_empty());
    }
}
