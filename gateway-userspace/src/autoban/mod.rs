//! Auto-ban: L7 refusals become kernel drops. The policy chains report each
//! refusal as a [`Signal`]; a rule that counts `count` matching signals
//! from one source (an address, or its network) within `within` adds that
//! source to the deny list for `ban`, through the same path as a CLI entry:
//! dropped in XDP, refused at L7, persisted, shared with the cluster.
//!
//! Allow-listed sources and trusted proxies are never banned; at most
//! `max_bans_per_minute` bans are made per minute, whatever the rules say.
//! One instance lives as long as the daemon: a reload swaps its rules and
//! keeps the counts of the rules it left unchanged.

mod counter;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipnet::IpNet;

use self::counter::Counters;
use crate::{
    config::{AutoBanRule, Config},
    lists::{ListError, SourceLists},
    policy::{Signal, Signals},
    telemetry::Metrics,
};

/// The cap's window.
const CAP_WINDOW: Duration = Duration::from_secs(60);

pub struct AutoBan {
    lists: Arc<SourceLists>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

struct State {
    rules: Vec<AutoBanRule>,
    trusted_proxies: Vec<IpNet>,
    max_per_minute: u32,
    counters: Counters,
    cap_start: Option<Instant>,
    made_in_window: u32,
}

/// What a counted signal leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Counted, nothing to do yet.
    Counted,
    Ban {
        rule: String,
        source: IpNet,
        ttl: Duration,
        reason: String,
    },
    /// The rule's count was reached, but the cap was too.
    Capped { rule: String, source: IpNet },
    /// The source may not be banned.
    Exempt { rule: String },
}

impl AutoBan {
    pub fn new(config: &Config, lists: Arc<SourceLists>, metrics: Arc<Metrics>) -> Self {
        let this = Self {
            lists,
            metrics,
            state: Mutex::new(State {
                rules: Vec::new(),
                trusted_proxies: Vec::new(),
                max_per_minute: 0,
                counters: Counters::new(1),
                cap_start: None,
                made_in_window: 0,
            }),
        };
        this.reconfigure(config);
        this
    }

    /// Takes a (re)loaded config's rules: the counts of rules that did not
    /// change are kept, those of changed or removed rules forgotten.
    pub fn reconfigure(&self, config: &Config) {
        let mut state = self.state.lock().unwrap();
        let (rules, max_per_minute, max_tracked) = match &config.auto_ban {
            Some(a) => (
                a.rules.clone(),
                a.max_bans_per_minute,
                a.max_tracked_sources,
            ),
            None => (Vec::new(), 0, 1),
        };
        let keep: HashMap<usize, usize> = state
            .rules
            .iter()
            .enumerate()
            .filter_map(|(old, rule)| rules.iter().position(|r| r == rule).map(|new| (old, new)))
            .collect();
        state.counters.remap(&keep);
        state.counters.set_max(max_tracked);
        state.rules = rules;
        state.max_per_minute = max_per_minute;
        state.trusted_proxies = config.trusted_proxies.clone();
    }

    /// Whether any rule is configured.
    pub fn is_active(&self) -> bool {
        !self.state.lock().unwrap().rules.is_empty()
    }

    fn ban(&self, rule: &str, source: IpNet, ttl: Duration, reason: String) {
        match self.lists.add_ban(source, reason.clone(), ttl, rule) {
            Ok(_) => {
                self.metrics.auto_ban(rule, "banned");
                tracing::warn!(rule, source = %source, ttl = %crate::duration::format(ttl), reason, "auto-ban: source banned");
            }
            // Already on the deny list (another rule, the CLI, another node).
            Err(ListError::Duplicate { .. }) => {
                tracing::debug!(rule, source = %source, "auto-ban: already denied");
            }
            Err(error) => {
                self.metrics.auto_ban(rule, "failed");
                tracing::error!(rule, source = %source, %error, "auto-ban: could not ban");
            }
        }
    }
}

impl Signals for AutoBan {
    fn record(&self, client: IpAddr, signal: Signal) {
        let client = canonical(client);
        let verdicts = {
            let mut state = self.state.lock().unwrap();
            if state.rules.is_empty() {
                return;
            }
            let allowed = || self.lists.allows(client);
            state.count(client, signal, Instant::now(), allowed)
        };
        for verdict in verdicts {
            match verdict {
                Verdict::Counted => {}
                Verdict::Ban {
                    rule,
                    source,
                    ttl,
                    reason,
                } => self.ban(&rule, source, ttl, reason),
                Verdict::Capped { rule, source } => {
                    self.metrics.auto_ban(&rule, "capped");
                    tracing::warn!(rule, source = %source, "auto-ban: max_bans_per_minute reached; not banned");
                }
                Verdict::Exempt { rule } => {
                    self.metrics.auto_ban(&rule, "exempt");
                    tracing::info!(rule, client = %client, "auto-ban: rule matched an allow-listed or trusted-proxy source; not banned");
                }
            }
        }
    }
}

impl State {
    /// Counts `signal` for every rule it matches.
    fn count(
        &mut self,
        client: IpAddr,
        signal: Signal,
        now: Instant,
        allowed: impl Fn() -> bool,
    ) -> Vec<Verdict> {
        let (name, policy) = match signal {
            Signal::AuthFailure { policy } => ("auth_failure", policy),
            Signal::Denied { policy, reason } => (reason, policy),
        };
        let mut verdicts = Vec::new();
        for index in 0..self.rules.len() {
            let rule = &self.rules[index];
            if rule.signal != name || rule.policy.as_deref().is_some_and(|p| p != policy) {
                continue;
            }
            let source = scope(client, rule.prefix_lens());
            let hit = self.counters.hit(index, source, rule.within, now);
            if hit.count + 1e-9 < f64::from(rule.count) {
                verdicts.push(Verdict::Counted);
                continue;
            }
            let rule = rule.clone();
            self.counters.reset(index, source);
            let name = rule.name().to_string();
            if self.trusted_proxies.iter().any(|t| t.contains(&client)) || allowed() {
                verdicts.push(Verdict::Exempt { rule: name });
                continue;
            }
            if !self.take_cap(now) {
                verdicts.push(Verdict::Capped { rule: name, source });
                continue;
            }
            let reason = rule.reason.clone().unwrap_or_else(|| {
                format!(
                    "auto-ban: {} {} within {}",
                    rule.count,
                    rule.signal,
                    crate::duration::format(rule.within)
                )
            });
            verdicts.push(Verdict::Ban {
                rule: name,
                source,
                ttl: rule.ban,
                reason,
            });
        }
        verdicts
    }

    /// One ban of this minute's allowance, if any is left.
    fn take_cap(&mut self, now: Instant) -> bool {
        if self
            .cap_start
            .is_none_or(|s| now.saturating_duration_since(s) >= CAP_WINDOW)
        {
            self.cap_start = Some(now);
            self.made_in_window = 0;
        }
        if self.made_in_window >= self.max_per_minute {
            return false;
        }
        self.made_in_window += 1;
        true
    }
}

/// An IPv4-mapped IPv6 peer (dual-stack listener) is an IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The network of `ip` that a rule bans: /v4 or /v6 prefix.
fn scope(ip: IpAddr, (v4, v6): (u8, u8)) -> IpNet {
    let len = if ip.is_ipv4() { v4 } else { v6 };
    IpNet::new(ip, len)
        .expect("validated prefix length")
        .trunc()
}

#[cfg(test)]
mod tests;
