//! The listener's `send_timeout` for each HTTP/2 stream: a response that
//! has waited longer than that for the client to take more of it (to grant
//! flow-control window) ends its connection.
//!
//! [`super::conn_io::SendTimed`] sees the socket, not the streams: a client
//! that reads the connection but never sends WINDOW_UPDATE leaves every
//! response it asked for parked (hyper polls a response body only when the
//! stream's window has room, and has no timer for that wait), each holding
//! an upstream connection and its buffers. nginx applies `send_timeout` to
//! HTTP/2 the same way, closing the connection; Envoy's
//! `stream_idle_timeout` resets the stream (hyper gives no hook to reset
//! one stream from outside).
//!
//! A body counts as waiting from when it is handed to the connection
//! (a stream the client grants no window at all is never asked for data)
//! and from each data frame it hands out, not its last, until it is asked
//! for the next one; a body waiting for its upstream is not waiting for the
//! client.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// The streams of one HTTP/2 connection and how long each has waited.
pub(super) struct StallWatch {
    timeout: Duration,
    streams: Mutex<Vec<Weak<Waiting>>>,
}

/// Since when a stream's response has waited for the client, if it does.
struct Waiting(Mutex<Option<Instant>>);

impl Waiting {
    fn set(&self, since: Option<Instant>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = since;
    }

    fn since(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StallWatch {
    pub(super) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            streams: Mutex::new(Vec::new()),
        })
    }

    /// `body`, watched.
    pub(super) fn watch<B>(&self, body: B) -> Watched<B> {
        let waiting = Arc::new(Waiting(Mutex::new(Some(Instant::now()))));
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        // Ended streams leave dead entries; sweep them when they could
        // double the list.
        if streams.len() == streams.capacity() {
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&waiting));
        Watched { body, waiting }
    }

    /// Resolves once a stream has waited for the client longer than the
    /// timeout: between the timeout and twice it. Looks when the longest
    /// wait so far would reach the timeout (an idle connection once per
    /// timeout), never more often than eight times per timeout.
    pub(super) async fn stalled(&self) {
        let mut longest = Duration::ZERO;
        loop {
            let until_due = self.timeout.saturating_sub(longest);
            tokio::time::sleep(until_due.max(self.timeout / 8)).await;
            longest = self.longest_wait(Instant::now());
            if longest > self.timeout {
                return;
            }
        }
    }

    fn longest_wait(&self, now: Instant) -> Duration {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.retain(|w| w.strong_count() > 0);
        streams
            .iter()
            .filter_map(|w| w.upgrade()?.since())
            .map(|since| now.saturating_duration_since(since))
            .max()
            .unwrap_or_default()
    }
}

/// A response body whose waits for the client its [`StallWatch`] sees.
pub(super) struct Watched<B> {
    body: B,
    waiting: Arc<Waiting>,
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.waiting.set(None);
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data())
            && !self.body.is_end_stream()
        {
            self.waiting.set(Some(Instant::now()));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, convert::Infallible, task::Waker};

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;

    /// Data frames, then `Pending` (an upstream that has sent nothing
    /// more) or the end.
    struct Script {
        frames: VecDeque<Bytes>,
        then_pending: bool,
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.frames.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None if self.then_pending => Poll::Pending,
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.frames.is_empty() && !self.then_pending
        }
    }

    fn script(pieces: usize, then_pending: bool) -> Script {
        Script {
            frames: (0..pieces).map(|_| Bytes::from_static(b"data")).collect(),
            then_pending,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_left_unpolled_after_a_data_frame_is_a_stall() {
        let watch = StallWatch::new(Duration::from_secs(10));
        let mut watched = watch.watch(script(3, false));
        // Never asked for data (no window granted) is waiting too.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(watch.longest_wait(Instant::now()), Duration::from_secs(3));
        watched.frame().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(watch.longest_wait(Instant::now()), Duration::from_secs(5));
        // Asked for more: the wait starts again from the new frame.
        watched.frame().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(watch.longest_wait(Instant::now()), Duration::from_secs(9));
        // Found within a timeout of its start, whenever the watch looks.
        let start = Instant::now();
        watch.stalled().await;
        assert!(start.elapsed() > Duration::from_secs(1));
        assert!(start.elapsed() <= Duration::from_secs(11));
        // A dropped body is forgotten.
        drop(watched);
        assert_eq!(watch.longest_wait(Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_for_its_upstream_or_done_is_not_a_stall() {
        let watch = StallWatch::new(Duration::from_secs(10));
        // Its last frame handed out: nothing more is owed.
        let mut last = watch.watch(script(1, false));
        last.frame().await.unwrap().unwrap();
        // Pending on the upstream: polled, not waiting on the client.
        let mut pending = watch.watch(script(1, true));
        pending.frame().await.unwrap().unwrap();
        let polled = Pin::new(&mut pending).poll_frame(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(watch.longest_wait(Instant::now()), Duration::ZERO);
    }
}
