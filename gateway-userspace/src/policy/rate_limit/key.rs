//! What a rate limit or throttle counts separately: the parts of its `key`
//! (`consumer`, `ip`, `header:x-tenant`, ...) read from one request, as a
//! hash (counters in this process) or as bytes (counters in Redis, the
//! same on every gateway).

use std::hash::{BuildHasher, Hash, Hasher};

use http::{request::Parts, HeaderName};

use crate::policy::Caller;

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The consumer's username; the client IP when there is none.
    Consumer,
    /// The credential's identifier (`X-Credential-Identifier`); the client
    /// IP when there is none.
    Credential,
    /// The client's address (the one a trusted proxy reports).
    Ip,
    /// A request header's value; the client IP when it is absent (so a
    /// client cannot escape a limit by leaving the header out).
    Header(HeaderName),
    /// The normalized request path.
    Path,
    /// The route's name.
    Route,
}

impl KeyPart {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "consumer" => Self::Consumer,
            "credential" => Self::Credential,
            "ip" => Self::Ip,
            "path" => Self::Path,
            "route" => Self::Route,
            _ => match text.strip_prefix("header:") {
                Some(name) => Self::Header(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("'{text}' is not a valid header name"))?,
                ),
                None => {
                    return Err(format!(
                        "'{text}' is not a key part: use consumer, credential, ip, \
                         header:<name>, path or route"
                    ))
                }
            },
        })
    }

    /// Feeds this part's value to `out`: a tag (so that a consumer named
    /// like an address is not that address) and the bytes.
    fn write(&self, parts: &Parts, caller: &Caller<'_>, out: &mut impl Sink) {
        let identity = caller.identity;
        let value: Option<&[u8]> = match self {
            Self::Consumer => identity
                .and_then(|i| i.consumer.as_deref())
                .map(|c| c.username.as_bytes()),
            Self::Credential => identity
                .and_then(|i| i.credential.as_ref())
                .map(|c| c.as_bytes()),
            Self::Header(name) => parts.headers.get(name).map(|v| v.as_bytes()),
            Self::Path => Some(parts.uri.path().as_bytes()),
            Self::Route => Some(caller.route.as_bytes()),
            Self::Ip => None,
        };
        match value {
            Some(value) => {
                out.part(self.tag(), value);
            }
            None => out.ip(caller.client_ip),
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Self::Consumer => b'c',
            Self::Credential => b'k',
            Self::Ip => b'i',
            Self::Header(_) => b'h',
            Self::Path => b'p',
            Self::Route => b'r',
        }
    }
}

/// Where a key's parts go.
trait Sink {
    fn part(&mut self, tag: u8, value: &[u8]);
    fn ip(&mut self, ip: std::net::IpAddr);
}

struct HashSink<H>(H);

impl<H: Hasher> Sink for HashSink<H> {
    fn part(&mut self, tag: u8, value: &[u8]) {
        self.0.write_u8(tag);
        // Length first: `ab`+`c` and `a`+`bc` differ.
        value.len().hash(&mut self.0);
        self.0.write(value);
    }

    fn ip(&mut self, ip: std::net::IpAddr) {
        match ip {
            std::net::IpAddr::V4(ip) => self.part(b'i', &ip.octets()),
            std::net::IpAddr::V6(ip) => self.part(b'i', &ip.octets()),
        }
    }
}

impl Sink for Vec<u8> {
    fn part(&mut self, tag: u8, value: &[u8]) {
        use std::io::Write;
        let _ = write!(self, "{}{}:", tag as char, value.len());
        self.extend_from_slice(value);
    }

    fn ip(&mut self, ip: std::net::IpAddr) {
        // As text: readable in Redis, and one address has one form.
        self.part(b'i', ip.to_string().as_bytes());
    }
}

/// A policy's key.
#[derive(Debug, Clone)]
pub struct KeySpec {
    parts: Vec<KeyPart>,
    /// Seeded per process: keys from the outside cannot be made to collide.
    hasher: foldhash::fast::RandomState,
}

