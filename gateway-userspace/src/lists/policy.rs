//! The kernel's rate-limit policy, compiled from `xdp.rate_limit`.

use gateway_common::{flags, RateLimit, XdpConfig, DROP_SAMPLE_DEFAULT};
use ipnet::IpNet;

use crate::config::{Config, Ports, PortsKeyword};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPolicy {
    pub config: XdpConfig,
    /// Policed destination ports; `None` polices every packet.
    pub ports: Option<Vec<u16>>,
    pub overrides: Vec<(IpNet, RateLimit)>,
    /// `xdp.syn_cookies`, applied with the rule set.
    pub syn_cookies: crate::xdp::SynCookiePolicy,
}

impl KernelPolicy {
    pub fn from_config(config: &Config) -> Self {
        Self {
            syn_cookies: crate::xdp::SynCookiePolicy::from_config(config),
            ..Self::rate_limit(config)
        }
    }

    fn rate_limit(config: &Config) -> Self {
        let Some(rl) = &config.xdp.rate_limit else {
            return Self {
                config: XdpConfig {
                    v4_prefix_len: 32,
                    v6_prefix_len: 64,
                    drop_sample: DROP_SAMPLE_DEFAULT,
                    ..XdpConfig::default()
                },
                ports: None,
                overrides: Vec::new(),
                syn_cookies: Default::default(),
            };
        };
        let mut flag_bits = flags::RATE_LIMIT;
        if rl.syn_only {
            flag_bits |= flags::SYN_ONLY;
        }
        let ports = match &rl.ports {
            Ports::Keyword(PortsKeyword::All) => None,
            Ports::Keyword(PortsKeyword::Listeners) => {
                let mut ports: Vec<u16> =
                    config.listeners.iter().map(|l| l.address.port()).collect();
                ports.sort_unstable();
                ports.dedup();
                Some(ports)
            }
            Ports::List(list) => Some(list.clone()),
        };
        Self {
            config: XdpConfig {
                flags: flag_bits,
                v4_prefix_len: rl.source_prefix_v4.into(),
                v6_prefix_len: rl.source_prefix_v6.into(),
                rate: RateLimit::per_second(rl.rate, rl.burst()),
                // Set by the map writer when the slot is filled.
                present: 0,
                generation: 0,
                drop_sample: DROP_SAMPLE_DEFAULT,
                _pad: 0,
            },
            ports,
            overrides: rl
                .overrides
                .iter()
                .map(|o| {
                    (
                        o.cidr,
                        RateLimit::per_second(o.rate, o.burst.unwrap_or(o.rate)),
                    )
                })
                .collect(),
            syn_cookies: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_police_the_listener_ports_per_address() {
        let config = Config::from_yaml(
            "listeners: [{address: '0.0.0.0:8080'}, {address: '[::]:8443'}]\nxdp: {rate_limit: {rate: 100}}\n",
            "t",
        )
        .unwrap();
        let policy = KernelPolicy::from_config(&config);
        assert_eq!(policy.ports, Some(vec![8080, 8443]));
        assert_eq!(policy.config.flags, flags::RATE_LIMIT);
        assert_eq!(
            policy.config.rate,
            RateLimit {
                cost_ns: 10_000_000,
                burst: 100,
                max_tokens: u64::MAX / 10_000_000,
            }
        );
        assert_eq!(
            (policy.config.v4_prefix_len, policy.config.v6_prefix_len),
            (32, 64)
        );
    }

    #[test]
    fn all_ports_syn_only_and_overrides() {
        let config = Config::from_yaml(
            "listeners: [{address: '0.0.0.0:8080'}]\n\
             xdp: {rate_limit: {rate: 10, burst: 20, ports: all, syn_only: true, source_prefix_v4: 24,\n\
             overrides: [{cidr: 198.51.100.0/24, rate: 1000}, {cidr: '2001:db8::/32', rate: 0}]}}\n",
            "t",
        )
        .unwrap();
        let policy = KernelPolicy::from_config(&config);
        assert_eq!(policy.ports, None);
        assert_eq!(policy.config.flags, flags::RATE_LIMIT | flags::SYN_ONLY);
        assert_eq!(policy.config.v4_prefix_len, 24);
        assert_eq!(
            policy.overrides[0].1,
            RateLimit {
                cost_ns: 1_000_000,
                burst: 1000,
                max_tokens: u64::MAX / 1_000_000,
            }
        );
        assert_eq!(policy.overrides[1].1.cost_ns, 0, "rate 0 exempts");
    }

    #[test]
    fn no_rate_limit_means_no_policing() {
        let config = Config::from_yaml("listeners: [{address: '0.0.0.0:8080'}]\n", "t").unwrap();
        assert_eq!(KernelPolicy::from_config(&config).config.flags, 0);
    }
}
