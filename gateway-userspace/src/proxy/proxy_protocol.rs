//! The PROXY protocol (HAProxy, v1 text and v2 binary): a load balancer in
//! front of xgate sends the client's address as the first bytes of the
//! connection. Only the parser lives here; who is believed is the
//! listener's decision.
//!
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A v1 line is at most 107 bytes, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;
/// Largest v2 address block plus TLVs accepted. Real balancers send well
/// under 1 KiB (AWS NLB's VPC endpoint id, HAProxy's SSL and unique-id
/// TLVs); the bound keeps a peer from making us buffer 64 KiB.
const V2_MAX_PAYLOAD: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("PROXY protocol header longer than allowed")]
    TooLong,
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(String),
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client; `None` for v2 LOCAL (the balancer's own health
    /// check), v1 UNKNOWN and address families other than TCP over IP,
    /// where the TCP peer stands for itself.
    pub source: Option<SocketAddr>,
    /// Bytes the header took.
    pub len: usize,
}

/// Parses the start of a connection. `Ok(None)`: valid so far, more bytes
/// needed.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyHeaderError::Missing),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf[..seen] != V1_PREFIX[..seen] {
        return Err(ProxyHeaderError::Missing);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| ProxyHeaderError::Malformed("v1 header is not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    let source = match fields.first().copied() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let [_, src, dst, sport, dport] = fields[..] else {
                return Err(ProxyHeaderError::Malformed(
                    "v1 header needs source, destination and both ports",
                ));
            };
            let parse_ip = |text: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip = if family == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| ProxyHeaderError::Malformed("v1 address does not match its family"))
            };
            let parse_port = |text: &str| -> Result<u16, ProxyHeaderError> {
                // The spec forbids leading zeros and signs; u16 parsing
                // accepts "+1", so check the digits first.
                if text.is_empty()
                    || !text.bytes().all(|b| b.is_ascii_digit())
                    || (text.len() > 1 && text.starts_with('0'))
                {
                    return Err(ProxyHeaderError::Malformed("v1 port is not a number"));
                }
                text.parse()
                    .map_err(|_| ProxyHeaderError::Malformed("v1 port is out of range"))
            };
            let source = SocketAddr::new(parse_ip(src)?, parse_port(sport)?);
            parse_ip(dst)?;
            parse_port(dport)?;
            Some(source)
        }
        _ => {
            return Err(ProxyHeaderError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(Some(ProxyHeader { source, len }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..seen] != V2_SIGNATURE[..seen] {
        return Err(ProxyHeaderError::Missing);
    }
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => {
            return Err(ProxyHeaderError::Malformed(
                "v2 command is neither LOCAL nor PROXY",
            ))
        }
    };
    let family = buf[13];
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::TooLong);
    }
    let len = V2_FIXED + payload;
    if buf.len() < len {
        return Ok(None);
    }
    let block = &buf[V2_FIXED..len];
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    let source = match family {
        // TCP over IPv4: src 4, dst 4, src port 2, dst port 2.
        0x11 => {
            if block.len() < 12 {
                return Err(ProxyHeaderError::Malformed(
                    "v2 IPv4 address block too short",
                ));
            }
            let ip: [u8; 4] = block[0..4].try_into().expect("4 bytes");
            Some(SocketAddr::new(Ipv4Addr::from(ip).into(), port(8)))
        }
        // TCP over IPv6: src 16, dst 16, src port 2, dst port 2.
        0x21 => {
            if block.len() < 36 {
                return Err(ProxyHeaderError::Malformed(
                    "v2 IPv6 address block too short",
                ));
            }
            let ip: [u8; 16] = block[0..16].try_into().expect("16 bytes");
            Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port(32)))
        }
        // UNSPEC, or Unix sockets: nothing to believe about an IP client.
        0x00 | 0x31 | 0x32 => None,
        _ if local => None,
        _ => {
            return Err(ProxyHeaderError::Malformed(
                "v2 family is not TCP over IPv4/IPv6",
            ))
        }
    };
    Ok(Some(ProxyHeader {
        source: if local { None } else { source },
        len,
    }))
}

