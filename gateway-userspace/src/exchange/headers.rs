//! Header rewriting between client and upstream: hop-by-hop removal
//! (RFC 9110 §7.6.1), who the client is (trusted proxies only), and the
//! headers that tell the upstream: X-Forwarded-For/Proto/Host, Forwarded
//! (RFC 7239) and X-Request-Id.

use std::{net::IpAddr, sync::Mutex};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::http1::wire::lists_token;

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
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const FORWARDED: HeaderName = header::FORWARDED;
/// Not set by xgate, but read by many upstreams as the client's address
/// (nginx's realip module, for one), so it is the proxy's to say too.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes hop-by-hop headers from a request on its way to a target,
/// except that `TE: trailers` goes on when the client sent it (as Envoy
/// does): xgate passes trailers back, and gRPC servers expect it.
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap) {
    if !any_hop_by_hop(headers) {
        return;
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| lists_token(v.as_bytes(), b"trailers"));
    remove_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes hop-by-hop headers, including any the Connection header names.
/// Transfer-Encoding is left to hyper, which re-frames the body itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if any_hop_by_hop(headers) {
        remove_hop_by_hop(headers);
    }
}

/// The usual case, checked in one pass over the names: nothing to strip
/// (names listed in Connection matter only when Connection is there).
fn any_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| HOP_BY_HOP.contains(name))
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
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

pub fn is_trusted(ip: IpAddr, trusted_proxies: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted_proxies.iter().any(|n| n.contains(&ip))
}

/// The client's address. From an untrusted peer: the peer. From a trusted
/// proxy: X-Forwarded-For read right to left, skipping trusted proxies; the
/// first address that is not one is the client (the leftmost entries are
/// whatever the client claimed and are never believed past that point).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted_proxies) {
        return canonical(peer);
    }
    let mut client = canonical(peer);
    let hops: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage in the chain: stop at the last address we could trust.
            break;
        };
        client = ip;
        if !is_trusted(ip, trusted_proxies) {
            break;
        }
    }
    client
}

/// `203.0.113.7`, `[2001:db8::1]`, `203.0.113.7:4711`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
        .map(canonical)
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, from dual-stack sockets) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// What the proxy tells the upstream about one connection's client side,
/// formatted once per connection.
#[derive(Debug)]
pub struct Forwarding {
    /// The TCP peer (or PROXY protocol source), canonical: the hop this
    /// proxy adds to X-Forwarded-For.
    peer: HeaderValue,
    /// `for=<peer>;proto=<scheme>`: this hop's Forwarded element, before
    /// the request's host.
    element: String,
    scheme: &'static str,
    /// The last Forwarded value made without a prior one, and the Host it
    /// was made for: a connection's requests usually share their Host, so
    /// it is made once, not per request.
    last: Mutex<Option<(HeaderValue, HeaderValue)>>,
}

