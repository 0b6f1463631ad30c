//! `type: ip-restriction`: per-route allow and deny lists of client
//! prefixes, as Kong's ip-restriction; the deny list is checked first.
//!
//! The client is [`Caller::client_ip`]: the connection's peer, or what a
//! trusted proxy says it forwarded for. The lists are the XDP lists' own
//! [`PrefixSet`] (one hash probe per prefix length in use, whatever the
//! number of entries), so an entry means the same at either layer, IPv4-
//! mapped IPv6 clients included (matched as IPv4).

use std::{borrow::Cow, net::IpAddr, time::SystemTime};

use http::{request::Parts, StatusCode};

use super::{Caller, Guard, GuardCheck};
use crate::{config, exchange::Rejection, lists::PrefixSet};

pub struct IpRestriction {
    allow: Option<PrefixSet>,
    deny: PrefixSet,
    status: StatusCode,
    message: Cow<'static, str>,
}

impl IpRestriction {
    pub fn new(config: &config::IpRestriction) -> Result<Self, String> {
        let set = |entries: &[String]| {
            let mut set = PrefixSet::default();
            for net in config::parse_ip_list(entries)? {
                set.insert(net, None);
            }
            Ok::<_, String>(set)
        };
        Ok(Self {
            allow: (!config.allow.is_empty())
                .then(|| set(&config.allow))
                .transpose()?,
            deny: set(&config.deny)?,
            status: StatusCode::from_u16(config.status).map_err(|e| e.to_string())?,
            message: Cow::Owned(config.message.clone()),
        })
    }

    fn allows(&self, ip: IpAddr) -> bool {
        // Config entries never expire: any instant will do.
        let now = SystemTime::UNIX_EPOCH;
        if self.deny.matching(ip, now).is_some() {
            return false;
        }
        self.allow
            .as_ref()
            .is_none_or(|allow| allow.matching(ip, now).is_some())
    }
}

impl Guard for IpRestriction {
    fn check<'a>(
        &'a self,
        _parts: &'a mut Parts,
        caller: &'a Caller<'a>,
        _response: &'a mut http::HeaderMap,
    ) -> GuardCheck<'a> {
        if self.allows(caller.client_ip) {
            return GuardCheck::Now(Ok(()));
        }
        tracing::debug!(client.ip = %caller.client_ip, route = caller.route, "ip-restriction refused");
        GuardCheck::Now(Err(Rejection::Denied {
            status: self.status,
            reason: "ip_denied",
            message: self.message.clone(),
            headers: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> IpRestriction {
        IpRestriction::new(&config::IpRestriction {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            status: 403,
            message: "no".into(),
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_is_checked_before_allow() {
        let p = policy(&["10.0.0.0/8", "10.1.2.3"], &["10.1.0.0/16"]);
        assert!(p.allows(ip("10.2.0.1")));
        assert!(!p.allows(ip("10.1.9.9")));
        // In the narrower allow entry too: deny still wins.
        assert!(!p.allows(ip("10.1.2.3")));
        assert!(!p.allows(ip("192.0.2.1")), "not in allow");
    }

    #[test]
    fn deny_only_admits_everyone_else() {
        let p = policy(&[], &["192.0.2.0/24", "2001:db8:bad::/48"]);
        assert!(p.allows(ip("192.0.3.1")));
        assert!(p.allows(ip("2001:db8:900d::1")));
        assert!(!p.allows(ip("192.0.2.200")));
        assert!(!p.allows(ip("2001:db8:bad::1")));
    }

    #[test]
    fn ipv6_and_ipv4_lists_do_not_mix() {
        let p = policy(&["2001:db8::/32"], &[]);
        assert!(p.allows(ip("2001:db8::1")));
        assert!(!p.allows(ip("2001:db9::1")));
        assert!(!p.allows(ip("32.1.13.184")), "IPv4, however its bits look");
        let everything_v6 = policy(&["::/0"], &[]);
        assert!(!everything_v6.allows(ip("127.0.0.1")));
        // A mapped client is an IPv4 client, not a member of ::/0.
        assert!(!everything_v6.allows(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_clients_are_matched_as_ipv4() {
        let p = policy(&["198.51.100.0/24"], &["198.51.100.66"]);
        assert!(p.allows(ip("::ffff:198.51.100.7")));
        assert!(!p.allows(ip("::ffff:198.51.100.66")));
        assert!(!p.allows(ip("::ffff:203.0.113.1")));
    }

    #[test]
    fn large_lists_match_by_prefix() {
        // 65,536 /32 entries and a few wider ones: the lookup costs one
        // probe per prefix length, not one per entry.
        let entries: Vec<String> = (0..=u16::MAX)
            .map(|i| format!("10.{}.{}.1", i >> 8, i & 0xff))
            .chain(["172.16.0.0/12".to_string()])
            .collect();
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let p = policy(&[], &refs);
        assert!(!p.allows(ip("10.200.3.1")));
        assert!(p.allows(ip("10.200.3.2")));
        assert!(!p.allows(ip("172.31.255.255")));
        assert!(p.allows(ip("172.32.0.0")));
    }

    #[test]
    fn refusal_carries_the_configured_status_and_reason() {
        let p = IpRestriction::new(&config::IpRestriction {
            allow: vec!["192.0.2.0/24".into()],
            deny: vec![],
            status: 451,
            message: "not from there".into(),
        })
        .unwrap();
        let (mut parts, _) = http::Request::new(()).into_parts();
        let addr = "203.0.113.5:4000".parse().unwrap();
        let conn = crate::exchange::ConnInfo::new(addr, addr, "http", None);
        let caller = Caller {
            client_ip: ip("203.0.113.5"),
            identity: None,
            route: "r",
            conn: &conn,
        };
        let mut headers = http::HeaderMap::new();
        let GuardCheck::Now(Err(rejection)) = p.check(&mut parts, &caller, &mut headers) else {
            panic!("refused at once");
        };
        assert_eq!(rejection.status().as_u16(), 451);
        assert_eq!(rejection.kind(), "ip_denied");
        assert!(
            matches!(&rejection, Rejection::Denied { message, .. } if message == "not from there"),
            "{rejection:?}"
        );
    }
}
