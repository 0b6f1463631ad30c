//! What an upstream's state (connection pools, retry budget, balancer
//! state) is kept by across reloads: its identity, not its position in the
//! file (Pingora keys its backends the same way). The key covers the name,
//! every setting, and the contents of the files its TLS settings name, so
//! a rotated client certificate or CA bundle makes a new upstream whose
//! connections use the new files.

use std::path::Path;

use ring::digest::{Context, SHA256};

use crate::{config, tls::client::SYSTEM_CA_BUNDLE};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKey([u8; 32]);

impl StateKey {
    /// SHA-256 over the name, the config as JSON, and the TLS files' bytes,
    /// each prefixed by its length so that no two inputs run together.
    pub fn of(name: &str, config: &config::Upstream) -> Self {
        let mut hash = Context::new(&SHA256);
        let mut part = |bytes: &[u8]| {
            hash.update(&(bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        part(name.as_bytes());
        part(&serde_json::to_vec(config).expect("an upstream's config serializes"));
        if let Some(tls) = config.tls() {
            let ca = match (&tls.ca_file, tls.verify) {
                (Some(path), _) => Some(path.as_path()),
                (None, true) => Some(Path::new(SYSTEM_CA_BUNDLE)),
                (None, false) => None,
            };
            let files = [ca, tls.client_cert.as_deref(), tls.client_key.as_deref()];
            for path in files.into_iter().flatten() {
                match std::fs::read(path) {
                    Ok(bytes) => part(&bytes),
                    // Building the upstream fails on it too, with the path.
                    Err(error) => part(error.to_string().as_bytes()),
                }
            }
        }
        let digest = hash.finish();
        Self(digest.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(yaml: &str) -> config::Upstream {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_key_follows_the_name_the_settings_and_the_files() {
        let plain = upstream("{targets: ['127.0.0.1:9001']}");
        let key = StateKey::of("u", &plain);
        assert_eq!(key, StateKey::of("u", &plain.clone()));
        // Written differently, the same settings: the same key.
        assert_eq!(
            key,
            StateKey::of("u", &upstream("{targets: ['127.0.0.1:9001'], retries: 1}"))
        );
        assert_ne!(key, StateKey::of("v", &plain));
        assert_ne!(
            key,
            StateKey::of("u", &upstream("{targets: ['127.0.0.1:9001'], timeout: 5s}"))
        );

        let dir = std::env::temp_dir().join(format!("xgate-state-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "one").unwrap();
        let tls = upstream(&format!(
            "{{targets: ['127.0.0.1:9001'], tls: {{ca_file: '{}'}}}}",
            ca.display()
        ));
        let before = StateKey::of("u", &tls);
        assert_ne!(before, key);
        assert_eq!(before, StateKey::of("u", &tls));
        std::fs::write(&ca, "two").unwrap();
        assert_ne!(before, StateKey::of("u", &tls), "the CA bundle changed");
        let _ = std::fs::remove_dir_all(dir);
    }
}