impl Forwarding {
    pub fn new(peer: IpAddr, scheme: &'static str) -> Self {
        let peer = canonical(peer);
        let text = peer.to_string();
        let node = match peer {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        Self {
            peer: HeaderValue::from_str(&text).expect("addresses are ASCII"),
            element: format!("for={node};proto={scheme}"),
            scheme,
            last: Mutex::new(None),
        }
    }

    /// `http` or `https`: how the client reached this listener.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Sets X-Forwarded-For/Proto/Host, Forwarded and X-Request-Id in
    /// `headers` (see [`Forwarding::fields`]).
    #[cfg(test)]
    pub fn apply(&self, headers: &mut HeaderMap, peer_trusted: bool, request_id: &HeaderValue) {
        self.fields(headers, peer_trusted, request_id)
            .insert_into(headers);
    }

    /// X-Forwarded-For/Proto/Host, Forwarded and X-Request-Id for the
    /// request with `headers`. A trusted proxy's values are kept (and the
    /// chains extended); anyone else's are replaced, so a client cannot
    /// forge its address. The request's own copies of what is returned are
    /// taken out of `headers`; the returned fields go on the upstream
    /// request after its headers.
    pub fn fields(
        &self,
        headers: &mut HeaderMap,
        peer_trusted: bool,
        request_id: &HeaderValue,
    ) -> ForwardFields {
        let host = headers.get(header::HOST).cloned();
        // The usual case, checked in one pass over the names: the client
        // sent none of them, so there is nothing to keep, extend or remove.
        let present = headers.keys().any(|name| FIELD_NAMES.contains(name));
        let mut fields = ForwardFields::default();

        let prior_xff = joined(headers, &X_FORWARDED_FOR, present && peer_trusted);
        fields.0[XFF] = Some(match prior_xff {
            Some(prior) => {
                let peer = self.peer.to_str().expect("addresses are ASCII");
                value(format!("{prior}, {peer}")).expect("both are visible ASCII")
            }
            None => self.peer.clone(),
        });

        let keep_proto = present && peer_trusted && headers.contains_key(&X_FORWARDED_PROTO);
        if !keep_proto {
            fields.0[XFP] = Some(HeaderValue::from_static(self.scheme));
        }
        let keep_host = present && peer_trusted && headers.contains_key(&X_FORWARDED_HOST);
        if !keep_host {
            fields.0[XFH] = host.clone();
        }

        let prior = joined(headers, &FORWARDED, present && peer_trusted);
        fields.0[FWD] = match (&prior, &host) {
            (None, Some(host)) => Some(self.forwarded_for(host)),
            _ => self.forwarded(prior.as_deref(), host.as_ref()),
        };
        fields.0[RID] = Some(request_id.clone());

        if present {
            for (index, name) in FIELD_NAMES.iter().enumerate() {
                let kept = (index == XFP && keep_proto) || (index == XFH && keep_host);
                if !kept {
                    headers.remove(name);
                }
            }
        }
        fields
    }

    /// The Forwarded value for a request to `host` that brought none: the
    /// last one made when the Host is the same.
    fn forwarded_for(&self, host: &HeaderValue) -> HeaderValue {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, value)) = last.as_ref() {
            if seen == host {
                return value.clone();
            }
        }
        let value = self
            .forwarded(None, Some(host))
            .expect("made of visible ASCII");
        *last = Some((host.clone(), value.clone()));
        value
    }

    /// `prior, for=...;proto=...;host="..."` (the host only when it can be
    /// quoted as it is).
    fn forwarded(&self, prior: Option<&str>, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        let host = host.and_then(|h| h.to_str().ok()).filter(|host| {
            host.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
        let mut forwarded = String::with_capacity(
            prior.map_or(0, |p| p.len() + ", ".len())
                + self.element.len()
                + host.map_or(0, |h| ";host=\"\"".len() + h.len()),
        );
        if let Some(prior) = prior {
            forwarded.push_str(prior);
            forwarded.push_str(", ");
        }
        forwarded.push_str(&self.element);
        if let Some(host) = host {
            forwarded.push_str(";host=\"");
            forwarded.push_str(host);
            forwarded.push('"');
        }
        value(forwarded)
    }
}

/// The forwarding headers of one request, from [`Forwarding::fields`]. The
/// HTTP/1.1 client writes them straight after the request's own headers
/// (no insertions into the header map, which would grow it); the HTTP/2
/// client puts them into the map.
#[derive(Debug, Default)]
pub struct ForwardFields([Option<HeaderValue>; 5]);

static FIELD_NAMES: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    FORWARDED,
    X_REQUEST_ID,
];
/// Whether `name` says who the client is or which request this is: the
/// fields the proxy sets (a client's own copies are replaced), and
/// X-Real-IP. Such a field is never taken from a trailer section, which
/// would carry it past the head's replaced copies.
pub fn proxy_owned(name: &HeaderName) -> bool {
    FIELD_NAMES.contains(name) || *name == X_REAL_IP
}

const XFF: usize = 0;
const XFP: usize = 1;
const XFH: usize = 2;
const FWD: usize = 3;
const RID: usize = 4;

impl ForwardFields {
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        FIELD_NAMES
            .iter()
            .zip(&self.0)
            .filter_map(|(name, value)| Some((name, value.as_ref()?)))
    }

    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// `text` as a header value without copying it.
