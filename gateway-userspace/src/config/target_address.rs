//! An upstream target's address as written in the file: `IP:port`, or
//! `host:port` for a DNS name that is resolved at run time (every address
//! it returns becomes a target; see `upstream::resolve`).

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetAddress {
    Ip(SocketAddr),
    /// A DNS name (or an /etc/hosts name) and the port its addresses serve on.
    Name {
        host: String,
        port: u16,
    },
}

impl TargetAddress {
    pub fn port(&self) -> u16 {
        match self {
            TargetAddress::Ip(address) => address.port(),
            TargetAddress::Name { port, .. } => *port,
        }
    }

    /// The address, when it is one already.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            TargetAddress::Ip(address) => Some(*address),
            TargetAddress::Name { .. } => None,
        }
    }
}

impl FromStr for TargetAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(address) = text.parse() {
            return Ok(TargetAddress::Ip(address));
        }
        let not_an_address =
            || format!("'{text}' is neither IP:port nor host:port (IPv6: [addr]:port)");
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            if is_dns_name(text) {
                format!("'{text}' has no port; write {text}:PORT")
            } else {
                not_an_address()
            }
        })?;
        if !is_dns_name(host) {
            return Err(not_an_address());
        }
        let port = port
            .parse()
            .map_err(|_| format!("'{text}': '{port}' is not a port number"))?;
        Ok(TargetAddress::Name {
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port,
        })
    }
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63 bytes, at
/// most 253 bytes in all (RFC 1123); not all digits (that is a mistyped
/// IPv4 address, not a name).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl fmt::Display for TargetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddress::Ip(address) => address.fmt(f),
            TargetAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl<'de> Deserialize<'de> for TargetAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for TargetAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse_and_mistakes_say_why() {
        assert_eq!(
            "127.0.0.1:80".parse::<TargetAddress>().unwrap(),
            TargetAddress::Ip("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "[::1]:80".parse::<TargetAddress>().unwrap(),
            TargetAddress::Ip("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            "Users.internal.:8080".parse::<TargetAddress>().unwrap(),
            TargetAddress::Name {
                host: "users.internal".into(),
                port: 8080
            }
        );
        assert_eq!(
            "localhost:29001"
                .parse::<TargetAddress>()
                .unwrap()
                .to_string(),
            "localhost:29001"
        );
        for (text, error) in [
            ("localhost", "'localhost' has no port; write localhost:PORT"),
            (
                "localhost:http",
                "'localhost:http': 'http' is not a port number",
            ),
            (
                "localhost:70000",
                "'localhost:70000': '70000' is not a port number",
            ),
            (
                "10.0.0.300:80",
                "'10.0.0.300:80' is neither IP:port nor host:port",
            ),
            ("::1:80", "'::1:80' is neither IP:port nor host:port"),
            (
                "bad name:80",
                "'bad name:80' is neither IP:port nor host:port",
            ),
            (
                "-x.example:80",
                "'-x.example:80' is neither IP:port nor host:port",
            ),
        ] {
            let message = text.parse::<TargetAddress>().unwrap_err();
            assert!(message.starts_with(error), "{text}: {message}");
        }
    }
}
