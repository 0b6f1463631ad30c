//! Draining a listener: every connection (and every tunnel after an
//! upgrade) is tracked until it closes, so shutdown can wait for in-flight
//! work up to a deadline and then cut what is left.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

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

/// `shutdown.drain_timeout`, shared by every listener and changed by a
/// reload: a listener reads it when its drain starts.
#[derive(Debug)]
pub struct DrainTimeout(AtomicU64);

impl DrainTimeout {
    pub fn new(timeout: Duration) -> Self {
        Self(AtomicU64::new(as_millis(timeout)))
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, timeout: Duration) {
        self.0.store(as_millis(timeout), Ordering::Relaxed);
    }
}

fn as_millis(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
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
        _ = Rarely::new(shutdown.wait_for(|s| *s)) => {}
    }
    graceful(connection.as_mut());
    connection.await
}

/// A future that is polled again only once its own waker has fired. Raced
/// against a connection, a signal that fires once in the connection's life
/// (shutdown, the drain deadline) then costs an atomic load on each of the
/// connection's many wake-ups, instead of a poll of the watch channel
/// (which locks its waiter list every time).
pub(super) struct Rarely<F> {
    inner: Pin<Box<F>>,
    waker: Arc<SignalWaker>,
}

struct SignalWaker {
    /// Set when the inner future's waker fired (and at the start, so that
    /// the first poll registers it).
    fired: AtomicBool,
    /// The task to wake: whoever polled last.
    task: Mutex<Option<Waker>>,
}

impl Wake for SignalWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> Rarely<F> {
    pub(super) fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
            waker: Arc::new(SignalWaker {
                fired: AtomicBool::new(true),
                task: Mutex::new(None),
            }),
        }
    }
}

impl<F: Future> Future for Rarely<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut task = this.waker.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if !this.waker.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(this.waker.clone());
        this.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rare_signal_still_wakes_the_task_that_races_it() {
        let (tx, mut rx) = watch::channel(false);
        let setter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send_replace(true);
            tx
        });
        let mut ticks = 0;
        let mut signal = Rarely::new(rx.wait_for(|s| *s));
        let raced = async {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut signal => break,
                    // Wakes the task often: the signal must not be lost among them.
                    () = tokio::time::sleep(Duration::from_millis(1)) => ticks += 1,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), raced)
            .await
            .expect("the signal got through");
        assert!(ticks > 0);
        drop(signal);
        assert!(*rx.borrow());
        let _tx = setter.await.unwrap();
    }

    #[tokio::test]
    async fn a_rare_signal_that_already_fired_is_ready_at_once() {
        let (_tx, mut rx) = watch::channel(true);
        tokio::time::timeout(Duration::from_secs(5), Rarely::new(rx.wait_for(|s| *s)))
            .await
            .expect("ready on the first poll")
            .unwrap();
    }
}
