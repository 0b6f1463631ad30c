//! A connection to a target, plain TCP or TLS over it, and how one is
//! opened: the TCP connect and the TLS handshake within `connect_timeout`,
//! either failing as a connect failure (the request never left).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::client::TlsStream;

use super::tls::TlsConnector;

pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is over a kilobyte, and a pooled connection
    /// moves in and out of the pool with every request.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The kernel's receive buffer for each upstream connection
/// (`SO_RCVBUF`). The proxy stops reading an upstream whose client is not
/// taking the response, and the kernel then holds what the target sends, up
/// to this buffer: left to autotuning that is up to `tcp_rmem`'s maximum
/// (6 MiB by default, often 32 MiB) per connection, and a thousand clients
/// that stop reading large responses filled the host's TCP memory
/// (`tcp_mem`), after which every connection on the host stalled on
/// dropped packets. 256 KiB covers the bandwidth-delay product of a
/// 10 Gbit/s link at a 0.2 ms round trip (a target in the same data
/// centre); a target much farther away gets at most 256 KiB per round trip
/// on one connection.
pub const RECEIVE_BUFFER: u32 = 256 * 1024;

/// A new connection to `target`, with a TLS handshake when `tls` is given,
/// all within `timeout` (else an `io::ErrorKind::TimedOut` error).
pub async fn connect(
    target: SocketAddr,
    timeout: Duration,
    tls: Option<&TlsConnector>,
) -> io::Result<Stream> {
    let connect = async {
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // Before connecting: the window scale is agreed in the handshake.
        let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
        let tcp = socket.connect(target).await?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => Ok(Stream::Tls(Box::new(tls.handshake(tcp, target).await?))),
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(stream) => stream,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        )),
    }
}

impl Stream {
    /// Whether an idle connection can take a request: the target has not
    /// closed it or sent anything unasked. Costs no system call unless the
    /// socket became readable while idle.
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Stream::Plain(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => matches!(
                    tcp.try_read(&mut [0; 1]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                ),
            },
            Stream::Tls(tls) => {
                if tls.get_ref().0.poll_read_ready(&mut cx).is_pending() {
                    return true;
                }
                // What arrived is read through TLS, never off the raw
                // socket (that would tear a record): a session ticket or a
                // key update leaves it open; data, a close_notify (an empty
                // read), or an error do not.
                Pin::new(&mut **tls).poll_fill_buf(&mut cx).is_pending()
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
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
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    /// TLS may hold back records the socket did not take; plain TCP holds
    /// nothing back and returns at once.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::oneshot,
    };

    use super::*;
    use crate::config::{UpstreamProtocol, UpstreamTls};

    /// What the server does once the handshake is through.
    enum Then {
        /// Nothing (its session tickets are all that follows the handshake).
        Idle,
        /// Sends data nobody asked for.
        Talk,
        /// Sends close_notify.
        Close,
    }

    /// A TLS server on loopback with a certificate for 127.0.0.1 from a CA
    /// made here, and a connector trusting that CA. The server does `then`
    /// after the handshake, then says so on the returned channel and holds
    /// the connection open.
    async fn pair(then: Then) -> (Stream, oneshot::Receiver<()>) {
        let dir = std::env::temp_dir().join(format!(
            "xgate-stream-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            match then {
                Then::Idle => tls.flush().await.unwrap(),
                Then::Talk => tls.write_all(b"surprise").await.unwrap(),
                Then::Close => {
                    tls.get_mut().1.send_close_notify();
                    tls.flush().await.unwrap();
                }
            }
            let _ = done.send(());
            let _ = tls.read(&mut [0; 16]).await;
        });
        let tls: UpstreamTls =
            serde_yaml::from_str(&format!("{{ca_file: '{}'}}", ca_file.display())).unwrap();
        let connector = TlsConnector::new("t", &tls, UpstreamProtocol::Http1)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let stream = connect(addr, Duration::from_secs(5), Some(&connector))
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(dir);
        (stream, done_rx)
    }

    fn tcp(stream: &Stream) -> &TcpStream {
        match stream {
            Stream::Tls(tls) => tls.get_ref().0,
            Stream::Plain(_) => unreachable!("a TLS pair"),
        }
    }

    /// Polls `is_open` each time more bytes arrive, until it says closed.
    /// (Each poll reads what is there, so the next wait is for new bytes.)
    async fn until_judged_closed(stream: &mut Stream) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tcp(stream).readable().await.unwrap();
                if !stream.is_open() {
                    return;
                }
            }
        })
        .await
        .expect("judged closed once the server's bytes are in");
    }

    #[tokio::test]
    async fn an_idle_tls_connection_is_judged_through_tls_not_off_the_socket() {
        // Session tickets arrive after the handshake: the socket has bytes,
        // yet nothing was said. Reading a byte off the raw socket would
        // call it closed (and tear a record).
        let (mut stream, done) = pair(Then::Idle).await;
        done.await.unwrap();
        tcp(&stream).peek(&mut [0; 1]).await.unwrap();
        assert!(stream.is_open(), "session tickets leave it open");
        assert!(stream.is_open(), "and asking twice changes nothing");

        let (mut stream, done) = pair(Then::Talk).await;
        done.await.unwrap();
        until_judged_closed(&mut stream).await;
        let mut unasked = [0; 16];
        let n = stream.read(&mut unasked).await.unwrap();
        assert_eq!(&unasked[..n], b"surprise", "left to read, not torn");

        let (mut stream, done) = pair(Then::Close).await;
        done.await.unwrap();
        until_judged_closed(&mut stream).await;
        assert_eq!(stream.read(&mut [0; 16]).await.unwrap(), 0, "close_notify");
    }
}
