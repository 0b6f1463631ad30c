//! `type: bot-detection`: refuses clients by their `User-Agent`, as
//! Kong's bot-detection: `allow` regexes (which win), `deny` regexes and
//! the built-in signatures ([`super::bot_signatures`]).
//!
//! Every pattern is in one compiled [`RegexSet`], searched once per agent
//! whatever the number of patterns; decisions are kept in a bounded LRU
//! keyed by the agent string, so a repeated agent costs one hash lookup.

use std::borrow::Cow;

use http::{header::USER_AGENT, request::Parts, StatusCode};
use regex::bytes::{RegexSet, RegexSetBuilder};

use super::{bot_signatures::SIGNATURES, lru::Lru, Caller, Guard, GuardCheck};
use crate::{
    config::{self, MissingUserAgent, BOT_CACHE_MAX_AGENT_BYTES, BOT_PATTERNS_SIZE_LIMIT},
    exchange::Rejection,
};

/// The lazy DFA's cache per thread for the set: big enough that a
/// 1,000-pattern set does not thrash it (a thrashing lazy DFA falls back
/// to a far slower engine), small next to a worker's other memory.
const DFA_CACHE_BYTES: usize = 16 << 20;

/// What the policy decided for an agent: `Deny` names the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No pattern matched.
    Pass,
    /// `allow[i]` matched.
    Allowed(u32),
    /// Pattern `i` of the set matched (a `deny` or a built-in one).
    Denied(u32),
}

pub struct BotDetection {
    /// `allow`, then `deny`, then the built-in signatures.
    patterns: RegexSet,
    allow_count: usize,
    deny_count: usize,
    missing: MissingUserAgent,
    cache: Option<Lru<Decision>>,
    status: StatusCode,
    message: Cow<'static, str>,
}

impl BotDetection {
    pub fn new(config: &config::BotDetection) -> Result<Self, String> {
        let builtin = if config.builtin { SIGNATURES } else { &[] }
            .iter()
            .map(|s| format!("(?i:{s})"));
        let patterns: Vec<String> = config
            .allow
            .iter()
            .chain(&config.deny)
            .cloned()
            .chain(builtin)
            .collect();
        let patterns = RegexSetBuilder::new(&patterns)
            // ASCII semantics (agents are ASCII): `(?i)` folds ASCII
            // letters, `\w` and `\d` are ASCII classes, and the automaton
            // stays small.
            .unicode(false)
            .size_limit(BOT_PATTERNS_SIZE_LIMIT)
            .dfa_size_limit(DFA_CACHE_BYTES)
            .build()
            .map_err(|e| format!("bot-detection patterns: {e}"))?;
        Ok(Self {
            patterns,
            allow_count: config.allow.len(),
            deny_count: config.deny.len(),
            missing: config.missing_user_agent,
            cache: (config.cache_entries > 0).then(|| Lru::new(config.cache_entries)),
            status: StatusCode::from_u16(config.status).map_err(|e| e.to_string())?,
            message: Cow::Owned(config.message.clone()),
        })
    }

    /// The decision for an agent, from the cache or the pattern set.
    pub fn decide(&self, agent: &[u8]) -> Decision {
        let cacheable = agent.len() <= BOT_CACHE_MAX_AGENT_BYTES;
        if let Some(cache) = self.cache.as_ref().filter(|_| cacheable) {
            if let Some(decision) = cache.get(agent) {
                return decision;
            }
            let decision = self.matched(agent);
            cache.insert(agent, decision);
            return decision;
        }
        self.matched(agent)
    }

    /// The set's answer: matches come in pattern order, so the first one
    /// says whether an `allow` pattern matched.
    fn matched(&self, agent: &[u8]) -> Decision {
        // Most agents match nothing: a yes/no search stops early and
        // tracks no pattern; only a match is searched again for which.
        if !self.patterns.is_match(agent) {
            return Decision::Pass;
        }
        match self.patterns.matches(agent).iter().next() {
            None => Decision::Pass,
            Some(i) if i < self.allow_count => Decision::Allowed(i as u32),
            Some(i) => Decision::Denied(i as u32),
        }
    }

