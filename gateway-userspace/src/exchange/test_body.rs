//! A body for tests: frames that are all ready at once, and no size known
//! up front (so whoever sends it must frame it itself).

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame};

pub(crate) struct Frames(VecDeque<Frame<Bytes>>);

impl Frames {
    /// `data` as data frames, then `trailers` if any.
    pub(crate) fn new(data: impl IntoIterator<Item = Bytes>, trailers: Option<HeaderMap>) -> Self {
        let mut frames: VecDeque<_> = data.into_iter().map(Frame::data).collect();
        frames.extend(trailers.map(Frame::trailers));
        Self(frames)
    }
}

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}
