//! Zero-downtime binary upgrade: the running daemon hands its listening
//! sockets to a new `xgate run --takeover` process, as HAProxy's `-x` and
//! nginx's USR2 upgrade do. The sockets themselves change hands (SCM_RIGHTS
//! over a Unix socket), so their accept queues go on: no connection is
//! refused or reset in between, and no second socket ever binds the port.
//! See docs/listeners.md, "Upgrading without downtime".
//!
//! The exchange: the new process listens on a private Unix socket and asks
//! the daemon (`POST /takeover` on the admin socket) to connect there; the
//! daemon sends one message with every listening socket, stops accepting,
//! and drains and exits as on SIGTERM, leaving XDP attached for the new
//! process (which adopted it) and the admin socket path to it.

use std::{
    io::{IoSlice, IoSliceMut},
    mem::MaybeUninit,
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::{fs::PermissionsExt, net::UnixListener, net::UnixStream},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, Context};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most listening sockets one handoff carries (one message).
pub const MAX_LISTENERS: usize = 64;
/// The message that goes with the sockets: says what they are.
const GREETING: &[u8] = b"xgate-listeners";
/// How long the new process waits for the daemon to connect back.
const CONNECT_BACK: Duration = Duration::from_secs(10);

/// The daemon's side: connects to `path` and sends `sockets`.
pub fn hand_over(path: &Path, sockets: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    if sockets.len() > MAX_LISTENERS {
        return Err(std::io::Error::other(format!(
            "{} listeners: at most {MAX_LISTENERS} can be handed over",
            sockets.len()
        )));
    }
    let stream = UnixStream::connect(path)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(sockets)) {
        return Err(std::io::Error::other("no room for the sockets"));
    }
    sendmsg(
        stream.as_fd(),
        &[IoSlice::new(GREETING)],
        &mut control,
        SendFlags::empty(),
    )?;
    // Under systemd, the new process is the service from now on.
    if let Ok(peer) = rustix::net::sockopt::socket_peercred(&stream) {
        crate::service::notify::main_pid(peer.pid.as_raw_nonzero().get() as u32);
    }
    Ok(())
}

/// The new process's side: asks the daemon behind `admin_socket` for its
/// listening sockets; returns them by the address each is bound to.
pub async fn take_over(admin_socket: &Path) -> anyhow::Result<Vec<(SocketAddr, TcpListener)>> {
    let path = private_path(admin_socket);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {} for the handoff", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let receive = tokio::task::spawn_blocking(move || receive(listener));
    let asked = crate::admin::client::call_ok(
        admin_socket,
        http::Method::POST,
        "/takeover",
        Some(serde_json::json!({ "socket": path })),
    )
    .await;
    let received = receive.await.expect("the handoff receiver does not panic");
    let _ = std::fs::remove_file(&path);
    asked.context("the running daemon refused the takeover")?;
    let sockets = received.context("no listening sockets received")?;
    sockets
        .into_iter()
        .map(|fd| {
            let listener = TcpListener::from(fd);
            let address = listener
                .local_addr()
                .context("a handed-over socket has no address")?;
            listener.set_nonblocking(true)?;
            Ok((address, listener))
        })
        .collect()
}

/// Next to the admin socket (the same private directory), named for this
/// process.
fn private_path(admin_socket: &Path) -> PathBuf {
    let mut name = admin_socket.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".takeover-{}", std::process::id()));
    admin_socket.with_file_name(name)
}

fn receive(listener: UnixListener) -> anyhow::Result<Vec<OwnedFd>> {
    // The daemon connects back while it answers the request; a daemon that
    // never does must not hang the start.
    let stream = accept_within(&listener, CONNECT_BACK)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut payload = [0u8; 64];
    let message = recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut payload)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut sockets = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            sockets.extend(fds);
        }
    }
    if &payload[..message.bytes] != GREETING {
        return Err(anyhow!("the handoff message is not from xgate"));
    }
    Ok(sockets)
}

fn accept_within(listener: &UnixListener, timeout: Duration) -> anyhow::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Err(anyhow!(
                        "the daemon did not connect back within {timeout:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
