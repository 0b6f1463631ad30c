//! Lending the request body to one attempt at a time, so that an attempt
//! that never got to send it (connect failure) can hand it to the next.
//!
//! A body is streamed, not buffered: once an attempt has polled it, the
//! bytes are gone and the request cannot be retried. Until then, the body
//! waits in a shared slot; the attempt's [`AttemptBody`] takes it out on its
//! first poll. An empty body is never taken, so it can be sent any number of
//! times.
//!
//! The slot also keeps what the client's side of the body failed with
//! (malformed, cut off, over a limit), for the dispatch loop: such a failed
//! attempt is the client's doing, not the target's, and the clients do not
//! all pass the error back (hyper's HTTP/2 client resets the stream and
//! reports that instead).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::{
    exchange::{Body, BoxError},
    http1::wire::retain_allowed_trailers,
};

/// The request body, owned by the dispatch loop.
pub struct RequestBody {
    /// `None` for an empty body: nothing to lend.
    slot: Option<Arc<Mutex<Slot>>>,
    size_hint: SizeHint,
}

struct Slot {
    /// Which attempt may take the body; older attempts get an error.
    attempt: u32,
    body: Option<Body>,
    /// What the body failed with, once it has.
    failure: Option<BoxError>,
}

impl RequestBody {
    pub fn new(body: Body) -> Self {
        let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
        Self {
            size_hint: body.size_hint(),
            slot: (!empty).then(|| {
                Arc::new(Mutex::new(Slot {
                    attempt: 0,
                    body: Some(body),
                    failure: None,
                }))
            }),
        }
    }

    /// True when there is nothing to send (GET, or `Content-Length: 0`).
    pub fn is_empty(&self) -> bool {
        self.slot.is_none()
    }

    /// Whether another attempt could still send the body.
    pub fn can_replay(&self) -> bool {
        self.slot.as_ref().is_none_or(|slot| {
            slot.lock()
                .unwrap_or_else(|e| e.into_inner())
                .body
                .is_some()
        })
    }

    /// What the client's side of the body failed with, if it did (taken:
    /// asked once, when an attempt has failed).
    pub fn take_failure(&self) -> Option<BoxError> {
        let slot = self.slot.as_ref()?;
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .failure
            .take()
    }

    /// The body for a new attempt; `None` once an earlier attempt started
    /// sending it.
    pub fn for_attempt(&self) -> Option<AttemptBody> {
        let Some(shared) = &self.slot else {
            return Some(AttemptBody::empty());
        };
        let mut slot = shared.lock().unwrap_or_else(|e| e.into_inner());
        slot.body.as_ref()?;
        slot.attempt += 1;
        Some(AttemptBody {
            state: State::Waiting {
                slot: shared.clone(),
                attempt: slot.attempt,
            },
            size_hint: self.size_hint,
        })
    }
}

/// The body as one attempt sends it.
pub struct AttemptBody {
    state: State,
    size_hint: SizeHint,
}

enum State {
    /// Not polled yet: the body is still in the slot.
    Waiting {
        slot: Arc<Mutex<Slot>>,
        attempt: u32,
    },
    /// Taken; the slot is where a failure goes.
    Streaming {
        body: Body,
        slot: Arc<Mutex<Slot>>,
    },
    Done,
}

impl AttemptBody {
    fn empty() -> Self {
        Self {
            state: State::Done,
            size_hint: SizeHint::with_exact(0),
        }
    }

    /// Whether none of the body has been taken yet (an empty body never
    /// is), so another connection could still send all of it.
    pub fn is_unsent(&self) -> bool {
        match self.state {
            State::Waiting { .. } => true,
            State::Streaming { .. } => false,
            State::Done => self.size_hint.exact() == Some(0),
        }
    }
}

/// An attempt that was superseded polled its body (not expected: attempts
/// are sequential and a failed one is dropped).
#[derive(Debug, thiserror::Error)]
#[error("request body was handed to a later attempt")]
pub struct BodyMoved;

/// What an attempt's client sees when the request body fails on the
/// client's side; the error itself is kept for the dispatch loop
/// ([`RequestBody::take_failure`]).
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub struct ClientBodyFailed;