fn value(text: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

/// All values of `name` joined by ", ", only when the peer is trusted.
fn joined(headers: &HeaderMap, name: &HeaderName, peer_trusted: bool) -> Option<String> {
    if !peer_trusted {
        return None;
    }
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .collect();
    let joined = values.join(", ");
    (!joined.is_empty()).then_some(joined)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A trusted proxy's X-Request-Id (if sane), else a new random 128-bit id
/// in hex.
pub fn request_id(headers: &HeaderMap, peer_trusted: bool) -> HeaderValue {
    if peer_trusted {
        if let Some(id) = headers.get(&X_REQUEST_ID) {
            let bytes = id.as_bytes();
            if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic) {
                return id.clone();
            }
        }
    }
    let random = fastrand::u128(..);
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = HEX[((random >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Owned by one shared allocation: the id is cloned into the upstream
    // request, the response and the access log without copies.
    HeaderValue::from_maybe_shared(Bytes::from_owner(hex))
        .expect("hex digits are a valid header value")
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

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
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
    fn a_request_keeps_te_trailers_only() {
        let mut h = map(&[
            ("connection", "te"),
            ("te", "gzip;q=0.5, Trailers"),
            ("x-kept", "yes"),
        ]);
        strip_request_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip"), ("x-kept", "yes")]);
        strip_request_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn trusted_proxies_match_ipv4_mapped_peers() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert!(is_trusted("10.1.2.3".parse().unwrap(), &trusted));
        assert!(is_trusted("::ffff:10.1.2.3".parse().unwrap(), &trusted));
        assert!(!is_trusted("192.0.2.1".parse().unwrap(), &trusted));
    }

    #[test]
    fn client_ip_walks_trusted_hops_right_to_left() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = map(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the spoofed 6.6.6.6 is never reached"
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip("198.51.100.1".parse().unwrap(), &h, &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // Ports and brackets are accepted; garbage stops the walk.
        let h = map(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let h = map(&[("x-forwarded-for", "unknown, 10.2.2.2")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
        // Only trusted hops: the leftmost is the client.
        let h = map(&[("x-forwarded-for", "10.3.3.3, 10.2.2.2")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "10.3.3.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn untrusted_peer_cannot_forge_forwarding_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4"),
            ("x-request-id", "forged"),
            ("host", "example.test"),
        ]);
        let id = request_id(&h, false);
        assert_ne!(id, "forged");
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(id, request_id(&h, false), "a new id per request");
        Forwarding::new("198.51.100.7".parse().unwrap(), "http").apply(&mut h, false, &id);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.test");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.7;proto=http;host=\"example.test\""
        );
        assert_eq!(h["x-request-id"], id);
    }

    #[test]
    fn trusted_peer_extends_the_chains() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-request-id", "abc-123"),
        ]);
        let id = request_id(&h, true);
        assert_eq!(id, "abc-123");
        Forwarding::new("2001:db8::1".parse().unwrap(), "http").apply(&mut h, true, &id);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=1.2.3.4;proto=https, for=\"[2001:db8::1]\";proto=http"
        );
    }

    #[test]
    fn forwarded_follows_each_requests_host_on_one_connection() {
        let forwarding = Forwarding::new("198.51.100.7".parse().unwrap(), "https");
        let id = HeaderValue::from_static("id");
        let forwarded = |host: Option<&str>, prior: Option<&str>| {
            let mut pairs = Vec::new();
            pairs.extend(host.map(|h| ("host", h)));
            pairs.extend(prior.map(|p| ("forwarded", p)));
            let mut h = map(&pairs);
            forwarding.apply(&mut h, true, &id);
            h["forwarded"].to_str().unwrap().to_owned()
        };
        let a = "for=198.51.100.7;proto=https;host=\"a.test\"";
        assert_eq!(forwarded(Some("a.test"), None), a);
        assert_eq!(forwarded(Some("a.test"), None), a, "made again: the same");
        assert_eq!(
            forwarded(Some("b.test"), None),
            "for=198.51.100.7;proto=https;host=\"b.test\""
        );
        assert_eq!(forwarded(Some("a.test"), None), a, "back to the first");
        assert_eq!(
            forwarded(Some("a.test"), Some("for=1.2.3.4")),
            format!("for=1.2.3.4, {a}"),
            "a trusted proxy's chain is extended, not replaced by the last one"
        );
        assert_eq!(forwarded(None, None), "for=198.51.100.7;proto=https");
    }
}
