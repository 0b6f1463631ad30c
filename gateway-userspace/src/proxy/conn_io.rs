//! The byte streams a connection is served over: plain or TLS, with bytes
//! already read put back in front (`Prefixed`), and for HTTP/2 with the send
//! timeout on its writes (`SendTimed`).

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tokio_rustls::server::TlsStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say it speaks.
pub(super) enum Sniffed {
    /// The client closed without sending anything.
    Nothing,
    /// HTTP/1.x (or garbage, which the HTTP/1 parser refuses).
    Http1(Prefixed<Stream>),
    /// The HTTP/2 connection preface (prior knowledge, or ALPN h2).
    Http2(Prefixed<Stream>),
}

/// Reads until the bytes cannot be the HTTP/2 preface any more, or are all
/// of it; the bytes read are replayed to the protocol's server.
pub(super) async fn sniff_preface(mut stream: Stream) -> io::Result<Sniffed> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await? == 0 {
            if buf.is_empty() {
                return Ok(Sniffed::Nothing);
            }
            break;
        }
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] || seen == H2_PREFACE.len() {
            break;
        }
    }
    let http2 = buf.starts_with(H2_PREFACE);
    let stream = Prefixed::new(stream, buf.freeze());
    Ok(if http2 {
        Sniffed::Http2(stream)
    } else {
        Sniffed::Http1(stream)
    })
}

/// A TCP connection, with or without TLS.
pub(super) enum Stream {
    Plain(Prefixed<TcpStream>),
    Tls(Box<TlsStream<Prefixed<TcpStream>>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream with bytes already read from it put back in front: what
/// followed the PROXY header, or the sniffed start of the HTTP traffic.
pub(super) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(inner: S, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A stream whose writes fail once the peer has taken no bytes for
/// `timeout` (the listener's `send_timeout`): for the HTTP/2 server, which
/// has no such setting (hyper's keep-alive pings find a dead peer, not one
/// that stopped reading). The failed write ends the connection and every
/// stream on it. Its sleep is made when a write first finds the socket full
/// and reused after; a peer that keeps up costs a flag per write.
///
/// It sees the connection, not the streams: a stream whose client reads the
/// connection but grants the stream no flow-control window waits without a
/// bound (hyper polls a response body only when the window has room, and
/// gives no hook to time that wait).
pub(super) struct SendTimed<S, F> {
    inner: S,
    timeout: Duration,
    /// A write is waiting for the peer: since `sleep`'s deadline minus
    /// `timeout`.
    waiting: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Called once, when the timeout fires (the error that ends the
    /// connection does not keep its type through hyper and h2).
    on_timeout: Option<F>,
}

impl<S, F: FnOnce() + Unpin> SendTimed<S, F> {
    pub(super) fn new(inner: S, timeout: Duration, on_timeout: F) -> Self {
        Self {
            inner,
            timeout,
            waiting: false,
            sleep: None,
            on_timeout: Some(on_timeout),
        }
    }

    /// Passes a write's result on. One that has to wait starts the wait
    /// (or goes on with the one in progress), which fails once it has lasted
    /// `timeout`; one that is done ends it.
    fn watch<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let sleep = self.sleep.as_mut().expect("made when the wait began");
        ready!(sleep.as_mut().poll(cx));
        if let Some(report) = self.on_timeout.take() {
            report();
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took no bytes within send_timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin, F: Unpin> AsyncRead for SendTimed<S, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, F: FnOnce() + Unpin> AsyncWrite for SendTimed<S, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn prefixed_replays_before_reading_on() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Prefixed::new(server, Bytes::from_static(b"hello"));
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test(start_paused = true)]
    async fn send_timed_gives_up_on_a_peer_that_stops_reading_only() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = fired.clone();
        let mut io = SendTimed::new(ours, Duration::from_secs(5), move || {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        // A slow reader: 1 KiB every 4 s for 40 s, never 5 s without taking.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                peer.read_exact(&mut buf).await.unwrap();
            }
            peer
        });
        for _ in 0..11 {
            io.write_all(&[b'x'; 1024]).await.unwrap();
        }
        let _peer = reader.await.unwrap();
        assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Then it stops: the pipe is full, the next write waits 5 s and fails.
        let started = Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(3600), io.write_all(&[b'x'; 1024]))
            .await
            .expect("the write gives up")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
