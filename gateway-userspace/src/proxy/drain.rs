//! Draining a listener: every connection (and every tunnel after an
//! upgrade) is tracked until it closes, so shutdown can wait for in-flight
//! work up to a deadline and then cut what is left.

use std::{pin::Pin, sync::Arc};

use tokio::sync::watch;

use crate::telemetry::ConnectionGuard;

/// What a connection holds from its listener for as long as any part of it
/// is open (requests, and a tunnel after an upgrade): the open-connections
/// gauge, its place in the drain, and the signal that cuts it at the drain
/// deadline. Upgrade requests carry a clone in their extensions.
#[derive(Clone)]
pub(super) struct ConnectionScope {
    _guards: Arc<(ConnectionGuard, Tracked)>,
    close: watch::Receiver<bool>,
}

impl ConnectionScope {
    pub(super) fn new(
        open: ConnectionGuard,
        tracked: Tracked,
        close: watch::Receiver<bool>,
    ) -> Self {
        Self {
            _guards: Arc::new((open, tracked)),
            close,
        }
    }

    /// Resolves at the drain deadline.
    pub(super) async fn closed(&mut self) {
        // A dropped sender means the listener is gone: closed as well.
        let _ = self.close.wait_for(|closed| *closed).await;
    }
}

/// Counts open connections so the drain can wait for zero.
pub(super) struct Tracker(Arc<watch::Sender<usize>>);

pub(super) struct Tracked(Arc<watch::Sender<usize>>);

impl Tracker {
    pub(super) fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    pub(super) fn track(&self) -> Tracked {
        self.0.send_modify(|n| *n += 1);
        Tracked(self.0.clone())
    }

    pub(super) fn open(&self) -> usize {
        *self.0.borrow()
    }

    pub(super) async fn idle(&self) {
        let _ = self.0.subscribe().wait_for(|n| *n == 0).await;
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Polls an HTTP connection; at shutdown asks it to finish gracefully (no
/// new requests, in-flight ones complete, HTTP/2 sends GOAWAY) and keeps
/// polling until it has.
pub(super) async fn until_drained<C: std::future::Future>(
    connection: C,
    shutdown: &mut watch::Receiver<bool>,
    graceful: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        output = connection.as_mut() => return output,
        _ = shutdown.wait_for(|s| *s) => {}
    }
    graceful(connection.as_mut());
    connection.await
}
