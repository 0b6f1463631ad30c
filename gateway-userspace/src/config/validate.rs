//! Semantic checks that serde cannot express. Every error is collected, each
//! with its path, before the caller decides what to do.

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;

use super::{Config, ConfigError};

/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

pub fn validate(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(ConfigError::new(path, message));

    if config.listeners.is_empty() {
        err(
            "listeners".into(),
            "at least one listener is required".into(),
        );
    }
    let mut addresses = HashMap::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(first) = addresses.insert(listener.address, i) {
            err(
                format!("listeners[{i}].address"),
                format!("{} is already used by listeners[{first}]", listener.address),
            );
        }
    }

    if config.admin.socket.as_os_str().is_empty() {
        err("admin.socket".into(), "must not be empty".into());
    }
    if config.state_dir.as_os_str().is_empty() {
        err("state_dir".into(), "must not be empty".into());
    }

    for (i, net) in config.trusted_proxies.iter().enumerate() {
        if let Some(message) = host_bits_error(net) {
            err(format!("trusted_proxies[{i}]"), message);
        }
    }

    let mut interfaces = BTreeSet::new();
    for (i, name) in config.xdp.interfaces.iter().enumerate() {
        let path = format!("xdp.interfaces[{i}]");
        if name.is_empty() || name.len() > MAX_IFNAME_LEN {
            err(
                path,
                format!(
                    "'{name}' is not a valid interface name (1 to {MAX_IFNAME_LEN} characters)"
                ),
            );
        } else if name.contains(|c: char| c == '/' || c.is_whitespace()) {
            err(path, format!("'{name}' is not a valid interface name"));
        } else if !interfaces.insert(name) {
            err(path, format!("'{name}' is listed twice"));
        }
    }
    if !config.xdp.pin_path.is_absolute() {
        err(
            "xdp.pin_path".into(),
            "must be an absolute path on a bpffs mount".into(),
        );
    }
    for (list, nets) in [("deny", &config.xdp.deny), ("allow", &config.xdp.allow)] {
        let mut seen = HashMap::new();
        for (i, net) in nets.iter().enumerate() {
            let path = format!("xdp.{list}[{i}]");
            if let Some(message) = host_bits_error(net) {
                err(path, message);
            } else if let Some(first) = seen.insert(*net, i) {
                err(
                    path,
                    format!("{net} is already listed at xdp.{list}[{first}]"),
                );
            }
        }
    }
    if let Some(rl) = &config.xdp.rate_limit {
        validate_rate_limit(rl, &mut err);
    }

    for (name, upstream) in &config.upstreams {
        let base = format!("upstreams.{name}");
        if upstream.targets.is_empty() {
            err(
                format!("{base}.targets"),
                "at least one target is required".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, target) in upstream.targets.iter().enumerate() {
            if target.port() == 0 {
                err(
                    format!("{base}.targets[{i}]"),
                    "port 0 is not a valid target port".into(),
                );
            } else if !seen.insert(target) {
                err(
                    format!("{base}.targets[{i}]"),
                    format!("{target} is listed twice"),
                );
            }
        }
        for (field, value) in [
            ("connect_timeout", upstream.connect_timeout),
            ("timeout", upstream.timeout),
        ] {
            if value.is_zero() {
                err(
                    format!("{base}.{field}"),
                    "must be greater than zero".into(),
                );
            }
        }
    }

    let mut names = HashMap::new();
    let mut prefixes = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        if let Some(name) = &route.name {
            if let Some(first) = names.insert(name.as_str(), i) {
                err(
                    format!("{base}.name"),
                    format!("'{name}' is already used by routes[{first}]"),
                );
            }
        }
        let prefix = &route.matcher.path_prefix;
        if !prefix.starts_with('/') {
            err(
                format!("{base}.match.path_prefix"),
                format!("'{prefix}' must start with '/'"),
            );
        } else if let Some(first) = prefixes.insert(prefix.as_str(), i) {
            err(
                format!("{base}.match.path_prefix"),
                format!("'{prefix}' is already matched by routes[{first}]"),
            );
        }
        if !config.upstreams.contains_key(&route.upstream) {
            let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
            err(
                format!("{base}.upstream"),
                format!(
                    "unknown upstream '{}' (defined: {})",
                    route.upstream,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
    }
    errors
}

fn validate_rate_limit(rl: &super::RateLimit, err: &mut impl FnMut(String, String)) {
    let base = "xdp.rate_limit";
    if rl.rate == 0 {
        err(
            format!("{base}.rate"),
            "must be at least 1 packet per second".into(),
        );
    }
    if rl.burst == Some(0) {
        err(format!("{base}.burst"), "must be at least 1".into());
    }
    if !(1..=32).contains(&rl.source_prefix_v4) {
        err(format!("{base}.source_prefix_v4"), "must be 1 to 32".into());
    }
    if !(1..=128).contains(&rl.source_prefix_v6) {
        err(
            format!("{base}.source_prefix_v6"),
            "must be 1 to 128".into(),
        );
    }
    if let super::Ports::List(ports) = &rl.ports {
        if ports.is_empty() {
            err(
                format!("{base}.ports"),
                "an empty list polices nothing; use `all`, `listeners` or remove rate_limit".into(),
            );
        }
        for (i, port) in ports.iter().enumerate() {
            if *port == 0 {
                err(
                    format!("{base}.ports[{i}]"),
                    "port 0 is not a valid port".into(),
                );
            }
        }
    }
    let mut seen = HashMap::new();
    for (i, o) in rl.overrides.iter().enumerate() {
        let path = format!("{base}.overrides[{i}]");
        if let Some(message) = host_bits_error(&o.cidr) {
            err(format!("{path}.cidr"), message);
        } else if let Some(first) = seen.insert(o.cidr, i) {
            err(
                format!("{path}.cidr"),
                format!(
                    "{} is already overridden at {base}.overrides[{first}]",
                    o.cidr
                ),
            );
        }
        if o.burst == Some(0) {
            err(format!("{path}.burst"), "must be at least 1".into());
        }
    }
}

/// `10.0.0.1/8` is almost always a typo for `10.0.0.0/8` or `10.0.0.1/32`;
/// refuse it rather than guess.
pub fn host_bits_error(net: &IpNet) -> Option<String> {
    (net.trunc() != *net).then(|| {
        format!(
            "{net} has host bits set; did you mean {} or {}/{}?",
            net.trunc(),
            net.addr(),
            net.max_prefix_len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn errors(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml, "test.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    const BASE: &str =
        "listeners: [{address: '127.0.0.1:8080'}]\nupstreams: {u: {targets: ['127.0.0.1:9000']}}\n";

    #[test]
    fn minimal_config_is_valid() {
        assert!(errors(&format!(
            "{BASE}routes: [{{match: {{path_prefix: /}}, upstream: u}}]"
        ))
        .is_empty());
    }

    #[test]
    fn collects_every_semantic_error_with_its_path() {
        let yaml = format!(
            "{BASE}routes:\n  - {{match: {{path_prefix: api}}, upstream: u}}\n  - {{match: {{path_prefix: /x}}, upstream: nope}}\nxdp: {{deny: ['10.0.0.1/8']}}\n"
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("xdp.deny[0]: 10.0.0.1/8 has host bits set"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("routes[0].match.path_prefix: 'api' must start with '/'"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("routes[1].upstream: unknown upstream 'nope' (defined: u)"),
            "{errs:?}"
        );
    }

    #[test]
    fn parse_errors_carry_the_path() {
        let errs = errors("listeners: [{address: '127.0.0.1:8080', colour: red}]\n");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("listeners[0].colour: unknown field `colour`"),
            "{errs:?}"
        );
        let errs = errors(&format!("{BASE}xdp: {{deny: ['300.1.2.3/33']}}\n"));
        assert!(
            errs[0].starts_with("xdp.deny[0]: invalid IP address syntax"),
            "{errs:?}"
        );
    }
}