impl KeySpec {
    /// From validated config.
    pub fn new(parts: &[String]) -> Self {
        Self {
            parts: parts
                .iter()
                .map(|p| KeyPart::parse(p).expect("validated key part"))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The key as a 64-bit hash (for counters in this process; with a
    /// random seed, a collision of two of a million keys has a chance of
    /// about 1 in 10^7 and cannot be provoked).
    pub fn hash(&self, parts: &Parts, caller: &Caller<'_>) -> u64 {
        let mut sink = HashSink(self.hasher.build_hasher());
        for part in &self.parts {
            part.write(parts, caller, &mut sink);
        }
        sink.0.finish()
    }

    /// The key as bytes appended to `out` (for counters in Redis): the same
    /// on every gateway. Each part is `<tag><length>:<value>`.
    pub fn bytes(&self, parts: &Parts, caller: &Caller<'_>, out: &mut Vec<u8>) {
        for part in &self.parts {
            part.write(parts, caller, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller<'a>(
        conn: &'a crate::exchange::ConnInfo,
        ip: &str,
        identity: Option<&'a crate::policy::Identity>,
    ) -> Caller<'a> {
        Caller {
            client_ip: ip.parse().unwrap(),
            identity,
            route: "r",
            conn,
        }
    }

    #[test]
    fn parts_parse_and_compound_keys_separate_callers() {
        assert_eq!(KeyPart::parse("ip"), Ok(KeyPart::Ip));
        assert!(matches!(
            KeyPart::parse("header:X-Tenant"),
            Ok(KeyPart::Header(h)) if h == "x-tenant"
        ));
        assert!(KeyPart::parse("header:").is_err());
        assert!(KeyPart::parse("cookie").is_err());

        let addr: std::net::SocketAddr = "192.0.2.1:1".parse().unwrap();
        let conn = crate::exchange::ConnInfo::new(addr, addr, "http", None);
        let spec = KeySpec::new(&["header:x-tenant".into(), "ip".into()]);
        let request = |tenant: Option<&str>| {
            let mut builder = http::Request::builder().uri("/a");
            if let Some(t) = tenant {
                builder = builder.header("x-tenant", t);
            }
            builder.body(()).unwrap().into_parts().0
        };
        let a = request(Some("a"));
        let b = request(Some("b"));
        let none = request(None);
        let one = caller(&conn, "192.0.2.1", None);
        let two = caller(&conn, "192.0.2.2", None);
        assert_eq!(spec.hash(&a, &one), spec.hash(&a, &one));
        assert_ne!(spec.hash(&a, &one), spec.hash(&b, &one));
        assert_ne!(spec.hash(&a, &one), spec.hash(&a, &two));
        assert_ne!(spec.hash(&none, &one), spec.hash(&none, &two));
        let mut bytes = Vec::new();
        spec.bytes(&a, &one, &mut bytes);
        assert_eq!(bytes, b"h1:ai9:192.0.2.1");
        // A missing header counts by address: never one shared bucket.
        bytes.clear();
        spec.bytes(&none, &one, &mut bytes);
        assert_eq!(bytes, b"i9:192.0.2.1i9:192.0.2.1");
    }

    #[test]
    fn consumer_and_credential_keys_fall_back_to_the_address() {
        let config = crate::config::Config::from_yaml(
            "listeners: [{address: '127.0.0.1:1'}]\nconsumers: [{username: alice}, {username: bob}]\n",
            "t",
        )
        .unwrap();
        let consumers = crate::policy::Consumers::compile(&config.consumers).unwrap();
        let identity = |name: &str, credential: Option<&'static str>| crate::policy::Identity {
            consumer: consumers.by_username(name).cloned(),
            credential: credential.map(http::HeaderValue::from_static),
            anonymous: false,
        };
        let (alice, bob) = (
            identity("alice", Some("alice:keys[0]")),
            identity("bob", None),
        );
        let addr: std::net::SocketAddr = "192.0.2.1:1".parse().unwrap();
        let conn = crate::exchange::ConnInfo::new(addr, addr, "http", None);
        let parts = http::Request::new(()).into_parts().0;
        let bytes = |spec: &KeySpec, caller: &Caller<'_>| {
            let mut out = Vec::new();
            spec.bytes(&parts, caller, &mut out);
            String::from_utf8(out).unwrap()
        };
        let by_consumer = KeySpec::new(&["consumer".into(), "route".into()]);
        let by_credential = KeySpec::new(&["credential".into()]);
        // Alice from two addresses is one key; nobody is counted by address.
        let a1 = caller(&conn, "192.0.2.1", Some(&alice));
        let a2 = caller(&conn, "192.0.2.2", Some(&alice));
        assert_eq!(by_consumer.hash(&parts, &a1), by_consumer.hash(&parts, &a2));
        assert_eq!(bytes(&by_consumer, &a1), "c5:alicer1:r");
        assert_eq!(bytes(&by_credential, &a1), "k13:alice:keys[0]");
        let b = caller(&conn, "192.0.2.3", Some(&bob));
        assert_eq!(
            bytes(&by_credential, &b),
            "i9:192.0.2.3",
            "bob has no credential"
        );
        let nobody = caller(&conn, "192.0.2.4", None);
        assert_eq!(bytes(&by_consumer, &nobody), "i9:192.0.2.4r1:r");
    }
}