/// Reads a complete header from `stream`. Returns it with the bytes read past
/// it (the start of the TLS or HTTP traffic), which the caller must replay.
/// The caller bounds the time this may take.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(ProxyHeader, Bytes), ProxyHeaderError> {
    let mut buf = BytesMut::with_capacity(512);
    loop {
        if let Some(header) = parse(&buf)? {
            let rest = buf.split_off(header.len).freeze();
            return Ok((header, rest));
        }
        buf.reserve(512);
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| ProxyHeaderError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let header = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let parsed = parse(header).unwrap().unwrap();
        assert_eq!(parsed.source, Some("203.0.113.7:56324".parse().unwrap()));
        assert_eq!(&header[parsed.len..parsed.len + 3], b"GET");

        let header = b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n";
        let parsed = parse(header).unwrap().unwrap();
        assert_eq!(parsed.source, Some("[2001:db8::7]:4711".parse().unwrap()));
        assert_eq!(parsed.len, header.len());
    }

    #[test]
    fn v1_unknown_means_the_peer() {
        let parsed = parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(parsed.source, None);
    }

    #[test]
    fn v1_needs_more_bytes_until_crlf() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7 "), Ok(None));
    }

    #[test]
    fn v1_rejects_garbage() {
        let bad: [&[u8]; 7] = [
            b"GET / HTTP/1.1\r\n",
            b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ];
        for header in bad {
            assert!(
                parse(header).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(header)
            );
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(200));
        assert_eq!(parse(long.as_bytes()), Err(ProxyHeaderError::TooLong));
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6_with_tlvs() {
        let mut block = vec![203, 0, 113, 7, 192, 0, 2, 1];
        block.extend_from_slice(&56324u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']); // a TLV
        let mut header = v2(1, 0x11, &block);
        header.extend_from_slice(b"GET");
        let parsed = parse(&header).unwrap().unwrap();
        assert_eq!(parsed.source, Some("203.0.113.7:56324".parse().unwrap()));
        assert_eq!(&header[parsed.len..], b"GET");

        let mut block = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&4711u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        let parsed = parse(&v2(1, 0x21, &block)).unwrap().unwrap();
        assert_eq!(parsed.source, Some("[2001:db8::7]:4711".parse().unwrap()));
    }

    #[test]
    fn v2_local_and_unspec_mean_the_peer() {
        let parsed = parse(&v2(0, 0x00, &[])).unwrap().unwrap();
        assert_eq!(
            parsed,
            ProxyHeader {
                source: None,
                len: 16
            }
        );
        let parsed = parse(&v2(0, 0x11, &[0; 12])).unwrap().unwrap();
        assert_eq!(parsed.source, None, "LOCAL ignores the addresses");
    }

    #[test]
    fn v2_incomplete_and_malformed() {
        let full = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).is_err(), "short block");
        assert!(parse(&v2(2, 0x11, &[0; 12])).is_err(), "bad command");
        assert!(parse(&v2(1, 0x12, &[0; 12])).is_err(), "UDP");
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(parse(&wrong_version).is_err());
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(ProxyHeaderError::TooLong));
        assert_eq!(
            parse(b"\r\n\r\nX"),
            Err(ProxyHeaderError::Missing),
            "not the v2 signature"
        );
    }

    #[tokio::test]
    async fn read_header_returns_what_follows() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // Split across writes: the reader must keep going.
            client.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
            client
                .write_all(b"192.0.2.1 1 2\r\nGET / HTTP/1.1\r\n")
                .await
                .unwrap();
        });
        let (header, rest) = read_header(&mut server).await.unwrap();
        writer.await.unwrap();
        assert_eq!(header.source, Some("203.0.113.7:1".parse().unwrap()));
        assert!(b"GET / HTTP/1.1\r\n".starts_with(&rest), "{rest:?}");

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(
            read_header(&mut server).await,
            Err(ProxyHeaderError::Closed)
        );
    }
}
