//! The two settings the CLI needs from a config file (the admin socket and
//! the XDP pin path), read leniently: a file being edited (a YAML syntax
//! error, a route in progress) must not stop `xgate status` or
//! `xgate blocklist add` from reaching the running daemon.

use std::path::{Path, PathBuf};

use super::{DEFAULT_ADMIN_SOCKET, DEFAULT_PIN_PATH};

/// What the CLI found, and a note for the user when it fell back to a
/// default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliSettings {
    pub admin_socket: PathBuf,
    pub pin_path: PathBuf,
    /// Set when the file could not be read or a value had the wrong type.
    pub note: Option<String>,
}

/// Reads `admin.socket` and `xdp.pin_path` from `path`, ignoring every
/// other part of the file; a missing key is its default.
pub fn cli_settings(path: &Path) -> CliSettings {
    let mut settings = CliSettings {
        admin_socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
        pin_path: PathBuf::from(DEFAULT_PIN_PATH),
        note: None,
    };
    let value = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read it: {e}"))
        .and_then(|text| {
            serde_yaml::from_str::<serde_yaml::Value>(&text)
                .or_else(|e| sections_alone(&text, &["admin", "xdp"]).ok_or(e.to_string()))
        });
    let value = match value {
        Ok(value) => value,
        Err(e) => {
            settings.note = Some(format!(
                "{} is not usable ({e}); using the default admin socket {} and pin path {}",
                path.display(),
                settings.admin_socket.display(),
                settings.pin_path.display()
            ));
            return settings;
        }
    };
    let mut problems = Vec::new();
    for (section, key, slot) in [
        ("admin", "socket", &mut settings.admin_socket),
        ("xdp", "pin_path", &mut settings.pin_path),
    ] {
        match value.get(section).and_then(|s| s.get(key)) {
            None => {}
            // `${VAR}` as the daemon reads it (secrets.rs).
            Some(serde_yaml::Value::String(s)) if !s.is_empty() => {
                match super::secrets::substitute(s) {
                    Ok(expanded) => *slot = PathBuf::from(expanded.as_deref().unwrap_or(s)),
                    Err(e) => {
                        problems.push(format!("{section}.{key}: {e}, using {}", slot.display()))
                    }
                }
            }
            Some(_) => problems.push(format!(
                "{section}.{key} is not a path, using {}",
                slot.display()
            )),
        }
    }
    if !problems.is_empty() {
        settings.note = Some(format!("{}: {}", path.display(), problems.join("; ")));
    }
    settings
}

/// A file with a syntax error elsewhere: the top-level `sections` parsed
/// on their own (each runs from its `key:` line at column 0 to the next
/// line at column 0), if they parse.
fn sections_alone(text: &str, sections: &[&str]) -> Option<serde_yaml::Value> {
    let mut kept = String::new();
    let mut keep = false;
    for line in text.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '\t', '#']);
        if top_level {
            keep = sections
                .iter()
                .any(|s| line.strip_prefix(s).is_some_and(|r| r.starts_with(':')));
        }
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    serde_yaml::from_str(&kept).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> CliSettings {
        let path = std::env::temp_dir().join(format!(
            "xgate-lenient-{}-{}.yaml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        let settings = cli_settings(&path);
        let _ = std::fs::remove_file(&path);
        settings
    }

    #[test]
    fn reads_only_what_the_cli_needs() {
        // Semantically broken (no listeners, unknown upstream): irrelevant.
        let s = settings(
            "admin: {socket: /tmp/a.sock}\nxdp: {pin_path: /sys/fs/bpf/x}\nroutes: [{upstream: nope}]\n",
        );
        assert_eq!(s.admin_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(s.pin_path, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(s.note, None);
        let s = settings("admin: {socket: '${PATH}/a.sock'}\n");
        let path = std::env::var("PATH").unwrap();
        assert_eq!(s.admin_socket, PathBuf::from(format!("{path}/a.sock")));
        let s = settings("admin: {socket: '${XGATE_LENIENT_UNSET}'}\n");
        assert_eq!(s.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert!(s.note.unwrap().contains("XGATE_LENIENT_UNSET is not set"));
        let s = settings("listeners: []\n");
        assert_eq!(s.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(s.note, None);
    }

    #[test]
    fn a_syntax_error_elsewhere_does_not_hide_the_admin_socket() {
        let s = settings(
            "routes:\n  - match: {path_prefix: /\nadmin:\n  socket: /tmp/b.sock\nxdp: {pin_path: /sys/fs/bpf/y}\n",
        );
        assert_eq!(s.admin_socket, PathBuf::from("/tmp/b.sock"));
        assert_eq!(s.pin_path, PathBuf::from("/sys/fs/bpf/y"));
        assert_eq!(s.note, None);
    }

    #[test]
    fn a_file_mid_edit_falls_back_to_defaults_with_a_note() {
        let s = settings("admin: {socket: /tmp/a.sock\n");
        assert_eq!(s.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        let note = s.note.unwrap();
        assert!(note.contains("is not usable"), "{note}");
        assert!(note.contains(DEFAULT_ADMIN_SOCKET), "{note}");
        let s = settings("admin: {socket: [1, 2]}\n");
        assert!(s.note.unwrap().contains("admin.socket is not a path"));
    }
}
