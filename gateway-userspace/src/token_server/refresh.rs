//! Refresh tokens: opaque, single use, revocable, kept in `state_dir` so
//! that they outlive restarts and reloads.
//!
//! A token is 48 random bytes in base64url: a 16-byte family id and a
//! 256-bit secret. A family is the chain of tokens that rotation makes out
//! of one grant; the store keeps one entry per family with the SHA-256 of
//! the one token that may be used now (never a token itself). Using it
//! rotates it. Presenting any other token of a live family means a token
//! of it was copied: the family is revoked, so the thief's copy dies with
//! the client's (OAuth 2.0 Security BCP, RFC 9700 §4.14.2). The family id
//! is as secret as the token it is part of, so only someone who held one
//! of its tokens can do that.
//!
//! The file is rewritten whole, atomically (temp file, fsync, rename), the
//! way `lists/state.rs` keeps list entries; concurrent changes share one
//! write.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::policy::consumers::{constant_time_eq, sha256};

pub const FILE_NAME: &str = "oauth2_refresh_tokens.json";
const FORMAT_VERSION: u32 = 1;
const FAMILY_BYTES: usize = 16;
const SECRET_BYTES: usize = 32;
const TOKEN_BYTES: usize = FAMILY_BYTES + SECRET_BYTES;

type FamilyId = [u8; FAMILY_BYTES];

/// One rotation chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub client_id: String,
    /// What the grant was for; every token of the family carries it
    /// (RFC 6749 §6: a new refresh token has the old one's scope).
    pub scopes: Vec<String>,
    /// Unix seconds: when the grant was made.
    pub issued: i64,
    /// Unix seconds: when the current token stops working.
    pub expires: i64,
    /// SHA-256 of the current token, in hex.
    #[serde(with = "hex32")]
    current: [u8; 32],
}

/// Why a refresh token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a token of this store, or its family is gone (revoked, expired,
    /// rotated away and then revoked).
    Unknown,
    Expired,
    /// Issued to another client; nothing changes.
    OtherClient,
    /// An old token of a live family: the family is revoked now.
    Replayed,
    /// A scope was asked that the grant did not have; nothing changes.
    NotGranted,
}

#[derive(Debug, Default)]
struct State {
    families: HashMap<FamilyId, Family>,
    /// Counts changes, so a write knows whether a later one covered it.
    version: u64,
}

#[derive(Debug)]
pub struct RefreshTokens {
    path: PathBuf,
    state: Mutex<State>,
    /// The version on disk; held while writing, so writes do not cross.
    written: Mutex<u64>,
    /// A copy of `written` read without waiting for a write.
    on_disk: AtomicU64,
    rng: SystemRandom,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    /// Family id (hex) → family.
    families: HashMap<String, Family>,
}

/// A client's live refresh tokens, for the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientTokens {
    pub client_id: String,
    /// Live families (each has one usable token).
    pub active: usize,
    /// Unix seconds: when the last of them expires.
    pub last_expiry: i64,
}