impl HttpBody for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let State::Waiting { .. } = &self.state {
            let State::Waiting { slot, attempt } = std::mem::replace(&mut self.state, State::Done)
            else {
                unreachable!("matched above")
            };
            let mut locked = slot.lock().unwrap_or_else(|e| e.into_inner());
            let taken = if locked.attempt == attempt {
                locked.body.take()
            } else {
                None
            };
            drop(locked);
            match taken {
                Some(body) => self.state = State::Streaming { body, slot },
                None => return Poll::Ready(Some(Err(Box::new(BodyMoved)))),
            }
        }
        let State::Streaming { body, slot } = &mut self.state else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(None) => {
                self.state = State::Done;
                Poll::Ready(None)
            }
            // Every client's trailers reach a target through here, an
            // HTTP/2 client's to an HTTP/2 target included.
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    retain_allowed_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                slot.lock().unwrap_or_else(|e| e.into_inner()).failure = Some(error);
                self.state = State::Done;
                Poll::Ready(Some(Err(Box::new(ClientBodyFailed))))
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Waiting { .. } => false,
            State::Streaming { body, .. } => body.is_end_stream(),
            State::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Waiting { .. } => self.size_hint,
            State::Streaming { body, .. } => body.size_hint(),
            State::Done => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty, Full};

    use super::*;
    use crate::exchange::test_body::Frames;

    fn body(bytes: &'static [u8]) -> Body {
        Full::new(Bytes::from_static(bytes))
            .map_err(|never| match never {})
            .boxed()
    }

    #[tokio::test]
    async fn an_unsent_body_goes_to_the_next_attempt() {
        let request = RequestBody::new(body(b"hello"));
        assert!(!request.is_empty());
        let first = request.for_attempt().unwrap();
        assert_eq!(first.size_hint().exact(), Some(5));
        assert!(first.is_unsent());
        drop(first); // e.g. the connect failed
        assert!(request.can_replay());
        let mut second = request.for_attempt().unwrap();
        assert_eq!(
            second.frame().await.unwrap().unwrap().into_data().unwrap(),
            "hello"
        );
        assert!(!second.is_unsent(), "taken");
        assert!(second.frame().await.is_none());
        assert!(!second.is_unsent(), "sent");
        assert!(!request.can_replay());
        assert!(request.for_attempt().is_none(), "sent once: no replay");
    }

    #[tokio::test]
    async fn trailers_lose_the_fields_a_trailer_section_may_not_carry() {
        let mut trailers = http::HeaderMap::new();
        for name in ["x-forwarded-for", "x-request-id", "content-length", "host"] {
            trailers.append(name, "1".parse().unwrap());
        }
        trailers.append("x-checksum", "a".parse().unwrap());
        trailers.append("x-checksum", "b".parse().unwrap());
        let frames = Frames::new([Bytes::from_static(b"hello")], Some(trailers));
        let request = RequestBody::new(frames.map_err(|never| match never {}).boxed());
        let collected = request.for_attempt().unwrap().collect().await.unwrap();
        let trailers = collected.trailers().expect("trailers").clone();
        let checksums: Vec<_> = trailers.get_all("x-checksum").iter().collect();
        assert_eq!(checksums, ["a", "b"]);
        assert_eq!(trailers.len(), 2, "{trailers:?}");
    }

    #[tokio::test]
    async fn a_superseded_attempt_cannot_take_the_body() {
        let request = RequestBody::new(body(b"hello"));
        let stale = request.for_attempt().unwrap();
        let current = request.for_attempt().unwrap();
        assert!(stale.collect().await.unwrap_err().is::<BodyMoved>());
        assert_eq!(current.collect().await.unwrap().to_bytes(), "hello");
    }

    /// One piece, then the error a client's broken body ends with.
    struct Broken(bool);

    impl HttpBody for Broken {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Ready(Some(Err("client closed mid-body".into())));
            }
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
        }
    }

    #[tokio::test]
    async fn a_client_side_failure_is_kept_for_the_dispatch_loop() {
        let request = RequestBody::new(Broken(false).boxed());
        assert!(request.take_failure().is_none());
        let mut attempt = request.for_attempt().unwrap();
        assert_eq!(
            attempt.frame().await.unwrap().unwrap().into_data().unwrap(),
            "first"
        );
        let seen = attempt.frame().await.unwrap().unwrap_err();
        assert!(seen.is::<ClientBodyFailed>(), "{seen}");
        assert!(attempt.frame().await.is_none());
        let kept = request.take_failure().expect("kept");
        assert_eq!(kept.to_string(), "client closed mid-body");
        assert!(request.take_failure().is_none(), "taken once");
    }

    #[tokio::test]
    async fn an_empty_body_can_be_sent_again_and_again() {
        let request = RequestBody::new(Empty::new().map_err(|never| match never {}).boxed());
        assert!(request.is_empty());
        for _ in 0..3 {
            let attempt = request.for_attempt().unwrap();
            assert!(attempt.is_end_stream());
            assert!(attempt.is_unsent());
            assert!(attempt.collect().await.unwrap().to_bytes().is_empty());
        }
    }
}
