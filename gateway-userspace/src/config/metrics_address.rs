//! `admin.metrics_address`: where the TCP listener for /metrics, the
//! health probes and the status page is, or `off`.

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// Where the listener is when the key is absent: loopback, so it is on out
/// of the box without being reachable from elsewhere. 9464 is the port
/// OpenTelemetry's Prometheus exporter uses and Prometheus's registry of
/// default ports lists for it; it is clear of the common proxy and admin
/// ports (80, 443, 8080, 8404, 9090, 9100, 9901).
pub const DEFAULT_METRICS_ADDRESS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9464,
));

/// The value of `admin.metrics_address` when it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum MetricsAddress {
    At(SocketAddr),
    /// No TCP listener: /metrics and the probes on the admin socket only.
    Off,
}

impl TryFrom<String> for MetricsAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text == "off" {
            return Ok(Self::Off);
        }
        text.parse().map(Self::At).map_err(|_| {
            format!("{text:?} is neither an IP:port (e.g. 127.0.0.1:9464, [::1]:9464) nor `off`")
        })
    }
}

impl From<MetricsAddress> for String {
    fn from(address: MetricsAddress) -> Self {
        address.to_string()
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::At(address) => address.fmt(f),
            Self::Off => f.write_str("off"),
        }
    }
}

/// What the daemon does about the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// Configured: an address that cannot be bound fails the start.
    Required(SocketAddr),
    /// The default: when it cannot be bound (another daemon on the host
    /// has it), a warning, and the daemon runs without it.
    Default(SocketAddr),
    Off,
}

impl MetricsListen {
    pub fn of(configured: Option<MetricsAddress>) -> Self {
        match configured {
            None => Self::Default(DEFAULT_METRICS_ADDRESS),
            Some(MetricsAddress::At(address)) => Self::Required(address),
            Some(MetricsAddress::Off) => Self::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_or_off() {
        let at: MetricsAddress = serde_yaml::from_str("'[::1]:9000'").unwrap();
        assert_eq!(at, MetricsAddress::At("[::1]:9000".parse().unwrap()));
        let off: MetricsAddress = serde_yaml::from_str("off").unwrap();
        assert_eq!(off, MetricsAddress::Off);
        let error = serde_yaml::from_str::<MetricsAddress>("localhost:9464")
            .unwrap_err()
            .to_string();
        assert!(error.contains("neither an IP:port"), "{error}");
        let dumped = serde_yaml::to_string(&off).unwrap();
        assert_eq!(
            serde_yaml::from_str::<MetricsAddress>(&dumped).unwrap(),
            off
        );
    }

    #[test]
    fn absent_is_the_loopback_default_and_only_a_set_address_is_required() {
        assert_eq!(
            MetricsListen::of(None),
            MetricsListen::Default("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            MetricsListen::of(Some(MetricsAddress::At("0.0.0.0:1".parse().unwrap()))),
            MetricsListen::Required("0.0.0.0:1".parse().unwrap())
        );
        assert_eq!(
            MetricsListen::of(Some(MetricsAddress::Off)),
            MetricsListen::Off
        );
    }
}
