//! `shutdown`: how a stopping daemon (and a listener removed by a reload)
//! ends the connections it still has. See docs/listeners.md, "Drain".

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Errors;

/// In-flight requests finish for up to this long after SIGTERM: longer than
/// most API calls take, shorter than the 30 s an orchestrator usually waits
/// before it kills the process.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// How long open connections may finish what they are doing before
    /// they are cut.
    #[schemars(with = "crate::config::schema::DurationText")]
    #[serde(default = "default_drain_timeout", with = "crate::duration::serde")]
    pub drain_timeout: Duration,
}

impl Shutdown {
    /// Shortest and longest `drain_timeout`: 0 cuts at once (nothing in
    /// flight is waited for); over an hour is a hung shutdown.
    pub const DRAIN_TIMEOUT: std::ops::RangeInclusive<Duration> =
        Duration::ZERO..=Duration::from_secs(3600);

    pub(super) fn validate(&self, errors: &mut Errors) {
        let range = Self::DRAIN_TIMEOUT;
        if !range.contains(&self.drain_timeout) {
            errors.push(
                "shutdown.drain_timeout",
                format!(
                    "{} is out of range: 0s (cut at once) to {}",
                    crate::duration::format(self.drain_timeout),
                    crate::duration::format(*range.end())
                ),
            );
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const BASE: &str = "listeners: [{address: '127.0.0.1:8080'}]\n";

    #[test]
    fn drain_timeout_defaults_parses_and_is_bounded() {
        let config = Config::from_yaml(BASE, "t").unwrap();
        assert_eq!(config.shutdown.drain_timeout.as_secs(), 10);
        let config =
            Config::from_yaml(&format!("{BASE}shutdown: {{drain_timeout: 45s}}\n"), "t").unwrap();
        assert_eq!(config.shutdown.drain_timeout.as_secs(), 45);
        let error = Config::from_yaml(&format!("{BASE}shutdown: {{drain_timeout: 2h}}\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("shutdown.drain_timeout: 2h is out of range: 0s (cut at once) to 1h"),
            "{error}"
        );
        let error = Config::from_yaml(&format!("{BASE}shutdown: {{drain: 5s}}\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `drain`"), "{error}");
    }
}
