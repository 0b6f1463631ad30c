//! CIDRs as the config file, the CLI and the admin API accept them: a prefix
//! or a bare address, errors that name the value and the rule broken, and
//! IPv4-mapped IPv6 prefixes (`::ffff:10.0.0.0/104`) stored as the IPv4
//! prefix they mean, because IPv4 clients are always matched as IPv4 (in
//! XDP and at L7) and a mapped entry could never match anyone.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer};

/// Bits of the `::ffff:0:0/96` prefix in front of a mapped IPv4 address.
const MAPPED_PREFIX_BITS: u8 = 96;

/// A CIDR or a bare address (a single host). Errors say exactly which part
/// is wrong. IPv4-mapped IPv6 prefixes come back as IPv4 (see
/// [`ipv4_mapped_note`] for telling the user).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!("invalid CIDR '{text}': '{addr}' is not an IPv4 or IPv6 address (examples: 203.0.113.0/24, 2001:db8::/32, 198.51.100.7)")
    })?;
    let (max, family) = if ip.is_ipv4() {
        (32, "IPv4")
    } else {
        (128, "IPv6")
    };
    let prefix_len = match len {
        None => max,
        Some(len) => {
            let parsed: u8 = len.parse().map_err(|_| {
                format!(
                    "invalid CIDR '{text}': prefix length '{len}' is not a number from 0 to {max}"
                )
            })?;
            if parsed > max {
                return Err(format!(
                    "invalid CIDR '{text}': prefix length {parsed} is more than {max} for {family}"
                ));
            }
            parsed
        }
    };
    let net = IpNet::new(ip, prefix_len).expect("prefix length checked");
    Ok(unmap_ipv4(net).unwrap_or(net))
}