    /// The config's name for pattern `i` of the set (for the log).
    fn rule(&self, i: u32) -> String {
        let i = i as usize;
        if i < self.allow_count {
            format!("allow[{i}]")
        } else if i < self.allow_count + self.deny_count {
            format!("deny[{}]", i - self.allow_count)
        } else {
            format!(
                "builtin '{}'",
                SIGNATURES[i - self.allow_count - self.deny_count]
            )
        }
    }

    fn refused(&self, status: StatusCode, message: Cow<'static, str>) -> Rejection {
        Rejection::Denied {
            status,
            reason: "bot_denied",
            message,
            headers: None,
        }
    }

    /// The whole check on a request's headers.
    fn check_headers(
        &self,
        headers: &http::HeaderMap,
        caller: &Caller<'_>,
    ) -> Result<(), Rejection> {
        let mut agents = headers.get_all(USER_AGENT).iter();
        let Some(agent) = agents.next() else {
            return match self.missing {
                MissingUserAgent::Allow => Ok(()),
                MissingUserAgent::Deny => {
                    tracing::debug!(client.ip = %caller.client_ip, route = caller.route, "bot-detection refused: no User-Agent");
                    Err(self.refused(self.status, self.message.clone()))
                }
            };
        };
        if agents.next().is_some() {
            // A single-valued field sent twice: an evasion (a filter reads
            // one, the application the other), refused as Kong does.
            tracing::debug!(client.ip = %caller.client_ip, route = caller.route, "bot-detection refused: more than one User-Agent");
            return Err(self.refused(
                StatusCode::BAD_REQUEST,
                Cow::Borrowed("more than one User-Agent header"),
            ));
        }
        match self.decide(agent.as_bytes()) {
            Decision::Pass | Decision::Allowed(_) => Ok(()),
            Decision::Denied(i) => {
                tracing::debug!(
                    client.ip = %caller.client_ip,
                    route = caller.route,
                    user_agent = %String::from_utf8_lossy(agent.as_bytes()),
                    rule = %self.rule(i),
                    "bot-detection refused"
                );
                Err(self.refused(self.status, self.message.clone()))
            }
        }
    }
}

