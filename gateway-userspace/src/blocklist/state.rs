//! The blocklist's runtime entries, persisted so they are re-applied on start.
//! Written atomically (temp file, fsync, rename), so a crash leaves either
//! the old file or the new one, never half of one.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::Entry;

const FILE_NAME: &str = "blocklist.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored entries; none when the file does not exist yet. A corrupt
    /// file is an error, not an empty list: silently forgetting bans is worse
    /// than refusing to start.
    pub fn load(&self) -> Result<Vec<Entry>, String> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        let file: StateFile = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a valid state file: {e}", self.path.display()))?;
        if file.version != FORMAT_VERSION {
            return Err(format!(
                "{} has format version {}, this xgate reads version {FORMAT_VERSION}",
                self.path.display(),
                file.version
            ));
        }
        Ok(file.entries)
    }

    pub fn save(&self, entries: &[Entry]) -> Result<(), String> {
        let dir = self.path.parent().expect("state file has a directory");
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let file = StateFile {
            version: FORMAT_VERSION,
            entries: entries.to_vec(),
        };
        let text = serde_json::to_string_pretty(&file).expect("state serializes");
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", self.path.display())
        })
    }
}