/// The IPv4 prefix an IPv4-mapped IPv6 prefix stands for:
/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`. `None` for anything else
/// (including prefixes shorter than /96, which cover more than the mapped
/// range).
pub fn unmap_ipv4(net: IpNet) -> Option<IpNet> {
    let IpNet::V6(v6) = net else { return None };
    if v6.prefix_len() < MAPPED_PREFIX_BITS {
        return None;
    }
    let v4 = v6.addr().to_ipv4_mapped()?;
    Ipv4Net::new(v4, v6.prefix_len() - MAPPED_PREFIX_BITS)
        .ok()
        .map(IpNet::V4)
}

/// What to tell the user when `text` was an IPv4-mapped form that
/// [`parse_cidr`] turned into IPv4.
pub fn ipv4_mapped_note(text: &str) -> Option<String> {
    let text = text.trim();
    let (addr, len) = text.split_once('/').unwrap_or((text, "128"));
    let net = IpNet::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    let v4 = unmap_ipv4(net)?;
    Some(format!(
        "{text} is an IPv4-mapped IPv6 address; IPv4 clients are matched as IPv4, so it is stored as {v4}"
    ))
}

/// The config file's IPv4-mapped CIDRs, each with its path and what it is
/// stored as: `xgate validate` prints them, so that the file's author
/// learns what the entry means.
pub fn ipv4_mapped_notes(text: &str) -> Vec<super::ConfigError> {
    // Parsing a large file again costs; most files have no mapped address.
    if !text.to_ascii_lowercase().contains("::ffff:") {
        return Vec::new();
    }
    let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Vec::new();
    };
    let mut lists: Vec<(String, &serde_yaml::Value)> = Vec::new();
    for (path, keys) in [
        ("trusted_proxies", &["trusted_proxies"][..]),
        ("xdp.deny", &["xdp", "deny"][..]),
        ("xdp.allow", &["xdp", "allow"][..]),
    ] {
        if let Some(list) = keys.iter().try_fold(&value, |v, k| v.get(k)) {
            lists.push((path.to_string(), list));
        }
    }
    let overrides = value
        .get("xdp")
        .and_then(|x| x.get("rate_limit"))
        .and_then(|r| r.get("overrides"));
    let mut notes = Vec::new();
    let mut check = |path: String, item: &serde_yaml::Value| {
        if let Some(note) = item.as_str().and_then(ipv4_mapped_note) {
            notes.push(super::ConfigError::new(path, note));
        }
    };
    for (path, list) in lists {
        for (i, item) in list.as_sequence().into_iter().flatten().enumerate() {
            check(format!("{path}[{i}]"), item);
        }
    }
    for (i, item) in overrides
        .and_then(|o| o.as_sequence())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(cidr) = item.get("cidr") {
            check(format!("xdp.rate_limit.overrides[{i}].cidr"), cidr);
        }
    }
    notes
}

/// Whether `net` covers a whole address family (`0.0.0.0/0`, `::/0`).
pub fn is_everything(net: &IpNet) -> bool {
    net.prefix_len() == 0
}

/// `deserialize_with` for one CIDR.
pub fn deserialize_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_cidr(&text).map_err(serde::de::Error::custom)
}

/// `deserialize_with` for a list of CIDRs: the first bad one fails with its
/// index in the path.
pub fn deserialize_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    #[derive(Deserialize)]
    struct One(#[serde(deserialize_with = "deserialize_one")] IpNet);
    let list = Vec::<One>::deserialize(deserializer)?;
    Ok(list.into_iter().map(|one| one.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn errors_name_the_value_and_the_rule() {
        assert_eq!(parse_cidr("203.0.113.0/24"), Ok(net("203.0.113.0/24")));
        assert_eq!(parse_cidr("198.51.100.7"), Ok(net("198.51.100.7/32")));
        let e = parse_cidr("300.1.2.3/33").unwrap_err();
        assert!(
            e.contains("'300.1.2.3' is not an IPv4 or IPv6 address"),
            "{e}"
        );
        assert_eq!(
            parse_cidr("10.0.0.0/33").unwrap_err(),
            "invalid CIDR '10.0.0.0/33': prefix length 33 is more than 32 for IPv4"
        );
        assert_eq!(
            parse_cidr("2001:db8::/129").unwrap_err(),
            "invalid CIDR '2001:db8::/129': prefix length 129 is more than 128 for IPv6"
        );
        let e = parse_cidr("10.0.0.0/x").unwrap_err();
        assert!(e.contains("prefix length 'x' is not a number"), "{e}");
    }

    #[test]
    fn ipv4_mapped_prefixes_become_ipv4() {
        assert_eq!(parse_cidr("::ffff:127.0.0.5"), Ok(net("127.0.0.5/32")));
        assert_eq!(parse_cidr("::ffff:10.0.0.0/104"), Ok(net("10.0.0.0/8")));
        assert_eq!(parse_cidr("::ffff:0.0.0.0/96"), Ok(net("0.0.0.0/0")));
        // Shorter than /96 covers more than the mapped range: kept as IPv6.
        assert_eq!(parse_cidr("::ffff:0:0/80"), Ok(net("::ffff:0:0/80")));
        assert_eq!(parse_cidr("2001:db8::1"), Ok(net("2001:db8::1/128")));
        let note = ipv4_mapped_note("::ffff:127.0.0.5").unwrap();
        assert!(note.contains("stored as 127.0.0.5/32"), "{note}");
        assert!(ipv4_mapped_note("127.0.0.5").is_none());
        assert!(ipv4_mapped_note("2001:db8::/32").is_none());
    }

    #[test]
    fn the_config_files_mapped_entries_are_noted() {
        let notes = ipv4_mapped_notes(
            "trusted_proxies: ['::ffff:10.0.0.1']\nxdp:\n  deny: [10.0.0.0/8, '::ffff:192.0.2.0/120']\n  rate_limit: {rate: 1, overrides: [{cidr: '::ffff:198.51.100.0/120', rate: 2}]}\n",
        );
        let paths: Vec<&str> = notes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "trusted_proxies[0]",
                "xdp.deny[1]",
                "xdp.rate_limit.overrides[0].cidr"
            ]
        );
        assert!(
            notes[1].message.contains("stored as 192.0.2.0/24"),
            "{notes:?}"
        );
    }
}
