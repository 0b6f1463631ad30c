//! An upstream that records every raw byte the gateway sends it and reads
//! them with its own strict HTTP/1.1 parser, written independently of the
//! gateway's (no httparse): the witness that nothing ambiguous ever passed
//! the gateway. A request it cannot read one way only (a bare CR or LF, an
//! obsolete line fold, two lengths, a length and a coding, a chunk size
//! that is not plain hex...) is a *violation*, kept for the test to assert
//! on, and the connection is closed. Every request it can read is answered
//! with `200` and the body `seen <n>` (its count, from 1).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// One request as the strict parser read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Log {
    /// Raw bytes per connection, in accept order.
    raw: Vec<Vec<u8>>,
    requests: Vec<Recorded>,
    violations: Vec<String>,
}

pub struct RecordingUpstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl RecordingUpstream {
    /// Listens on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let index = {
                    let mut log = shared.lock().unwrap();
                    log.raw.push(Vec::new());
                    log.raw.len() - 1
                };
                tokio::spawn(serve(stream, index, shared.clone()));
            }
        });
        Ok(Self { addr, log, task })
    }

    /// Every request read in full so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().requests.clone()
    }

    /// What the strict parser could not read one way only.
    pub fn violations(&self) -> Vec<String> {
        self.log.lock().unwrap().violations.clone()
    }

    /// All bytes received, per connection.
    pub fn raw(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().raw.clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, index: usize, log: Arc<Mutex<Log>>) {
    let mut buf = Vec::new();
    let mut read = [0u8; 16 * 1024];
    loop {
        match next_request(&buf) {
            Err(violation) => {
                let mut log = log.lock().unwrap();
                log.violations
                    .push(format!("{violation}: {:?}", String::from_utf8_lossy(&buf)));
                return;
            }
            Ok(Some((request, used))) => {
                buf.drain(..used);
                let close = request
                    .header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"));
                let body = {
                    let mut log = log.lock().unwrap();
                    log.requests.push(request);
                    format!("seen {}", log.requests.len())
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).await.is_err() || close {
                    return;
                }
            }
            Ok(None) => match stream.read(&mut read).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&read[..n]);
                    log.lock().unwrap().raw[index].extend_from_slice(&read[..n]);
                }
            },
        }
    }
}

/// The first request in `buf` and the bytes it takes; `None`: not all of it
/// is in yet; `Err`: not one reading only.
pub fn next_request(buf: &[u8]) -> Result<Option<(Recorded, usize)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("head over 64 KiB".into());
        }
        return Ok(None);
    };
    let head = &buf[..head_end];
    for (i, &b) in head.iter().enumerate() {
        let crlf = (b == b'\r' && head.get(i + 1) == Some(&b'\n'))
            || (b == b'\n' && i > 0 && head[i - 1] == b'\r');
        if (b == b'\r' || b == b'\n') && !crlf {
            return Err("bare CR or LF in the head".into());
        }
        if b == 0 || (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f {
            return Err(format!("control byte {b:#04x} in the head"));
        }
    }
    let head = std::str::from_utf8(head).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("request line {request_line:?}"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("method {method:?}"));
    }
    if !target.starts_with('/') {
        return Err(format!("target not in origin form: {target:?}"));
    }
    if version != "HTTP/1.1" {
        return Err(format!("version {version:?}"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err("obsolete line folding".into());
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("field without a colon: {line:?}"))?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!("field name {name:?}"));
        }
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    let named = |n: &str| {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let lengths = named("content-length");
    let codings = named("transfer-encoding");
    if named("host").len() != 1 {
        return Err("not exactly one Host".into());
    }
    let start = head_end + 4;
    let (body, used) = match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => (Vec::new(), start),
        ([length], []) => {
            if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) || length.len() > 18
            {
                return Err(format!("Content-Length {length:?}"));
            }
            let n: usize = length.parse().unwrap();
            if buf.len() < start + n {
                return Ok(None);
            }
            (buf[start..start + n].to_vec(), start + n)
        }
        ([], ["chunked"]) => match dechunk(&buf[start..])? {
            Some((body, len)) => (body, start + len),
            None => return Ok(None),
        },
        _ => return Err(format!("framing: lengths {lengths:?}, codings {codings:?}")),
    };
    Ok(Some((
        Recorded {
            method: method.into(),
            target: target.into(),
            version: version.into(),
            headers,
            body,
        },
        used,
    )))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A chunked body as a gateway should send one: plain lowercase or
/// uppercase hex sizes, no extensions, CRLF everywhere, no trailers.
fn dechunk(data: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find(&data[at..], b"\r\n") else {
            return Ok(None);
        };
        let size = &data[at..at + line_end];
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("chunk size {:?}", String::from_utf8_lossy(size)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size).unwrap(), 16).unwrap();
        at += line_end + 2;
        if size == 0 {
            return match data.get(at..at + 2) {
                None => Ok(None),
                Some(b"\r\n") => Ok(Some((body, at + 2))),
                Some(_) => Err("trailers or junk after the last chunk".into()),
            };
        }
        let Some(chunk) = data.get(at..at + size + 2) else {
            return Ok(None);
        };
        if !chunk.ends_with(b"\r\n") {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&chunk[..size]);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strict_reader_takes_one_reading_only() {
        let ok = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET";
        let (r, used) = next_request(ok).unwrap().unwrap();
        assert_eq!(
            (r.body.as_slice(), &ok[used..]),
            (&b"hello"[..], &b"GET"[..])
        );
        for bad in [
            &b"GET / HTTP/1.1\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\n x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(next_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