impl Guard for BotDetection {
    fn check<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a Caller<'a>,
        _response: &'a mut http::HeaderMap,
    ) -> GuardCheck<'a> {
        GuardCheck::Now(self.check_headers(&parts.headers, caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str], builtin: bool) -> BotDetection {
        BotDetection::new(&config::BotDetection {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            builtin,
            missing_user_agent: MissingUserAgent::Allow,
            cache_entries: 100,
            status: 403,
            message: "go away".into(),
        })
        .unwrap()
    }

    const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    #[test]
    fn builtin_list_denies_and_allow_wins() {
        let p = policy(&[], &[], true);
        assert_eq!(p.decide(BROWSER.as_bytes()), Decision::Pass);
        assert!(matches!(
            p.decide(GOOGLEBOT.as_bytes()),
            Decision::Denied(_)
        ));
        let Decision::Denied(i) = p.decide(b"sqlmap/1.7") else {
            panic!("sqlmap is on the list");
        };
        assert_eq!(p.rule(i), "builtin 'sqlmap'");
        let p = policy(&["Googlebot/"], &[], true);
        assert_eq!(p.decide(GOOGLEBOT.as_bytes()), Decision::Allowed(0));
        assert!(matches!(p.decide(b"bingbot/2.0"), Decision::Denied(_)));
    }

    #[test]
    fn allow_wins_over_deny_and_deny_names_its_rule() {
        let p = policy(&["^internal-monitor/"], &["monitor", "^evil"], false);
        assert_eq!(p.decide(b"internal-monitor/1.0"), Decision::Allowed(0));
        assert_eq!(p.rule(1), "deny[0]");
        assert_eq!(p.decide(b"external-monitor/1.0"), Decision::Denied(1));
        assert_eq!(p.decide(b"evil-client"), Decision::Denied(2));
        assert_eq!(p.decide(b"not evil"), Decision::Pass);
        // Without the built-in list, a crawler is just an agent.
        assert_eq!(p.decide(GOOGLEBOT.as_bytes()), Decision::Pass);
    }

    #[test]
    fn user_patterns_are_case_sensitive_unless_they_say_so() {
        let p = policy(&[], &["BadClient", "(?i)worse", "Agent-é"], false);
        assert!(matches!(p.decide(b"BadClient/1"), Decision::Denied(_)));
        assert_eq!(p.decide(b"badclient/1"), Decision::Pass);
        assert!(matches!(p.decide(b"WORSE/2"), Decision::Denied(_)));
        // A non-ASCII literal matches its UTF-8 bytes.
        assert_eq!(p.decide("Agent-é".as_bytes()), Decision::Denied(2));
    }

    #[test]
    fn a_thousand_patterns_compile_into_one_set() {
        let deny: Vec<String> = (0..1000)
            .map(|i| format!("scanner-{i:04}/[0-9]+"))
            .collect();
        let refs: Vec<&str> = deny.iter().map(String::as_str).collect();
        let p = policy(&["^friendly"], &refs, true);
        assert_eq!(p.patterns.len(), 1 + 1000 + SIGNATURES.len());
        assert_eq!(p.decide(b"x scanner-0999/12"), Decision::Denied(1000));
        assert_eq!(p.decide(b"scanner-0999/"), Decision::Pass);
        assert_eq!(p.decide(b"friendly scanner-0001/1"), Decision::Allowed(0));
        assert_eq!(p.decide(BROWSER.as_bytes()), Decision::Pass);
    }

    #[test]
    fn decisions_are_cached_within_the_bound() {
        let p = policy(&[], &["bad"], false);
        let cache = p.cache.as_ref().unwrap();
        for i in 0..5_000 {
            p.decide(format!("agent-{i}").as_bytes());
        }
        assert!(cache.entries() <= 112, "bounded: {}", cache.entries());
        assert!(matches!(p.decide(b"bad-agent"), Decision::Denied(_)));
        assert_eq!(cache.get(b"bad-agent"), Some(Decision::Denied(0)));
        // A huge agent is decided but never kept.
        let huge = format!("bad {}", "x".repeat(BOT_CACHE_MAX_AGENT_BYTES));
        assert!(matches!(p.decide(huge.as_bytes()), Decision::Denied(_)));
        assert_eq!(cache.get(huge.as_bytes()), None);
    }

    fn run(p: &BotDetection, agents: &[&str]) -> Result<(), Rejection> {
        let mut headers = http::HeaderMap::new();
        for agent in agents {
            headers.append(USER_AGENT, agent.parse().unwrap());
        }
        let addr = "192.0.2.1:5000".parse().unwrap();
        let conn = crate::exchange::ConnInfo::new(addr, addr, "http", None);
        let caller = Caller {
            client_ip: addr.ip(),
            identity: None,
            route: "r",
            conn: &conn,
        };
        p.check_headers(&headers, &caller)
    }

    #[test]
    fn two_agents_are_a_bad_request_and_a_missing_one_follows_the_config() {
        let p = policy(&[], &[], true);
        let refused = run(&p, &[BROWSER, BROWSER]).unwrap_err();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refused.kind(), "bot_denied");
        assert!(run(&p, &[]).is_ok(), "missing_user_agent: allow");
        let denied = run(&p, &["nikto"]).unwrap_err();
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(denied.kind(), "bot_denied");
        assert!(run(&p, &[BROWSER]).is_ok());

        let strict = BotDetection::new(&config::BotDetection {
            allow: vec![],
            deny: vec![],
            builtin: false,
            missing_user_agent: MissingUserAgent::Deny,
            cache_entries: 0,
            status: 429,
            message: "who are you".into(),
        })
        .unwrap();
        let refused = run(&strict, &[]).unwrap_err();
        assert_eq!(refused.status().as_u16(), 429);
        assert!(run(&strict, &["anything"]).is_ok());
    }
}
