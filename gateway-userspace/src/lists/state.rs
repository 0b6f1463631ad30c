//! Runtime list entries, persisted so they are re-applied on start.
//! Written atomically (temp file, fsync, rename), so a crash leaves either
//! the old file or the new one, never half of one.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::Entry;

const FILE_NAME: &str = "lists.json";
/// The walking skeleton's file: deny entries only (format version 1).
const LEGACY_FILE_NAME: &str = "blocklist.json";
const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    #[serde(default)]
    pub deny: Vec<Entry>,
    #[serde(default)]
    pub allow: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(flatten)]
    lists: Stored,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyFile {
    version: u32,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The stored entries; none when there is no file yet. A corrupt file is
    /// an error, not an empty list: silently forgetting bans is worse than
    /// refusing to start.
    pub fn load(&self) -> Result<Stored, String> {
        let path = self.path();
        match fs::read_to_string(&path) {
            Ok(text) => {
                let file: StateFile = serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a valid state file: {e}", path.display()))?;
                if file.version != FORMAT_VERSION {
                    return Err(format!(
                        "{} has format version {}, this xgate reads version {FORMAT_VERSION}",
                        path.display(),
                        file.version
                    ));
                }
                Ok(file.lists)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.load_legacy(),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn load_legacy(&self) -> Result<Stored, String> {
        let path = self.dir.join(LEGACY_FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: LegacyFile = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a valid state file: {e}", path.display()))?;
        if file.version != 1 {
            return Err(format!(
                "{} has unknown format version {}",
                path.display(),
                file.version
            ));
        }
        Ok(Stored {
            deny: file.entries,
            allow: Vec::new(),
        })
    }

    pub fn save(&self, lists: &Stored) -> Result<(), String> {
        let path = self.path();
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "version": FORMAT_VERSION,
            "deny": lists.deny,
            "allow": lists.allow,
        }))
        .expect("state serializes");
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })?;
        // The legacy file has been carried over into the new one.
        let _ = fs::remove_file(self.dir.join(LEGACY_FILE_NAME));
        Ok(())
    }
}
