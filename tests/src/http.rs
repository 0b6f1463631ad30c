//! A deliberately raw HTTP/1.1 client: tests control every byte sent and see
//! every byte received, which a high-level client would normalise away; and
//! raw HTTP/2 frames ([`h2`]) for clients no HTTP/2 library would be (one
//! that never reads, one that resets a stream mid-body).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `request` (complete, with `Connection: close`) to `addr`, from
/// `source` if given, and reads the whole response.
pub async fn send(
    addr: SocketAddr,
    source: Option<SocketAddr>,
    request: &str,
) -> std::io::Result<RawResponse> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket.bind(source)?;
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timed out"))??;
    parse(&raw)
}

/// [`send`] from a thread without a runtime (and without a chosen source):
/// connects, writes `request` (complete, with `Connection: close`) and
/// reads until the server closes, each step within `timeout`.
pub fn send_blocking(
    addr: SocketAddr,
    request: &str,
    timeout: Duration,
) -> std::io::Result<RawResponse> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

/// Writes `request` (any bytes) to `addr` and reads until the server
/// closes the connection (or 10 s pass): every byte it answered.
pub async fn exchange_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
    stream.write_all(request).await?;
    read_to_close(&mut stream).await
}

/// Every byte `stream` sends until it closes (or 10 s pass). A reset after
/// an answer (the server closed with unread input, or a TLS close without
/// close_notify) still ends the exchange.
async fn read_to_close<S>(stream: &mut S) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(_) if !raw.is_empty() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "not closed in 10 s"))??;
    Ok(raw)
}

/// Splits what a server answered on one connection into its responses,
/// each framed by its Content-Length or chunked coding (a response to HEAD
/// must be parsed with [`parse`]). Bytes that are not a whole response are
/// an error.
pub fn parse_all(mut raw: &[u8]) -> std::io::Result<Vec<RawResponse>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut responses = Vec::new();
    while !raw.is_empty() {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| {
                invalid(format!(
                    "no end of head in {:?}",
                    String::from_utf8_lossy(raw)
                ))
            })?;
        let head = parse_head(&raw[..end])?;
        let body_start = end + 4;
        let length = head
            .header("content-length")
            .map(|l| {
                l.parse::<usize>()
                    .map_err(|_| invalid(format!("length {l}")))
            })
            .transpose()?;
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let bodiless =
            (100..200).contains(&head.status) || head.status == 204 || head.status == 304;
        let (body, used) = if bodiless {
            (Vec::new(), body_start)
        } else if chunked {
            let (body, len) =
                dechunk(&raw[body_start..]).ok_or_else(|| invalid("bad chunked body".into()))?;
            (body, body_start + len)
        } else if let Some(n) = length {
            let body = raw
                .get(body_start..body_start + n)
                .ok_or_else(|| invalid("body shorter than its length".into()))?;
            (body.to_vec(), body_start + n)
        } else {
            (raw[body_start..].to_vec(), raw.len())
        };
        responses.push(RawResponse { body, ..head });
        raw = &raw[used..];
    }
    Ok(responses)
}

/// A chunked body and the bytes it took (last chunk and trailers included).
fn dechunk(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = data.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[at..at + line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line_end + 2;
        if size == 0 {
            // Trailer fields, then the blank line.
            loop {
                let line_end = data.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
                at += line_end + 2;
                if line_end == 0 {
                    return Some((out, at));
                }
            }
        }
        out.extend_from_slice(data.get(at..at + size)?);
        at += size + 2;
    }
}

/// Like [`send`], on a stream the caller made (a TLS client's): writes
/// `request` (with `Connection: close`) and reads until the server closes.
/// A close without TLS close_notify after a response is not an error.
pub async fn exchange<S>(stream: &mut S, request: &str) -> std::io::Result<RawResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await?;
    let raw = read_to_close(stream).await?;
    parse(&raw)
}

/// `POST path` of an `application/x-www-form-urlencoded` body, with Host
/// and Connection: close, plus `extra` header lines: the request text.
pub fn form_post(path: &str, form: &str, extra: &[&str]) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        form.len()
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(form);
    request
}

/// `GET path` with Host and Connection: close, plus `extra` header lines.
pub async fn get(addr: SocketAddr, path: &str, extra: &[&str]) -> RawResponse {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    send(addr, None, &request).await.expect("request")
}

/// One keep-alive HTTP/1.1 connection to the gateway: the requests made on
/// it share it, and so share the proxy worker that serves it (and that
/// worker's upstream connection pools).
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// `GET path` with `Host: gateway.test`, on this connection.
    pub async fn get(&mut self, path: &str) -> RawResponse {
        use http_body_util::BodyExt;
        let request = hyper::Request::get(path)
            .header("host", "gateway.test")
            .body(http_body_util::Empty::new())
            .expect("valid request");
        let response = tokio::time::timeout(Duration::from_secs(10), async {
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts, body))
        })
        .await
        .expect("a response within 10 s")
        .expect("a response on the kept-alive connection");
        let (parts, body) = response;
        RawResponse {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        }
    }
}

/// Parses a whole HTTP/1.1 response (head and body, chunked or not), as
/// read from any stream until the server closed it.
pub fn parse(raw: &[u8]) -> std::io::Result<RawResponse> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    if raw.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without a response",
        ));
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let RawResponse {
        status, headers, ..
    } = parse_head(&raw[..end])?;
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| invalid("bad chunked body"))?.0;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// A response head (without its final blank line), with an empty body.
fn parse_head(head: &[u8]) -> std::io::Result<RawResponse> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let head = std::str::from_utf8(head).map_err(|_| invalid("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| invalid("empty head"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(RawResponse {
        status,
        headers,
        body: Vec::new(),
    })
}

/// HTTP/2 frames written by hand (RFC 9113 §4.1), for h2c with prior
/// knowledge.
pub mod h2 {
    /// The client connection preface.
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// RST_STREAM's error code for a stream the client no longer wants.
    pub const CANCEL: u32 = 0x8;

    /// One frame: the 9-byte header, then `payload`.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A request's header block (HPACK, RFC 7541): `:method`, `:path` and
    /// `:authority` as literals without indexing, `:scheme http` indexed.
    /// Values under 128 bytes.
    pub fn request_block(method: &str, path: &str, authority: &str) -> Vec<u8> {
        let mut block = vec![0x86];
        for (name_index, value) in [(0x02, method), (0x04, path), (0x01, authority)] {
            block.extend_from_slice(&[name_index, value.len() as u8]);
            block.extend_from_slice(value.as_bytes());
        }
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_chunked_and_unframed_responses_parse() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"abc".as_slice()));
        assert_eq!(r.header("content-length"), Some("3"));
        let r = parse(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (401, b"abcde".as_slice()));
        let r = parse(b"HTTP/1.0 403 Forbidden\r\n\r\nno").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (403, b"no".as_slice()));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").is_err());
    }

    #[test]
    fn a_connection_splits_into_its_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi\
                    HTTP/1.1 204 No Content\r\n\r\n\
                    HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nT: 1\r\n\r\n";
        let all = parse_all(raw).unwrap();
        let got: Vec<(u16, &[u8])> = all.iter().map(|r| (r.status, r.body.as_slice())).collect();
        assert_eq!(got, [(200, &b"hi"[..]), (204, &b""[..]), (200, &b"x"[..])]);
    }
}