impl RefreshTokens {
    /// The store of `state_dir`; empty when it has no file yet. A corrupt
    /// file is an error: forgetting revocations silently is worse than
    /// refusing to start.
    pub fn open(state_dir: &Path) -> Result<Self, String> {
        let path = state_dir.join(FILE_NAME);
        let families = match fs::read_to_string(&path) {
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
                file.families
                    .into_iter()
                    .map(|(id, family)| {
                        let id = hex::decode::<FAMILY_BYTES>(&id).ok_or_else(|| {
                            format!("{}: '{id}' is not a family id", path.display())
                        })?;
                        Ok((id, family))
                    })
                    .collect::<Result<_, String>>()?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Self {
            path,
            state: Mutex::new(State {
                families,
                version: 0,
            }),
            written: Mutex::new(0),
            on_disk: AtomicU64::new(0),
            rng: SystemRandom::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new family for `client_id` with `scopes`; its first token.
    pub fn issue(&self, client_id: &str, scopes: &[String], now: i64, lifetime: i64) -> String {
        let (token, id, hash) = self.new_token(None);
        let mut state = self.state();
        // Expired families are dropped as new ones come, so the map holds
        // what is live plus what expired since the last grant.
        state.families.retain(|_, f| f.expires > now);
        state.families.insert(
            id,
            Family {
                client_id: client_id.to_string(),
                scopes: scopes.to_vec(),
                issued: now,
                expires: now.saturating_add(lifetime),
                current: hash,
            },
        );
        state.version += 1;
        token
    }

    /// Uses `token` for `client_id`, for `narrowed` scopes when given:
    /// the family's next token and its scopes, or why not. A token that is
    /// used, replayed or expired is spent.
    pub fn redeem(
        &self,
        token: &str,
        client_id: &str,
        now: i64,
        lifetime: i64,
        narrowed: Option<&[String]>,
    ) -> Result<(String, Vec<String>), Refused> {
        let (id, hash) = parse(token).ok_or(Refused::Unknown)?;
        let mut state = self.state();
        let family = state.families.get(&id).ok_or(Refused::Unknown)?;
        // (why, whether the family ends)
        let refused = if family.client_id != client_id {
            Some((Refused::OtherClient, false))
        } else if !constant_time_eq(&hash, &family.current) {
            Some((Refused::Replayed, true))
        } else if family.expires <= now {
            Some((Refused::Expired, true))
        } else if narrowed.is_some_and(|asked| asked.iter().any(|s| !family.scopes.contains(s))) {
            Some((Refused::NotGranted, false))
        } else {
            None
        };
        if let Some((refused, ends)) = refused {
            if ends {
                state.families.remove(&id);
                state.version += 1;
            }
            return Err(refused);
        }
        let (next, _, next_hash) = self.new_token(Some(id));
        let family = state.families.get_mut(&id).expect("looked up above");
        family.current = next_hash;
        family.expires = now.saturating_add(lifetime);
        let scopes = family.scopes.clone();
        state.version += 1;
        Ok((next, scopes))
    }

    /// RFC 7009: revokes the family of `token` when it was issued to
    /// `client_id` (any token of the family will do, the current one or an
    /// old one). `false`: nothing of this client's was found.
    pub fn revoke(&self, token: &str, client_id: &str) -> bool {
        let Some((id, _)) = parse(token) else {
            return false;
        };
        let mut state = self.state();
        if state
            .families
            .get(&id)
            .is_some_and(|f| f.client_id == client_id)
        {
            state.families.remove(&id);
            state.version += 1;
            return true;
        }
        false
    }

    /// Revokes every family of `client_id`; how many there were.
    pub fn revoke_client(&self, client_id: &str) -> usize {
        let mut state = self.state();
        let before = state.families.len();
        state.families.retain(|_, f| f.client_id != client_id);
        let revoked = before - state.families.len();
        if revoked > 0 {
            state.version += 1;
        }
        revoked
    }

    /// Live families by client, sorted by client id.
    pub fn by_client(&self, now: i64) -> Vec<ClientTokens> {
        let state = self.state();
        let mut clients: HashMap<&str, ClientTokens> = HashMap::new();
        for family in state.families.values().filter(|f| f.expires > now) {
            let entry = clients
                .entry(&family.client_id)
                .or_insert_with(|| ClientTokens {
                    client_id: family.client_id.clone(),
                    active: 0,
                    last_expiry: 0,
                });
            entry.active += 1;
            entry.last_expiry = entry.last_expiry.max(family.expires);
        }
        let mut out: Vec<ClientTokens> = clients.into_values().collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    /// Writes the store, on the blocking pool; returns once what was in
    /// memory when it was called is on disk (or the write failed). Free
    /// when nothing changed.
    pub async fn persist(self: &Arc<Self>) -> Result<(), String> {
        if self.state().version <= self.on_disk.load(Ordering::Acquire) {
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write())
            .await
            .map_err(|e| format!("the write task failed: {e}"))?
    }

    /// Writes the store now, unless a write since the last change did.
    pub fn write(&self) -> Result<(), String> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let (version, text) = {
            let state = self.state();
            if state.version <= *written {
                return Ok(());
            }
            let file = StateFile {
                version: FORMAT_VERSION,
                families: state
                    .families
                    .iter()
                    .map(|(id, f)| (hex::encode(id), f.clone()))
                    .collect(),
            };
            (
                state.version,
                serde_json::to_string_pretty(&file).expect("state serializes"),
            )
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(dir)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", self.path.display())
        })?;
        *written = version;
        self.on_disk.store(version, Ordering::Release);
        Ok(())
    }

    /// A token of family `id` (a new family when `None`), its family id
    /// and its hash.
    fn new_token(&self, id: Option<FamilyId>) -> (String, FamilyId, [u8; 32]) {
        let mut bytes = [0u8; TOKEN_BYTES];
        self.rng
            .fill(&mut bytes)
            .expect("the system's random source works");
        if let Some(id) = id {
            bytes[..FAMILY_BYTES].copy_from_slice(&id);
        }
        let family: FamilyId = bytes[..FAMILY_BYTES].try_into().expect("16 bytes");
        (URL_SAFE_NO_PAD.encode(bytes), family, sha256(&bytes))
    }
}

/// A token's family id and hash; `None` when it is not shaped like one of
/// ours.
fn parse(token: &str) -> Option<(FamilyId, [u8; 32])> {
    if token.len() != TOKEN_BYTES.div_ceil(3) * 4 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let bytes: [u8; TOKEN_BYTES] = bytes.try_into().ok()?;
    let id = bytes[..FAMILY_BYTES].try_into().expect("16 bytes");
    Some((id, sha256(&bytes)))
}

/// Whether `token` is shaped like one of this store's (the revocation
/// endpoint tells refresh tokens from access tokens by it).
pub fn is_refresh_token(token: &str) -> bool {
    parse(token).is_some()
}

mod hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn encode(bytes: &[u8]) -> String {
        bytes
            .iter()
            .flat_map(|b| [DIGITS[(b >> 4) as usize], DIGITS[(b & 15) as usize]])
            .map(char::from)
            .collect()
    }

    pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
        if text.len() != N * 2 {
            return None;
        }
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        super::hex::decode(&text).ok_or_else(|| serde::de::Error::custom("not 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("xgate-refresh-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_token_is_used_once_and_rotates() {
        let dir = Dir::new("rotate");
        let store = RefreshTokens::open(&dir.0).unwrap();
        let first = store.issue("svc", &scopes(&["read"]), 1000, HOUR);
        assert!(is_refresh_token(&first));
        assert_eq!(first.len(), 64);
        let (second, granted) = store.redeem(&first, "svc", 1001, HOUR, None).unwrap();
        assert_eq!(granted, scopes(&["read"]));
        assert_ne!(first, second);
        // Asking for more than the grant had spends nothing.
        assert_eq!(
            store.redeem(&second, "svc", 1001, HOUR, Some(&scopes(&["write"]))),
            Err(Refused::NotGranted)
        );
        // Same family, new secret.
        assert_eq!(first[..21], second[..21]);
        let (third, _) = store.redeem(&second, "svc", 1002, HOUR, None).unwrap();
        assert_eq!(store.by_client(1002)[0].last_expiry, 1002 + HOUR);
        // The first token again: replay; the family (and `third`) is gone.
        assert_eq!(
            store.redeem(&first, "svc", 1003, HOUR, None),
            Err(Refused::Replayed)
        );
        assert_eq!(
            store.redeem(&third, "svc", 1004, HOUR, None),
            Err(Refused::Unknown)
        );
        assert!(store.by_client(1004).is_empty());
    }

    #[test]
    fn other_clients_expiry_and_garbage_are_refused() {
        let dir = Dir::new("refuse");
        let store = RefreshTokens::open(&dir.0).unwrap();
        let token = store.issue("svc", &[], 1000, HOUR);
        // Another client's use changes nothing: the owner still can.
        assert_eq!(
            store.redeem(&token, "thief", 1001, HOUR, None),
            Err(Refused::OtherClient)
        );
        let (token, _) = store.redeem(&token, "svc", 1002, HOUR, None).unwrap();
        assert_eq!(
            store.redeem(&token, "svc", 1002 + HOUR, HOUR, None),
            Err(Refused::Expired)
        );
        for garbage in ["", "abc", &"A".repeat(64), "eyJ.eyJ.sig"] {
            assert_eq!(
                store.redeem(garbage, "svc", 1003, HOUR, None),
                Err(Refused::Unknown),
                "{garbage}"
            );
        }
    }

    #[test]
    fn revocation_by_token_and_by_client() {
        let dir = Dir::new("revoke");
        let store = RefreshTokens::open(&dir.0).unwrap();
        let a = store.issue("svc", &[], 1000, HOUR);
        let b = store.issue("svc", &[], 1000, HOUR);
        let c = store.issue("other", &[], 1000, HOUR);
        assert!(!store.revoke(&a, "other"), "only the owner revokes");
        assert!(store.revoke(&a, "svc"));
        assert!(!store.revoke(&a, "svc"), "already gone");
        assert_eq!(
            store.redeem(&a, "svc", 1001, HOUR, None),
            Err(Refused::Unknown)
        );
        assert_eq!(
            store.by_client(1001),
            [
                ClientTokens {
                    client_id: "other".into(),
                    active: 1,
                    last_expiry: 1000 + HOUR
                },
                ClientTokens {
                    client_id: "svc".into(),
                    active: 1,
                    last_expiry: 1000 + HOUR
                }
            ]
        );
        assert_eq!(store.revoke_client("svc"), 1);
        assert_eq!(
            store.redeem(&b, "svc", 1001, HOUR, None),
            Err(Refused::Unknown)
        );
        assert!(store.redeem(&c, "other", 1001, HOUR, None).is_ok());
    }

    #[test]
    fn the_file_keeps_hashes_and_survives_a_reopen() {
        let dir = Dir::new("reopen");
        let store = RefreshTokens::open(&dir.0).unwrap();
        let token = store.issue("svc", &scopes(&["a", "b"]), 1000, HOUR);
        let replayed = store.issue("svc", &[], 1000, HOUR);
        let (_, _) = store.redeem(&replayed, "svc", 1001, HOUR, None).unwrap();
        store.write().unwrap();
        let text = fs::read_to_string(dir.0.join(FILE_NAME)).unwrap();
        assert!(!text.contains(&token), "the file holds no token");
        let mode = fs::metadata(dir.0.join(FILE_NAME)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let reopened = RefreshTokens::open(&dir.0).unwrap();
        let (_, granted) = reopened.redeem(&token, "svc", 1002, HOUR, None).unwrap();
        assert_eq!(granted, scopes(&["a", "b"]));
        // Rotation state survived too: the used token is a replay.
        assert_eq!(
            reopened.redeem(&replayed, "svc", 1002, HOUR, None),
            Err(Refused::Replayed)
        );
    }

    #[test]
    fn a_corrupt_file_refuses_to_open() {
        let dir = Dir::new("corrupt");
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(dir.0.join(FILE_NAME), "{not json").unwrap();
        let error = RefreshTokens::open(&dir.0).unwrap_err();
        assert!(error.contains("is not a valid state file"), "{error}");
    }
}
