//! `resolver`: how upstream targets written as `host:port` are resolved.
//! See docs/upstreams.md, "Targets by DNS name".

use std::{fmt, net::SocketAddr, time::Duration};

use serde::{de, Deserialize, Deserializer, Serialize};

use super::Errors;

/// A name is looked up again no sooner than this after its last answer,
/// whatever its TTL (0 and 1 s TTLs would otherwise mean a query per
/// request burst).
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
/// ...and no later than this, whatever its TTL: a record with a one-day
/// TTL still has its changes seen within minutes (nginx's `resolver
/// valid=` plays the same part).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);
/// One query's wait for an answer; a silent server fails the lookup after
/// `attempts` of these, and the last good addresses stay.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolver {
    /// DNS servers (`IP` or `IP:port`); empty: those of /etc/resolv.conf.
    /// /etc/hosts is read first either way.
    #[serde(default, deserialize_with = "nameservers")]
    pub nameservers: Vec<SocketAddr>,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_min_ttl", with = "crate::duration::serde")]
    pub min_ttl: Duration,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_max_ttl", with = "crate::duration::serde")]
    pub max_ttl: Duration,
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_timeout", with = "crate::duration::serde")]
    pub timeout: Duration,
}

impl Resolver {
    pub const MIN_TTL: std::ops::RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(3600);
    pub const MAX_TTL: std::ops::RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(86_400);
    pub const TIMEOUT: std::ops::RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(30);

    pub(super) fn validate(&self, errors: &mut Errors) {
        for (field, value, range) in [
            ("min_ttl", self.min_ttl, Self::MIN_TTL),
            ("max_ttl", self.max_ttl, Self::MAX_TTL),
            ("timeout", self.timeout, Self::TIMEOUT),
        ] {
            if !range.contains(&value) {
                errors.push(
                    format!("resolver.{field}"),
                    format!(
                        "{} is out of range: {} to {}",
                        crate::duration::format(value),
                        crate::duration::format(*range.start()),
                        crate::duration::format(*range.end())
                    ),
                );
            }
        }
        if self.min_ttl > self.max_ttl {
            errors.push(
                "resolver.min_ttl",
                format!(
                    "{} is above resolver.max_ttl ({})",
                    crate::duration::format(self.min_ttl),
                    crate::duration::format(self.max_ttl)
                ),
            );
        }
        for (i, server) in self.nameservers.iter().enumerate() {
            if server.port() == 0 {
                errors.push(
                    format!("resolver.nameservers[{i}]"),
                    "port 0 is not a DNS port",
                );
            }
        }
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

fn default_min_ttl() -> Duration {
    DEFAULT_MIN_TTL
}
fn default_max_ttl() -> Duration {
    DEFAULT_MAX_TTL
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// `IP` (port 53) or `IP:port` each.
fn nameservers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct Server(SocketAddr);
    impl<'de> Deserialize<'de> for Server {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            if let Ok(address) = text.parse() {
                return Ok(Server(address));
            }
            text.parse::<std::net::IpAddr>()
                .map(|ip| Server(SocketAddr::new(ip, 53)))
                .map_err(|_| de::Error::custom(NotAServer(&text)))
        }
    }
    struct NotAServer<'a>(&'a str);
    impl fmt::Display for NotAServer<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "'{}' is not a DNS server address: write IP or IP:port ([IPv6]:port)",
                self.0
            )
        }
    }
    Ok(Vec::<Server>::deserialize(deserializer)?
        .into_iter()
        .map(|s| s.0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const BASE: &str = "listeners: [{address: '127.0.0.1:8080'}]\n";

    fn errors(resolver: &str) -> String {
        Config::from_yaml(&format!("{BASE}resolver: {resolver}\n"), "t")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn resolver_defaults_parse_and_bounds() {
        let config = Config::from_yaml(BASE, "t").unwrap();
        assert!(config.resolver.nameservers.is_empty());
        assert_eq!(config.resolver.min_ttl.as_secs(), 1);
        assert_eq!(config.resolver.max_ttl.as_secs(), 300);
        let config = Config::from_yaml(
            &format!("{BASE}resolver: {{nameservers: ['127.0.0.1', '127.0.0.1:5353', '[::1]:53'], max_ttl: 30s}}\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            config
                .resolver
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["127.0.0.1:53", "127.0.0.1:5353", "[::1]:53"]
        );
        let error = errors("{nameservers: ['dns.example']}");
        assert!(
            error.contains("'dns.example' is not a DNS server address"),
            "{error}"
        );
        let error = errors("{min_ttl: 10m, max_ttl: 1m}");
        assert!(
            error.contains("resolver.min_ttl: 10m is above resolver.max_ttl (1m)"),
            "{error}"
        );
        let error = errors("{max_ttl: 2d}");
        assert!(
            error.contains("resolver.max_ttl: 2d is out of range: 1s to 1d"),
            "{error}"
        );
    }
}
