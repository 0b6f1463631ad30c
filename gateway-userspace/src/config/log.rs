//! `log`: the daemon's own log on standard error (not the access log).
//! See docs/operations.md, "Logs".

use serde::{Deserialize, Serialize};

use super::Errors;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a RUST_LOG-style filter
    /// (`info,gateway_userspace::proxy=debug`). `RUST_LOG` wins at start;
    /// `xgate log-level` changes it at run time.
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines look.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `text` on a terminal, `plain` otherwise.
    #[default]
    Auto,
    /// Human-readable, with colours.
    Text,
    /// Human-readable without colours; without timestamps under journald.
    Plain,
    /// One JSON object a line.
    Json,
}

impl Log {
    pub(super) fn validate(&self, errors: &mut Errors) {
        if let Err(message) = crate::service::logging::parse(&self.level) {
            errors.push("log.level", message);
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::Auto,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn a_bad_level_is_refused_with_its_path() {
        let yaml = "listeners: [{address: '127.0.0.1:8080'}]\nlog: {level: loud}\n";
        let errors = Config::from_yaml(yaml, "test").unwrap_err().to_string();
        assert!(errors.contains("log.level"), "{errors}");
        let yaml = "listeners: [{address: '127.0.0.1:8080'}]\nlog: {level: 'warn,gateway_userspace=debug', format: json}\n";
        let config = Config::from_yaml(yaml, "test").unwrap();
        assert_eq!(config.log.format, super::LogFormat::Json);
    }
}
