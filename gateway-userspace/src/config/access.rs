//! The access-phase policies' settings: `type: ip-restriction` and
//! `type: bot-detection`, refusals by client address or agent before
//! anything costly runs.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{host_bits_error, Errors};

/// `type: ip-restriction`: per-route allow and deny lists of client
/// prefixes, as Kong's ip-restriction. The deny list is checked first.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpRestriction {
    /// A client in none of these prefixes is refused (when not empty).
    /// CIDRs as the XDP lists take them (`203.0.113.0/24`, `2001:db8::/32`,
    /// a bare address for one host), so an entry can move between layers.
    #[serde(default)]
    pub allow: Vec<String>,
    /// A client in any of these prefixes is refused; checked first.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The refusal's status.
    #[serde(default = "default_forbidden")]
    pub status: u16,
    /// What the refused client is told.
    #[serde(default = "default_ip_message")]
    pub message: String,
}

/// Refusals are 403 unless the config says otherwise (Kong's default).
fn default_forbidden() -> u16 {
    403
}

fn default_ip_message() -> String {
    "your IP address is not allowed".into()
}

/// `type: bot-detection`: refuses clients by their `User-Agent`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BotDetection {
    /// Regexes (Rust `regex` syntax with ASCII semantics, unanchored,
    /// case-sensitive unless `(?i)`): a matching agent is let through, whatever `deny` and the
    /// built-in list say.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Regexes: a matching agent is refused.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Also refuse the built-in signatures of common bots and scanners.
    #[serde(default = "default_true")]
    pub builtin: bool,
    /// What a request without `User-Agent` gets.
    #[serde(default)]
    pub missing_user_agent: MissingUserAgent,
    /// Decisions kept, by agent string, so a repeated agent is not matched
    /// again; 0 turns the cache off.
    #[serde(default = "default_bot_cache_entries")]
    pub cache_entries: usize,
    /// The refusal's status.
    #[serde(default = "default_forbidden")]
    pub status: u16,
    /// What the refused client is told.
    #[serde(default = "default_bot_message")]
    pub message: String,
}

fn default_true() -> bool {
    true
}

/// Kong's size: enough for the distinct agents of a busy site (browsers
/// repeat a few hundred strings), small in memory (agents longer than the
/// policy's cacheable length are never kept).
fn default_bot_cache_entries() -> usize {
    10_000
}

fn default_bot_message() -> String {
    "forbidden".into()
}

/// What a request without `User-Agent` gets.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MissingUserAgent {
    /// Let through (Kong's behaviour: many API clients send none).
    #[default]
    Allow,
    /// Refused like a denied agent.
    Deny,
}

/// A refusal's status must be a client or server error: a 2xx or 3xx
/// "refusal" would let the client believe it was served.
fn validate_status(status: u16, path: &str, errors: &mut Errors) {
    if !(400..=599).contains(&status) {
        errors.push(
            format!("{path}.status"),
            format!("{status} is not an error status (400 to 599)"),
        );
    }
}

/// The networks of an ip-restriction list, parsed as the CLI parses them.
pub fn parse_ip_list(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|e| crate::lists::parse_cidr(e))
        .collect()
}

pub(super) fn validate_ip_restriction(p: &IpRestriction, path: &str, errors: &mut Errors) {
    if p.allow.is_empty() && p.deny.is_empty() {
        errors.push(
            path,
            "needs allow or deny (or both): an ip-restriction without prefixes decides nothing",
        );
    }
    let mut denied = HashMap::new();
    for (field, entries) in [("deny", &p.deny), ("allow", &p.allow)] {
        let mut seen = HashMap::new();
        for (j, entry) in entries.iter().enumerate() {
            let epath = format!("{path}.{field}[{j}]");
            let net = match crate::lists::parse_cidr(entry) {
                Ok(net) => net,
                Err(message) => {
                    errors.push(epath, message);
                    continue;
                }
            };
            if let Some(message) = host_bits_error(&net) {
                errors.push(epath, message);
            } else if let Some(message) = mapped_error(&net) {
                errors.push(epath, message);
            } else if let Some(first) = seen.insert(net, j) {
                errors.push(
                    epath,
                    format!("{net} is already listed at {path}.{field}[{first}]"),
                );
            } else if field == "deny" {
                denied.insert(net, j);
            } else if let Some(d) = denied.get(&net) {
                errors.push(
                    epath,
                    format!("{net} is also at {path}.deny[{d}], which is checked first"),
                );
            }
        }
    }
    validate_status(p.status, path, errors);
}

/// Clients with IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, from
/// dual-stack sockets) are matched as IPv4 clients, here as in the XDP
/// lists' L7 guard; a mapped prefix would never match anything.
fn mapped_error(net: &IpNet) -> Option<String> {
    let IpNet::V6(v6) = net else { return None };
    let v4 = v6.network().to_ipv4_mapped()?;
    let len = v6.prefix_len().checked_sub(96)?;
    Some(format!(
        "{net} is an IPv4-mapped IPv6 prefix; clients with mapped addresses are matched as \
         IPv4, write {v4}/{len}"
    ))
}

