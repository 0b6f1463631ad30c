//! One timer per HTTP/1 connection, for the deadlines its task waits on:
//! the `header_read_timeout` of each request head, the upstream `timeout`
//! for each response head, and the `send_timeout` of a response the client
//! is slow to take.
//!
//! With tokio's timer, each of these registered a timer entry and removed
//! it again for every request (for hyper's server, a boxed sleep as well): two
//! passes through the timer wheel under its lock per deadline. Here a
//! connection has one tokio sleep. A deadline only ever moves it earlier;
//! when it fires for a deadline that is no longer waited on and a later one
//! is, it is set to the later one then. An active connection re-arms it
//! about once per timeout, not once per request. It works because one task
//! polls everything an HTTP/1 connection waits on (the sleep wakes only the
//! task that polled it last); HTTP/2 streams run as tasks of their own and
//! use tokio's timer.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Sleep;

/// One per HTTP/1 connection: for its server's head deadlines, and in its
/// [`super::ConnInfo`] for the requests' upstream deadlines.
#[derive(Clone)]
pub struct ConnTimer(Arc<Mutex<Pin<Box<Sleep>>>>);

impl std::fmt::Debug for ConnTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnTimer")
    }
}

impl ConnTimer {
    /// Within a tokio runtime with time enabled (a proxy worker); no
    /// `Default`, which would hide that.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        // Not registered with the timer until a deadline waits on it.
        let idle = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        Self(Arc::new(Mutex::new(Box::pin(tokio::time::sleep_until(
            idle,
        )))))
    }

    /// Resolves at `deadline`. Only for futures that the connection's own
    /// task polls.
    pub fn deadline(&self, deadline: tokio::time::Instant) -> ConnDeadline {
        ConnDeadline {
            deadline,
            shared: self.0.clone(),
        }
    }
}

/// One deadline, kept by the connection's shared sleep.
pub struct ConnDeadline {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Pin<Box<Sleep>>>>,
}

impl Future for ConnDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut sleep = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if sleep.deadline() > self.deadline {
            sleep.as_mut().reset(self.deadline);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if tokio::time::Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier deadline: wait for this one.
            sleep.as_mut().reset(self.deadline);
        }
    }
}

/// `future`'s output, or `None` at `deadline`: on the connection's timer
/// when it has one (HTTP/1, where the connection's task polls every request),
/// else on tokio's.
pub async fn within<F: Future>(
    timer: Option<&ConnTimer>,
    deadline: tokio::time::Instant,
    future: F,
) -> Option<F::Output> {
    let Some(timer) = timer else {
        return tokio::time::timeout_at(deadline, future).await.ok();
    };
    let mut future = std::pin::pin!(future);
    let mut deadline = timer.deadline(deadline);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        Pin::new(&mut deadline).poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::time::Instant;

    use super::*;

    /// Whether `deadline` has passed, polled once.
    async fn done(deadline: &mut ConnDeadline) -> bool {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *deadline).poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn each_head_gets_its_own_deadline_from_the_one_sleep() {
        let timer = ConnTimer::new();
        let start = Instant::now();

        // A head that takes too long.
        let mut first = timer.deadline(start + Duration::from_secs(10));
        assert!(!done(&mut first).await);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!done(&mut first).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(done(&mut first).await, "fires at its deadline");

        // The next head, past the shared sleep's old deadline: not fired
        // early, fired at its own.
        let later = Instant::now();
        let mut second = timer.deadline(later + Duration::from_secs(10));
        assert!(!done(&mut second).await);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!done(&mut second).await, "not the previous deadline");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(done(&mut second).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_arrives_in_time_leaves_the_next_its_full_time() {
        let timer = ConnTimer::new();
        let mut first = timer.deadline(Instant::now() + Duration::from_secs(10));
        assert!(!done(&mut first).await);
        // The head came in after 6 s; the next one starts waiting.
        tokio::time::advance(Duration::from_secs(6)).await;
        drop(first);
        let mut next = timer.deadline(Instant::now() + Duration::from_secs(10));
        assert!(!done(&mut next).await);
        // The first head's deadline passes (the shared sleep fires there).
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            !done(&mut next).await,
            "11 s in: only 5 s of this head's 10"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(done(&mut next).await, "16 s in: this head's 10 s are up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_deadline_moves_the_sleep_earlier_and_wakes_the_task() {
        let timer = ConnTimer::new();
        let mut first = timer.deadline(Instant::now() + Duration::from_secs(60));
        assert!(!done(&mut first).await, "armed for 60 s");
        drop(first);
        let short = timer.deadline(Instant::now() + Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        short.await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
