//! Who may use the admin API: root, the daemon's own user, and the members
//! of the admin group (`admin.group`; by default `xgate` when that group
//! exists). The socket file is made mode 0660 and given that group, so the
//! kernel refuses everyone else at connect(); every accepted connection is
//! checked again by its peer credentials (SO_PEERCRED), so a socket whose
//! mode was widened by hand still refuses them.

use std::{os::unix::fs::PermissionsExt, path::Path};

use crate::sys::{self, Group};

/// The group `admin.group` names, or `xgate` when it exists.
pub const DEFAULT_GROUP: &str = "xgate";

/// Whom the admin socket lets in.
#[derive(Debug, Clone)]
pub struct Access {
    group: Option<Group>,
    /// The daemon's own user (root, or the service user).
    daemon_uid: u32,
}

impl Access {
    /// `configured`: `admin.group`. A named group that does not exist is an
    /// error; with none named, `xgate` is used when it exists, else only root
    /// (and the daemon's user) get in.
    pub fn resolve(configured: Option<&str>) -> anyhow::Result<Self> {
        let group = match configured {
            Some(name) => Some(
                sys::group_by_name(name)
                    .map_err(|e| anyhow::anyhow!("admin.group: cannot look up {name:?}: {e}"))?
                    .ok_or_else(|| anyhow::anyhow!("admin.group: no group named {name:?}"))?,
            ),
            None => sys::group_by_name(DEFAULT_GROUP).ok().flatten(),
        };
        Ok(Self {
            group,
            daemon_uid: sys::effective_uid(),
        })
    }

    pub fn group(&self) -> Option<&Group> {
        self.group.as_ref()
    }

    /// Gives the socket file its group and mode: root (or the daemon's
    /// user) and the group, 0660; without a group, 0600.
    pub fn secure(&self, socket: &Path) -> anyhow::Result<()> {
        let mode = match &self.group {
            Some(group) => {
                // Root hands the file to root; a service user keeps it (it
                // cannot give it away) and needs to be in the group.
                let owner = (self.daemon_uid == 0).then_some(0);
                std::os::unix::fs::chown(socket, owner, Some(group.gid)).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot give the admin socket {} to group {} (admin.group): {e}; \
                         the daemon's user must be a member of it",
                        socket.display(),
                        group.name
                    )
                })?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Whether the peer `uid` (primary group `gid`) may use the API.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        if uid == 0 || uid == self.daemon_uid {
            return true;
        }
        let Some(group) = &self.group else {
            return false;
        };
        gid == group.gid || sys::user_name(uid).is_some_and(|name| group.members.contains(&name))
    }

    /// The refusal, for the peer and the log.
    pub fn refusal(&self, uid: u32) -> String {
        match &self.group {
            Some(group) => format!(
                "admin API refused: uid {uid} is not root and not in group {} (admin.group)",
                group.name
            ),
            None => format!(
                "admin API refused: uid {uid} is not root, and no admin.group is set (nor does \
                 a group {DEFAULT_GROUP} exist)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_group_members_only() {
        let access = Access {
            group: Some(Group {
                name: "ops".into(),
                gid: 4242,
                members: vec!["root".into()],
            }),
            daemon_uid: 0,
        };
        assert!(access.allows(0, 0));
        assert!(access.allows(1234, 4242), "primary group");
        assert!(!access.allows(65534, 65534));
        let none = Access {
            group: None,
            daemon_uid: 999,
        };
        assert!(none.allows(999, 999), "the daemon's own user");
        assert!(!none.allows(1000, 4242));
        assert!(none.refusal(1000).contains("uid 1000"));
    }

    #[test]
    fn a_named_group_must_exist() {
        let error = Access::resolve(Some("no-such-group-xgate")).unwrap_err();
        assert!(error.to_string().contains("no group named"), "{error}");
        let root = Access::resolve(Some("root")).unwrap();
        assert_eq!(root.group().unwrap().gid, 0);
    }
}
