//! Attaching the program to interfaces through bpf links pinned in bpffs:
//! the attachment outlives the daemon (a crash does not stop enforcement),
//! and a restarted daemon adopts the pinned link, swapping in its own
//! program atomically (`bpf_link_update`) instead of detaching.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    XdpMode as AyaMode,
};
use serde::{Deserialize, Serialize};

use super::{instance::Instance, XdpDataPlane, XdpError};
use crate::config::XdpMode;

/// The mode an attachment actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the generic (skb) path, for drivers without XDP support.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// What happens to the attachments when the daemon exits cleanly.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// Detach: a stopped gateway leaves no program behind.
    #[default]
    Detach,
    /// Keep enforcing; the next daemon adopts the links (zero-gap restarts).
    Keep,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    /// Taken over from a previous daemon's pinned link.
    pub adopted: bool,
    /// Where the link is pinned (absent without a pin root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_pin: Option<PathBuf>,
}

/// Pinned links live outside the versioned map directory, so a daemon with a
/// new map layout still finds (and replaces) an old daemon's attachment.
pub fn links_dir(pin_root: &Path) -> PathBuf {
    pin_root.join("links")
}

/// A link is pinned as `links/<interface>@<mode>`: bpffs holds only BPF
/// objects, so the mode (which the kernel does not report back) lives in
/// the name.
fn link_pin(pin_root: &Path, interface: &str, mode: AttachMode) -> PathBuf {
    links_dir(pin_root).join(format!("{interface}@{mode}"))
}

/// The pinned link for `interface`, if any, and its mode.
fn find_pinned(pin_root: &Path, interface: &str) -> Option<(PathBuf, AttachMode)> {
    [AttachMode::Native, AttachMode::Generic]
        .into_iter()
        .map(|mode| (link_pin(pin_root, interface, mode), mode))
        .find(|(path, _)| path.exists())
}

impl XdpDataPlane {
    /// Attaches to `interface`, adopting a pinned link if one exists. `auto`
    /// tries native mode first and falls back to generic. The interface gets
    /// its own copy of the program (its own counters; every other map
    /// shared), which needs the pin root.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<Attachment, XdpError> {
        let Some(pin_root) = self.pin_root.clone() else {
            return Err(XdpError::Link(format!(
                "cannot attach to {interface}: attaching needs a pin path (the interface's \
                 copy of the program shares the lists through their pins)"
            )));
        };
        if self.attachments.iter().any(|a| a.interface == interface) {
            return Err(XdpError::Link(format!("{interface} is attached already")));
        }
        let mut instance = Instance::load(
            self.object,
            &super::layout_dir(&pin_root),
            self.list_capacity,
            interface,
        )?;
        let attachment = attach_instance(&mut instance, &pin_root, interface, mode)?;
        self.instances.push(instance);
        self.attachments.push(attachment.clone());
        Ok(attachment)
    }

    /// Unpins every link this daemon holds, so they detach when the program
    /// is dropped (a clean exit with [`OnExit::Detach`]).
    pub fn unpin_links(&mut self) {
        for attachment in &self.attachments {
            if let Some(pin) = &attachment.link_pin {
                let _ = std::fs::remove_file(pin);
            }
        }
    }
}

/// Attaches `instance`'s program to `interface`: swapped into a pinned link
/// left by an earlier daemon or `xgate xdp attach` when there is one, else
/// a new link, pinned.
fn attach_instance(
    instance: &mut Instance,
    pin_root: &Path,
    interface: &str,
    mode: XdpMode,
) -> Result<Attachment, XdpError> {
    if let Some((pin, pinned_mode)) = find_pinned(pin_root, interface) {
        match adopt(instance, interface, &pin, pinned_mode) {
            Ok(attachment) => return Ok(attachment),
            Err(error) => {
                tracing::warn!(interface, %error, "stale pinned XDP link; attaching afresh");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let attempts: &[AttachMode] = match mode {
        XdpMode::Auto => &[AttachMode::Native, AttachMode::Generic],
        XdpMode::Native => &[AttachMode::Native],
        XdpMode::Generic => &[AttachMode::Generic],
    };
    let program = instance.program_mut()?;
    let mut last_error = None;
    for &attempt in attempts {
        let aya_mode = match attempt {
            AttachMode::Native => AyaMode::Driver,
            AttachMode::Generic => AyaMode::Skb,
        };
        match program.attach(interface, aya_mode) {
            Ok(link_id) => {
                let pin = link_pin(pin_root, interface, attempt);
                let link = program.take_link(link_id)?;
                pin_link(link, &pin)?;
                return Ok(Attachment {
                    interface: interface.to_string(),
                    mode: attempt,
                    adopted: false,
                    link_pin: Some(pin),
                });
            }
            Err(source) => {
                tracing::debug!(interface, mode = %attempt, error = %source, "XDP attach attempt failed");
                last_error = Some(XdpError::Attach {
                    interface: interface.to_string(),
                    mode: attempt,
                    source,
                });
            }
        }
    }
    Err(last_error.expect("at least one attach attempt"))
}

fn adopt(
    instance: &mut Instance,
    interface: &str,
    pin: &Path,
    mode: AttachMode,
) -> Result<Attachment, XdpError> {
    let pinned =
        PinnedLink::from_pin(pin).map_err(|e| XdpError::Link(format!("{}: {e}", pin.display())))?;
    let link = XdpLink::try_from(FdLink::from(pinned))
        .map_err(|e| XdpError::Link(format!("{} is not an XDP link: {e}", pin.display())))?;
    // Swaps our program into the live link: no moment without a program.
    instance.program_mut()?.attach_to_link(link)?;
    Ok(Attachment {
        interface: interface.to_string(),
        mode,
        adopted: true,
        link_pin: Some(pin.to_path_buf()),
    })
}

fn pin_link(link: XdpLink, pin: &Path) -> Result<(), XdpError> {
    let fd_link = FdLink::try_from(link).map_err(|e| {
        XdpError::Link(format!(
            "the kernel gave a netlink attachment, which cannot be pinned: {e}"
        ))
    })?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| XdpError::Link(format!("{}: {e}", dir.display())))?;
    }
    fd_link.pin(pin).map_err(|e| {
        XdpError::Link(format!("cannot pin the XDP link at {}: {e}", pin.display()))
    })?;
    Ok(())
}

/// Detaches a pinned attachment left behind (`xgate xdp detach`).
pub fn detach_pinned(pin_root: &Path, interface: &str) -> Result<bool, String> {
    let Some((pin, _)) = find_pinned(pin_root, interface) else {
        return Ok(false);
    };
    std::fs::remove_file(&pin).map_err(|e| format!("cannot remove {}: {e}", pin.display()))?;
    Ok(true)
}
