//! Header rewriting between client and upstream: hop-by-hop removal
//! (RFC 9110 §7.6.1) and the X-Forwarded-* family.

use std::net::IpAddr;

use http::{header, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers that describe one connection, never the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including any the Connection header names.
/// Transfer-Encoding is left to hyper, which re-frames the body itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// What the proxy knows about the client side of a request.
pub struct Forwarded<'a> {
    pub peer: IpAddr,
    pub scheme: &'static str,
    pub trusted_proxies: &'a [IpNet],
}

impl Forwarded<'_> {
    fn peer_trusted(&self) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&self.peer))
    }

    /// Sets X-Forwarded-For/Proto/Host. A trusted proxy's values are kept
    /// (and XFF extended); anyone else's are replaced, so a client cannot
    /// forge its address to the upstream.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let trusted = self.peer_trusted();
        let peer = self.peer.to_string();
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) if trusted && !prior.trim().is_empty() => format!("{prior}, {peer}"),
            _ => peer,
        };
        headers.remove(&X_FORWARDED_FOR);
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_str(&xff).expect("ASCII addresses"),
        );
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            match headers.get(header::HOST).cloned() {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST, host);
                }
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn untrusted_peer_cannot_forge_forwarded_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("host", "example.test"),
        ]);
        Forwarded {
            peer: "198.51.100.7".parse().unwrap(),
            scheme: "http",
            trusted_proxies: &[],
        }
        .apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.test");
    }

    #[test]
    fn trusted_peer_extends_the_chain() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        Forwarded {
            peer: "10.1.2.3".parse().unwrap(),
            scheme: "http",
            trusted_proxies: &trusted,
        }
        .apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
