//! The daemon's own log (not the access log) on standard error: plain text
//! with colours on a terminal; without a terminal plain text without colours
//! (and without timestamps under journald, which adds its own) or, with
//! `log.format: json`, one JSON object a line. The level is a filter that
//! the admin API changes at run time (`xgate log-level debug`).

use std::{
    io::IsTerminal,
    sync::{Mutex, OnceLock},
};

use tracing_subscriber::{
    layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer, Registry,
};

use crate::config::{Log, LogFormat};

struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter in force, as given.
    level: Mutex<String>,
    /// `log.level` as the file said it last: a reload applies the file's
    /// level only when that changed, so that one set at run time stays.
    file_level: Mutex<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a level or filter directive (`debug`,
/// `info,gateway_userspace::proxy=trace`). A bare word must be a level: a
/// typo (`dbug`) would otherwise be a filter for a target of that name and
/// silence everything else.
pub fn parse(directive: &str) -> Result<EnvFilter, String> {
    let expected = "expected off, error, warn, info, debug, trace, or a RUST_LOG-style filter \
                    such as info,gateway_userspace::proxy=debug";
    let parts: Vec<&str> = directive.split(',').map(str::trim).collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(format!(
            "invalid log level {directive:?}: an empty part; {expected}"
        ));
    }
    if let Some(word) = parts
        .iter()
        .find(|part| !part.contains('=') && !LEVELS.contains(&part.to_ascii_lowercase().as_str()))
    {
        return Err(format!(
            "invalid log level {directive:?}: {word:?} is not a level; {expected}"
        ));
    }
    EnvFilter::builder()
        .parse(directive)
        .map_err(|e| format!("invalid log level {directive:?}: {e}; {expected}"))
}

/// What `log.format: auto` means for this process.
fn resolved(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Text,
        LogFormat::Auto => LogFormat::Plain,
        other => other,
    }
}

/// Whether standard error is journald's stream (`$JOURNAL_STREAM` names
/// its device and inode), which stamps every line itself.
fn to_journald() -> bool {
    use std::os::{fd::AsFd, unix::fs::MetadataExt};
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
}

/// Starts logging: `RUST_LOG` if set, else `log.level`.
pub fn init(settings: &Log) {
    let directive = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| parse(d).is_ok())
        .unwrap_or_else(|| settings.level.clone());
    let filter = parse(&directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let writer = std::io::stderr;
    let output = match resolved(settings.format) {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(true)
            .boxed(),
        _ if to_journald() => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .without_time()
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
    {
        let _ = CONTROL.set(Control {
            handle,
            level: Mutex::new(directive),
            file_level: Mutex::new(settings.level.clone()),
        });
    }
}

/// The filter in force.
pub fn level() -> String {
    CONTROL
        .get()
        .map(|c| c.level.lock().unwrap().clone())
        .unwrap_or_default()
}

/// Replaces the filter; a bad one is refused and the old one stays.
pub fn set_level(directive: &str) -> Result<(), String> {
    let filter = parse(directive)?;
    let control = CONTROL
        .get()
        .ok_or("logging is not running in this process")?;
    control
        .handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log level: {e}"))?;
    *control.level.lock().unwrap() = directive.to_string();
    Ok(())
}

/// After a reload: applies `log.level` when the file changed it.
pub fn reloaded(settings: &Log) {
    let Some(control) = CONTROL.get() else { return };
    let mut file_level = control.file_level.lock().unwrap();
    if *file_level == settings.level {
        return;
    }
    match set_level(&settings.level) {
        Ok(()) => tracing::info!(level = %settings.level, "log level changed by the reload"),
        Err(error) => tracing::warn!(%error, "log.level not applied"),
    }
    *file_level = settings.level.clone();
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn levels_and_filters() {
        for good in [
            "debug",
            "INFO",
            "warn,gateway_userspace::proxy=trace",
            "off",
        ] {
            assert!(parse(good).is_ok(), "{good}");
        }
        for bad in ["", "dbug", "info,", "info,proxy=loud"] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("invalid log level"), "{bad}: {error}");
        }
    }
}
