//! Semantic checks that serde cannot express. Every error is collected, each
//! with its path, before the caller decides what to do.

use ipnet::IpNet;

use super::{Config, ConfigError};

/// Collects errors with their paths.
#[derive(Debug, Default)]
pub struct Errors(Vec<ConfigError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }
}

pub fn validate(config: &Config) -> Vec<ConfigError> {
    let mut errors = Errors::default();
    super::listener::validate(&config.listeners, &mut errors);
    if config.admin.socket.as_os_str().is_empty() {
        errors.push("admin.socket", "must not be empty");
    }
    if config
        .admin
        .status_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        errors.push("admin.status_token", "must not be empty");
    }
    if config.state_dir.as_os_str().is_empty() {
        errors.push("state_dir", "must not be empty");
    }
    for (i, net) in config.trusted_proxies.iter().enumerate() {
        if let Some(message) = host_bits_error(net) {
            errors.push(format!("trusted_proxies[{i}]"), message);
        }
    }
    config.xdp.validate(&mut errors);
    if let Some(auto_ban) = &config.auto_ban {
        auto_ban.validate(&mut errors);
    }
    if let Some(cluster) = &config.cluster {
        cluster.validate(&mut errors);
    }
    for (name, upstream) in &config.upstreams {
        upstream.validate(name, &mut errors);
    }
    super::route::validate(&config.routes, &config.upstreams, &mut errors);
    config.access_log.validate(&mut errors);
    config.resolver.validate(&mut errors);
    config.shutdown.validate(&mut errors);
    config.log.validate(&mut errors);
    super::policy::validate_consumers(&config.consumers, &mut errors);
    if let Some(server) = &config.oauth2_server {
        server.validate(&config.listeners, &mut errors);
    }
    super::policy::validate_policies(
        &config.policy_defaults.policies,
        "policy_defaults.policies",
        &config.consumers,
        &mut errors,
    );
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(defaults) = &listener.policy_defaults {
            super::policy::validate_policies(
                &defaults.policies,
                &format!("listeners[{i}].policy_defaults.policies"),
                &config.consumers,
                &mut errors,
            );
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(policies) = &route.policies {
            super::policy::validate_policies(
                policies,
                &format!("routes[{i}].policies"),
                &config.consumers,
                &mut errors,
            );
        } else if route.authentication.is_some() {
            errors.push(
                format!("routes[{i}].authentication"),
                "goes with the route's own `policies`",
            );
        }
    }
    super::policy::validate_mtls_listeners(config, &mut errors);
    if let Some(redis) = &config.redis {
        redis.validate(&mut errors);
    }
    super::rate_limit::validate_redis_users(config, &mut errors);
    if config.limits.max_uri_bytes < 16 {
        errors.push("limits.max_uri_bytes", "must be at least 16");
    }
    if config.limits.max_body_bytes == Some(0) {
        errors.push(
            "limits.max_body_bytes",
            "must be at least 1 (omit it for no limit)",
        );
    }
    errors.0
}

/// Settings that are valid but unsafe, each with its path: printed by
/// `xgate validate` and logged at `warn` on start and on every reload.
pub fn warnings(config: &Config) -> Vec<ConfigError> {
    let mut warnings = Vec::new();
    config.xdp.warnings(&mut warnings);
    for (i, listener) in config.listeners.iter().enumerate() {
        if listener.proxy_protocol && config.trusted_proxies.is_empty() {
            warnings.push(ConfigError::new(
                format!("listeners[{i}].proxy_protocol"),
                "true, but trusted_proxies is empty: every connection on this listener will be \
                 refused (a PROXY header is believed only from a trusted proxy)",
            ));
        }
    }
    for (name, upstream) in &config.upstreams {
        if upstream.tls().is_some_and(|tls| !tls.verify) {
            warnings.push(ConfigError::new(
                format!("upstreams.{name}.tls.verify"),
                "false: the targets' certificates are NOT verified; anyone on the path \
                 to them can pose as them and read or change this traffic",
            ));
        }
    }
    warnings
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
    fn access_log_buffer_settings_are_checked() {
        let routes = "routes: [{match: {path_prefix: /}, upstream: u}]\n";
        let ok = format!(
            "{BASE}{routes}access_log: {{format: json, path: /tmp/a.log, buffer_bytes: 65536, flush_interval: 500ms}}\n"
        );
        assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
        // Text is buffered too, to a file or to standard output; 0 writes
        // each line at once.
        for text in ["path: /tmp/a.log, buffer_bytes: 65536", "buffer_bytes: 0"] {
            let text = format!("{BASE}{routes}access_log: {{{text}}}\n");
            assert!(errors(&text).is_empty(), "{:?}", errors(&text));
        }

        let errs = errors(&format!(
            "{BASE}{routes}access_log: {{format: json, buffer_bytes: 100, flush_interval: 2m}}\n"
        ));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("access_log.buffer_bytes: 100 is out of range: 4096 to 16777216"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("access_log.flush_interval: 2m is out of range: 10ms to 1m"),
            "{errs:?}"
        );

        let errs = errors(&format!(
            "{BASE}{routes}access_log: {{buffer_bytes: 0, flush_interval: 1s}}\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("access_log.flush_interval: has no effect with buffer_bytes: 0"),
            "{errs:?}"
        );
    }

    #[test]
    fn settings_that_do_less_than_they_seem_are_warned_about() {
        let warnings = |yaml: &str| -> Vec<String> {
            Config::from_yaml(&format!("{BASE}{yaml}"), "t")
                .unwrap()
                .warnings()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert!(warnings("xdp: {interfaces: [eth0], rate_limit: {rate: 10}}\n").is_empty());
        let w = warnings("xdp: {rate_limit: {rate: 10}}\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("xdp.rate_limit: no xdp.interfaces"),
            "{w:?}"
        );
        let w = warnings(
            "xdp: {interfaces: [eth0], allow: [10.0.0.0/8, '0.0.0.0/0'], deny: [10.1.0.0/16]}\n",
        );
        assert_eq!(
            w,
            [
                "xdp.deny[0]: 10.1.0.0/16 is inside xdp.allow[0] (10.0.0.0/8); allow wins, so this entry never blocks anything",
                "xdp.allow[1]: 0.0.0.0/0 exempts every source from xdp.deny, the blocklist and the packet rate limit",
            ]
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
            errs[0].starts_with(
                "xdp.deny[0]: invalid CIDR '300.1.2.3/33': '300.1.2.3' is not an IPv4 or IPv6 address"
            ),
            "{errs:?}"
        );
        let errs = errors(&format!("{BASE}xdp: {{deny: ['10.0.0.0/33']}}\n"));
        assert!(
            errs[0].starts_with(
                "xdp.deny[0]: invalid CIDR '10.0.0.0/33': prefix length 33 is more than 32 for IPv4"
            ),
            "{errs:?}"
        );
        let errs = errors(&format!("{BASE}trusted_proxies: ['2001:db8::/129']\n"));
        assert!(
            errs[0].starts_with("trusted_proxies[0]: invalid CIDR '2001:db8::/129': prefix length 129 is more than 128 for IPv6"),
            "{errs:?}"
        );
    }
}
