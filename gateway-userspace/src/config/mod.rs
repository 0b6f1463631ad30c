//! Config: `load → validate` here; `compile` into the runtime happens in the
//! modules that own each part (proxy router, upstream pools, XDP rules).

mod access;
mod auto_ban;
mod binds;
mod cidr;
mod cluster;
mod health;
mod lenient;
mod listener;
mod log;
mod metrics_address;
mod model;
mod oauth2_server;
pub mod opa;
mod policy;
mod rate_limit;
mod resolver;
mod respond;
mod route;
mod schema;
mod secrets;
mod shutdown;
mod syn_cookies;
mod target_address;
mod upstream;
mod validate;
mod xdp;
mod yaml_lines;

use std::{fmt, path::Path};

pub use self::{
    access::*,
    auto_ban::{AutoBan, AutoBanRule, BanScope, SIGNAL_NAMES},
    cidr::{ipv4_mapped_note, ipv4_mapped_notes, is_everything, parse_cidr, unmap_ipv4},
    cluster::Cluster,
    health::*,
    lenient::{cli_settings, CliSettings},
    listener::{ClientAuth, ClientAuthMode, Listener},
    log::{Log, LogFormat},
    metrics_address::{MetricsAddress, MetricsListen, DEFAULT_METRICS_ADDRESS},
    model::*,
    oauth2_server::OAuth2Server,
    policy::*,
    rate_limit::*,
    resolver::Resolver,
    respond::Respond,
    route::{anchored, HeaderMatch, Route, RouteMatch},
    shutdown::Shutdown,
    syn_cookies::{SynCookieMode, SynCookies},
    target_address::TargetAddress,
    upstream::*,
    validate::{host_bits_error, validate, warnings, Errors},
    xdp::*,
    yaml_lines::{locate, Position},
};

/// One problem in a config file, with the path of the offending value
/// (`routes[2].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    /// Where `path` is in the file, when it is there (not a default).
    pub position: Option<Position>,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            position: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in a config file. Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            // The position goes on the first line (a regex error shows the
            // pattern on the lines below).
            let text = error.to_string();
            let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
            match error.position {
                Some(position) => write!(f, "  {first} ({position})")?,
                None => write!(f, "  {first}")?,
            }
            if rest.is_empty() {
                writeln!(f)?;
            } else {
                writeln!(f, "\n{rest}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// serde_yaml's message without the parts we already show: its own partial
/// path prefix (we print the full path) and "at line L column C", which
/// becomes a trailing "(line L, column C)".
fn yaml_message(error: &serde_yaml::Error, path: &str) -> String {
    let mut message = error.to_string();
    let mut location = String::new();
    if let Some(loc) = error.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
        location = format!(" (line {}, column {})", loc.line(), loc.column());
    }
    if let Some((head, rest)) = message.split_once(": ") {
        if !head.is_empty() && !head.contains(' ') && path.starts_with(head) {
            message = rest.to_string();
        }
    }
    format!("{message}{location}")
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigError::new("", format!("cannot read file: {e}"))],
        })?;
        Self::from_yaml(&text, &source)
    }

    /// Valid but unsafe settings, with their paths (see [`warnings`]).
    pub fn warnings(&self) -> Vec<ConfigError> {
        warnings(self)
    }

    /// Parses and validates config text; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source: source.to_string(),
            errors,
        };
        let duplicates = yaml_lines::duplicate_keys(text);
        if !duplicates.is_empty() {
            return Err(fail(duplicates));
        }
        // `${VAR}` and `<key>_file` (secrets.rs); positions stay those of `text`.
        let expanded = secrets::expand(text).map_err(|mut errors| {
            yaml_lines::add_positions(text, &mut errors);
            fail(errors)
        })?;
        let deserializer = serde_yaml::Deserializer::from_str(expanded.as_deref().unwrap_or(text));
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let mut message = yaml_message(&e.into_inner(), &path);
            let mut errors = Vec::new();
            if expanded.is_some() {
                // Lines of the expanded text mean nothing to the user.
                if let Some(at) = message.rfind(" (line ") {
                    message.truncate(at);
                }
                errors.push(ConfigError::new(path, message));
                yaml_lines::add_positions(text, &mut errors);
            } else {
                errors.push(ConfigError::new(path, message));
            }
            fail(errors)
        })?;
        let mut errors = validate(&config);
        yaml_lines::add_positions(text, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }
}

impl Config {
    /// The JSON Schema of the config file (`xgate config schema`).
    pub fn json_schema() -> serde_json::Value {
        schema::config_schema()
    }

    /// The effective config with every secret replaced by `<redacted>`
    /// (`xgate config dump`).
    pub fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        secrets::redact(&mut value);
        value
    }
}
