//! Lending the request body to one attempt at a time, so that an attempt
//! that never got to send it (connect failure) can hand it to the next.
//!
//! A body is streamed, not buffered: once an attempt has polled it, the
//! bytes are gone and the request cannot be retried. Until then, the body
//! waits in a shared slot; the attempt's [`AttemptBody`] takes it out on its
//! first poll. An empty body is never taken, so it can be sent any number of
//! times.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::{
    http1::wire::retain_allowed_trailers,
    proxy::{Body, BoxError},
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
    Streaming(Body),
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
            State::Streaming(_) => false,
            State::Done => self.size_hint.exact() == Some(0),
        }
    }
}

/// An attempt that was superseded polled its body (not expected: attempts
/// are sequential and a failed one is dropped).
#[derive(Debug, thiserror::Error)]
#[error("request body was handed to a later attempt")]
pub struct BodyMoved;

impl HttpBody for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let State::Waiting { slot, attempt } = &self.state {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            let taken = if slot.attempt == *attempt {
                slot.body.take()
            } else {
                None
            };
            drop(slot);
            match taken {
                Some(body) => self.state = State::Streaming(body),
                None => {
                    self.state = State::Done;
                    return Poll::Ready(Some(Err(Box::new(BodyMoved))));
                }
            }
        }
        match &mut self.state {
            State::Streaming(body) => {
                let mut polled = Pin::new(body).poll_frame(cx);
                match &mut polled {
                    Poll::Ready(None) => self.state = State::Done,
                    // Every client's trailers reach a target through here,
                    // an HTTP/2 client's to an HTTP/2 target included.
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(trailers) = frame.trailers_mut() {
                            retain_allowed_trailers(trailers);
                        }
                    }
                    _ => {}
                }
                polled
            }
            State::Done => Poll::Ready(None),
            State::Waiting { .. } => unreachable!("moved to Streaming or Done above"),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Waiting { .. } => false,
            State::Streaming(body) => body.is_end_stream(),
            State::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Waiting { .. } => self.size_hint,
            State::Streaming(body) => body.size_hint(),
            State::Done => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty, Full};

    use super::*;
    use crate::proxy::test_body::Frames;

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
