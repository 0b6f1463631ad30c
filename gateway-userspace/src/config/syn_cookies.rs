//! `xdp.syn_cookies`: answering SYNs to the listener ports with SYN cookies
//! from XDP (docs/xdp.md#syn-cookies).

use serde::{Deserialize, Serialize};

use super::{ConfigError, Errors};

/// Auto mode switches cookies on above this many SYNs per second to the
/// protected ports: far above what a busy gateway's real clients open
/// (thousands of new connections a second), far below a flood (millions).
const DEFAULT_AUTO_ABOVE: u64 = 20_000;
/// Seconds the SYN rate must stay below the lower threshold before auto
/// mode switches cookies off again: a pulsing flood must not flip it back
/// and forth.
const DEFAULT_AUTO_QUIET_SECONDS: u64 = 10;

/// SYN-flood defense for the listener ports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SynCookies {
    /// `off` (default), `on` (always answer SYNs with cookies) or `auto`
    /// (only while the SYN rate is above `auto_above_syn_per_second`).
    #[serde(default)]
    pub mode: SynCookieMode,
    /// Destination ports protected; default: the TCP ports of the
    /// configured listeners.
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
    /// Auto mode: switch cookies on when more SYNs per second than this
    /// reach the protected ports (all interfaces together).
    #[serde(default = "default_auto_above")]
    pub auto_above_syn_per_second: u64,
    /// Auto mode: switch them off again once the rate has stayed below this
    /// for `auto_quiet_seconds`; default: half of
    /// `auto_above_syn_per_second`.
    #[serde(default)]
    pub auto_below_syn_per_second: Option<u64>,
    /// Auto mode: how long the rate must stay below
    /// `auto_below_syn_per_second` before cookies are switched off.
    #[serde(default = "default_auto_quiet")]
    pub auto_quiet_seconds: u64,
    /// Keep window scaling, SACK and timestamps on connections made through
    /// a cookie, as the kernel's own cookies do: the options are encoded in
    /// the SYN-ACK's timestamp. Needs `net.ipv4.tcp_timestamps = 2`
    /// (timestamps without a per-connection random offset), which the daemon
    /// sets in its network namespace; off by default, because that changes
    /// every connection of the host (docs/xdp.md#syn-cookies).
    #[serde(default)]
    pub tcp_options: bool,
}

impl Default for SynCookies {
    fn default() -> Self {
        Self {
            mode: SynCookieMode::Off,
            ports: None,
            auto_above_syn_per_second: DEFAULT_AUTO_ABOVE,
            auto_below_syn_per_second: None,
            auto_quiet_seconds: DEFAULT_AUTO_QUIET_SECONDS,
            tcp_options: false,
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SynCookieMode {
    #[default]
    Off,
    On,
    Auto,
}

impl SynCookieMode {
    pub fn name(self) -> &'static str {
        match self {
            SynCookieMode::Off => "off",
            SynCookieMode::On => "on",
            SynCookieMode::Auto => "auto",
        }
    }
}

fn default_auto_above() -> u64 {
    DEFAULT_AUTO_ABOVE
}
fn default_auto_quiet() -> u64 {
    DEFAULT_AUTO_QUIET_SECONDS
}

impl SynCookies {
    /// The lower threshold of auto mode.
    pub fn auto_below(&self) -> u64 {
        self.auto_below_syn_per_second
            .unwrap_or(self.auto_above_syn_per_second / 2)
    }

    pub(super) fn validate(&self, errors: &mut Errors) {
        let base = "xdp.syn_cookies";
        if let Some(ports) = &self.ports {
            if ports.is_empty() {
                errors.push(
                    format!("{base}.ports"),
                    "an empty list protects nothing; leave ports out (the listener ports) or set mode: off",
                );
            }
            for (i, port) in ports.iter().enumerate() {
                if *port == 0 {
                    errors.push(format!("{base}.ports[{i}]"), "port 0 is not a valid port");
                } else if ports[..i].contains(port) {
                    errors.push(
                        format!("{base}.ports[{i}]"),
                        format!("{port} is listed twice"),
                    );
                }
            }
        }
        if self.auto_above_syn_per_second == 0 {
            errors.push(
                format!("{base}.auto_above_syn_per_second"),
                "must be at least 1 (for cookies all the time, use mode: on)",
            );
        }
        if let Some(below) = self.auto_below_syn_per_second {
            if below >= self.auto_above_syn_per_second {
                errors.push(
                    format!("{base}.auto_below_syn_per_second"),
                    format!(
                        "must be lower than auto_above_syn_per_second ({}), or auto mode would \
                         switch cookies off as soon as it switched them on",
                        self.auto_above_syn_per_second
                    ),
                );
            }
        }
        if self.auto_quiet_seconds == 0 {
            errors.push(format!("{base}.auto_quiet_seconds"), "must be at least 1");
        }
    }

    pub(super) fn warnings(&self, interfaces: bool, warnings: &mut Vec<ConfigError>) {
        if self.mode != SynCookieMode::Off && !interfaces {
            warnings.push(ConfigError::new(
                "xdp.syn_cookies",
                "no xdp.interfaces are configured, so no SYN is answered with a cookie (it \
                 happens in XDP only); add xdp.interfaces",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn errors(yaml: &str) -> Vec<String> {
        let text =
            format!("listeners: [{{address: '0.0.0.0:8080'}}]\nxdp: {{syn_cookies: {yaml}}}\n");
        match Config::from_yaml(&text, "t") {
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn defaults_are_off_with_the_listener_ports() {
        let config = Config::from_yaml("listeners: [{address: '0.0.0.0:8080'}]\n", "t").unwrap();
        let cookies = &config.xdp.syn_cookies;
        assert_eq!(cookies.mode, super::SynCookieMode::Off);
        assert_eq!(cookies.ports, None);
        assert_eq!(cookies.auto_below(), super::DEFAULT_AUTO_ABOVE / 2);
    }

    #[test]
    fn bad_values_are_refused_with_their_path() {
        let e =
            errors("{mode: auto, ports: [], auto_above_syn_per_second: 0, auto_quiet_seconds: 0}");
        let text = e.join("\n");
        assert!(text.contains("xdp.syn_cookies.ports"), "{text}");
        assert!(
            text.contains("xdp.syn_cookies.auto_above_syn_per_second"),
            "{text}"
        );
        assert!(
            text.contains("xdp.syn_cookies.auto_quiet_seconds"),
            "{text}"
        );
        let e = errors("{mode: auto, ports: [443, 0, 443]}").join("\n");
        assert!(
            e.contains("xdp.syn_cookies.ports[1]") && e.contains("port 0"),
            "{e}"
        );
        assert!(
            e.contains("xdp.syn_cookies.ports[2]") && e.contains("twice"),
            "{e}"
        );
        let e =
            errors("{mode: auto, auto_above_syn_per_second: 100, auto_below_syn_per_second: 100}")
                .join("\n");
        assert!(
            e.contains("auto_below_syn_per_second") && e.contains("lower than"),
            "{e}"
        );
        let e = errors("{mode: sometimes}").join("\n");
        assert!(e.contains("mode"), "{e}");
        assert!(errors("{mode: on, ports: [443, 8443]}").is_empty());
    }
}
