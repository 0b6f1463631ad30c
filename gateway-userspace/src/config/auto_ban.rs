//! `auto_ban`: rules that turn patterns of L7 refusals (failed
//! authentications, rate-limit and bot refusals, ...) into deny-list entries
//! with a TTL, enforced in XDP. See docs/lists.md, "Auto-ban".

use std::{collections::BTreeSet, time::Duration};

use serde::{Deserialize, Serialize};

use super::Errors;

/// The signals a rule may count: `auth_failure` (an authentication policy
/// refused the request) and the refusal reasons of the guards.
pub const SIGNAL_NAMES: &[&str] = &[
    "auth_failure",
    "rate_limited",
    "throttled",
    "acl_denied",
    "opa_denied",
    "opa_unavailable",
    "ip_denied",
    "bot_denied",
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoBan {
    pub rules: Vec<AutoBanRule>,
    /// Bans made per minute at most, over all rules: a rule that matches
    /// far too much cannot ban the world. Signals past the cap are counted
    /// and logged, not acted on.
    #[serde(default = "default_max_bans_per_minute")]
    pub max_bans_per_minute: u32,
    /// Sources (per rule) whose signals are being counted, at most; past
    /// it, stale counters are swept and then arbitrary ones evicted.
    #[serde(default = "default_max_tracked_sources")]
    pub max_tracked_sources: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoBanRule {
    /// Shown by `xgate bans ls` and in the `rule` label of the metrics;
    /// defaults to the signal's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `auth_failure` or a refusal reason (`rate_limited`, `bot_denied`, ...).
    pub signal: String,
    /// Only this policy kind's signals (`key-auth`, `rate-limiting`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Signals within `within` that ban.
    pub count: u32,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub within: Duration,
    /// How long the ban lasts.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(with = "crate::duration::serde")]
    pub ban: Duration,
    /// What is banned (and counted as one source): the address, or its
    /// network (`network_v4` / `network_v6` prefix).
    #[serde(default)]
    pub scope: BanScope,
    #[serde(default = "default_network_v4")]
    pub network_v4: u8,
    #[serde(default = "default_network_v6")]
    pub network_v6: u8,
    /// The ban's reason, shown by `ls`; defaults to a description of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BanScope {
    /// The one address (/32, /128).
    #[default]
    Address,
    /// Its network: /`network_v4` or /`network_v6`.
    Network,
}

impl AutoBanRule {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.signal)
    }

    /// The prefix lengths a source is banned (and counted) by.
    pub fn prefix_lens(&self) -> (u8, u8) {
        match self.scope {
            BanScope::Address => (32, 128),
            BanScope::Network => (self.network_v4, self.network_v6),
        }
    }
}

fn default_max_bans_per_minute() -> u32 {
    10
}
fn default_max_tracked_sources() -> usize {
    100_000
}
fn default_network_v4() -> u8 {
    24
}
fn default_network_v6() -> u8 {
    64
}

impl AutoBan {
    pub(super) fn validate(&self, errors: &mut Errors) {
        if self.rules.is_empty() {
            errors.push("auto_ban.rules", "needs at least one rule");
        }
        if self.max_bans_per_minute == 0 {
            errors.push(
                "auto_ban.max_bans_per_minute",
                "must be at least 1 (remove auto_ban to turn it off)",
            );
        }
        if self.max_tracked_sources < 16 {
            errors.push("auto_ban.max_tracked_sources", "must be at least 16");
        }
        let mut names = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("auto_ban.rules[{i}]");
            if !SIGNAL_NAMES.contains(&rule.signal.as_str()) {
                errors.push(
                    format!("{path}.signal"),
                    format!(
                        "unknown signal '{}' (one of: {})",
                        rule.signal,
                        SIGNAL_NAMES.join(", ")
                    ),
                );
            }
            if !names.insert(rule.name()) {
                errors.push(
                    format!("{path}.name"),
                    format!(
                        "'{}' names another rule too (give each rule a distinct name)",
                        rule.name()
                    ),
                );
            }
            if rule.name().is_empty() || rule.name().len() > 64 {
                errors.push(format!("{path}.name"), "must be 1 to 64 characters");
            }
            if rule.count == 0 {
                errors.push(format!("{path}.count"), "must be at least 1");
            }
            if rule.within.is_zero() {
                errors.push(format!("{path}.within"), "must be greater than zero");
            }
            if rule.ban < Duration::from_secs(1) {
                errors.push(format!("{path}.ban"), "must be at least 1s");
            }
            if !(8..=32).contains(&rule.network_v4) {
                errors.push(format!("{path}.network_v4"), "must be 8 to 32");
            }
            if !(16..=128).contains(&rule.network_v6) {
                errors.push(format!("{path}.network_v6"), "must be 16 to 128");
            }
        }
    }
}
