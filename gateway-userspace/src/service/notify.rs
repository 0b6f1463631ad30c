//! The sd_notify protocol, by hand: one datagram per state change to the
//! Unix socket systemd names in `$NOTIFY_SOCKET` (`Type=notify` units).
//! Without that variable (not started by systemd) every call does nothing.
//!
//! Sent: `READY=1` once the listeners serve; `RELOADING=1` with
//! `MONOTONIC_USEC` when a reload starts and `READY=1` when it ends (applied
//! or refused); `STOPPING=1` when the drain starts; `MAINPID=` when a
//! `xgate run --takeover` process took the listeners over; `WATCHDOG=1`
//! every half `$WATCHDOG_USEC`.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    sync::OnceLock,
    time::Duration,
};

/// Where the notifications go: systemd's socket, if it gave one.
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
}

fn target() -> Option<&'static Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let name = std::env::var_os("NOTIFY_SOCKET")?;
            let address = match address(name.as_encoded_bytes()) {
                Ok(address) => address,
                Err(error) => {
                    tracing::warn!(%error, "NOTIFY_SOCKET unusable: systemd is not told the daemon's state");
                    return None;
                }
            };
            let socket = UnixDatagram::unbound()
                .inspect_err(|error| tracing::warn!(%error, "cannot open a socket for sd_notify"))
                .ok()?;
            Some(Target { socket, address })
        })
        .as_ref()
}

/// `$NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
fn address(name: &[u8]) -> std::io::Result<SocketAddr> {
    match name.strip_prefix(b"@") {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name)
        }
        None if name.starts_with(b"/") => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name))
        }
        None => Err(std::io::Error::other(
            "neither an absolute path nor an abstract name (@...)",
        )),
    }
}

/// Sends `state` (newline-separated `KEY=value` lines); a failure is
/// logged, never fatal: systemd's view is the only thing it affects.
pub fn send(state: &str) {
    let Some(target) = target() else { return };
    if let Err(error) = target
        .socket
        .send_to_addr(state.as_bytes(), &target.address)
    {
        tracing::warn!(%error, state, "sd_notify failed");
    }
}

/// The daemon serves: its listeners are up. `MAINPID` too, so that after a
/// takeover systemd follows the new process.
pub fn ready() {
    send(&format!("READY=1\nMAINPID={}", std::process::id()));
}

/// A reload starts. systemd 253 and later want `MONOTONIC_USEC` with it
/// (`Type=notify-reload`); 252 ignores the field.
pub fn reloading() {
    let now = crate::sys::monotonic_now().as_micros();
    send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}

/// A reload ended: serving again, with the new config or the old one.
pub fn reloaded(outcome: &Result<(), String>) {
    match outcome {
        Ok(()) => send("READY=1\nSTATUS=configuration reloaded"),
        Err(error) => {
            let first_line = error.lines().next().unwrap_or_default();
            send(&format!(
                "READY=1\nSTATUS=reload refused, running the previous configuration: {first_line}"
            ));
        }
    }
}

/// The daemon stops accepting and drains.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}

/// The listeners went to process `pid` (`xgate run --takeover`): the
/// service's main process from now on.
pub fn main_pid(pid: u32) {
    send(&format!("MAINPID={pid}"));
}

/// How often to feed the watchdog: half `$WATCHDOG_USEC`, as sd_notify(3)
/// advises; none when systemd set no watchdog or set it for another
/// process (`$WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Feeds the watchdog, when systemd set one, for as long as the process
/// runs (the drain included). Runs on the control runtime, so a control
/// thread that hangs (reloads, the admin API, accepting) stops the feeding
/// and systemd restarts the daemon.
pub fn start_watchdog() {
    let Some(every) = watchdog_interval() else {
        return;
    };
    tracing::info!(every = %crate::duration::format(every), "feeding the systemd watchdog");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send("WATCHDOG=1");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_names() {
        use std::os::linux::net::SocketAddrExt;
        let a = address(b"@xgate/notify").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"xgate/notify"[..]));
        let p = address(b"/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(address(b"relative/notify").is_err());
    }
}