/// Agents longer than this are matched but never cached: a client sending
/// huge random agents would otherwise fill the cache's memory.
pub const BOT_CACHE_MAX_AGENT_BYTES: usize = 512;

/// Compiled size limit of the allow, deny and built-in patterns together:
/// 1,000 ordinary patterns fit with room to spare; a set past it is a
/// config error, not a slow gateway.
pub const BOT_PATTERNS_SIZE_LIMIT: usize = 256 << 20;

pub(super) fn validate_bot_detection(p: &BotDetection, path: &str, errors: &mut Errors) {
    for (field, patterns) in [("allow", &p.allow), ("deny", &p.deny)] {
        for (j, pattern) in patterns.iter().enumerate() {
            let epath = format!("{path}.{field}[{j}]");
            if pattern.is_empty() {
                errors.push(epath, "must not be empty (it would match every agent)");
                continue;
            }
            if let Err(e) = regex::bytes::RegexBuilder::new(pattern)
                .unicode(false)
                .size_limit(BOT_PATTERNS_SIZE_LIMIT)
                .build()
            {
                errors.push(
                    epath,
                    format!("'{pattern}' is not a valid regex: {}", one_line(&e)),
                );
            }
        }
    }
    if p.allow.is_empty()
        && p.deny.is_empty()
        && !p.builtin
        && p.missing_user_agent == MissingUserAgent::Allow
    {
        errors.push(
            path,
            "no allow, no deny, builtin: false and missing_user_agent: allow: the policy \
             decides nothing",
        )
    }
    if p.cache_entries > 10_000_000 {
        errors.push(format!("{path}.cache_entries"), "at most 10000000");
    }
    validate_status(p.status, path, errors);
}

/// The regex crate's errors span lines (the pattern with a caret): one
/// line for the config error list.
fn one_line(error: &regex::Error) -> String {
    error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    fn errors(policies: &str) -> Vec<String> {
        let yaml = format!(
            "listeners: [{{address: '127.0.0.1:1'}}]\n\
             policy_defaults: {{policies: {policies}}}\n"
        );
        match crate::config::Config::from_yaml(&yaml, "t") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn ip_restriction_entries_are_checked_with_their_values() {
        let found = errors(
            "[{type: ip-restriction, \
               deny: ['10.0.0.0/8', '10.0.0.1/8', '300.1.1.1', '2001:db8::/129', '10.0.0.0/8'], \
               allow: ['10.0.0.0/8', '::ffff:192.0.2.0/120', '192.0.2.7', '::/0'], status: 200}]",
        );
        let p = "policy_defaults.policies[0]";
        assert_eq!(
            found,
            [
                format!("{p}.deny[1]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8 or 10.0.0.1/32?"),
                format!("{p}.deny[2]: invalid CIDR '300.1.1.1': '300.1.1.1' is not an IPv4 or IPv6 address (examples: 203.0.113.0/24, 2001:db8::/32, 198.51.100.7)"),
                format!("{p}.deny[3]: invalid CIDR '2001:db8::/129': prefix length 129 is more than 128 for IPv6"),
                format!("{p}.deny[4]: 10.0.0.0/8 is already listed at {p}.deny[0]"),
                format!("{p}.allow[0]: 10.0.0.0/8 is also at {p}.deny[0], which is checked first"),
                format!("{p}.status: 200 is not an error status (400 to 599)"),
            ]
        );
        assert_eq!(
            errors("[{type: ip-restriction}]"),
            [
                "policy_defaults.policies[0]: needs allow or deny (or both): an ip-restriction \
              without prefixes decides nothing"
            ]
        );
        assert!(
            errors("[{type: ip-restriction, allow: ['192.0.2.0/24', '2001:db8::/32']}]").is_empty()
        );
    }

    #[test]
    fn bot_detection_patterns_are_compiled_at_validation() {
        let found = errors(
            "[{type: bot-detection, allow: ['Good(Bot'], deny: ['', 'ok'], \
               cache_entries: 20000000, status: 302}]",
        );
        let p = "policy_defaults.policies[0]";
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].starts_with(&format!("{p}.allow[0]: 'Good(Bot' is not a valid regex: "))
                && found[0].contains("unclosed group")
                && !found[0].contains('\n'),
            "{found:#?}"
        );
        assert_eq!(
            found[1],
            format!("{p}.deny[0]: must not be empty (it would match every agent)")
        );
        assert_eq!(found[2], format!("{p}.cache_entries: at most 10000000"));
        assert_eq!(
            found[3],
            format!("{p}.status: 302 is not an error status (400 to 599)")
        );
        assert!(errors("[{type: bot-detection}]").is_empty());
        assert_eq!(
            errors("[{type: bot-detection, builtin: false}]").len(),
            1,
            "a policy that decides nothing"
        );
        assert!(
            errors("[{type: bot-detection, missing_user_agent: maybe}]")[0]
                .contains("unknown variant `maybe`")
        );
    }
}
