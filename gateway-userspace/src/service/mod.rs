//! Running as a system service: telling systemd how the daemon is doing
//! (`notify`), the Linux capabilities XDP needs (`capabilities`), and the
//! daemon's own log: format and a level that changes at run time
//! (`logging`). See docs/operations.md.

pub mod capabilities;
pub mod logging;
pub mod notify;
