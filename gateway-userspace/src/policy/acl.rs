//! `type: acl`: which consumer groups may use a route, as Kong's acl.
//!
//! Runs in the authorization phase, on the consumer authentication found
//! (an `anonymous` consumer's groups count like any other's). A request
//! with no consumer at all is refused: a route with an acl is a route for
//! known callers.

use std::{borrow::Cow, collections::HashSet};

use http::{request::Parts, StatusCode};

use super::{consumers::X_CONSUMER_GROUPS, Caller, Guard, GuardCheck};
use crate::{config, exchange::Rejection};

pub struct Acl {
    allow: HashSet<String>,
    deny: HashSet<String>,
    hide_groups_header: bool,
}

impl Acl {
    pub fn new(config: &config::Acl) -> Self {
        Self {
            allow: config.allow.iter().cloned().collect(),
            deny: config.deny.iter().cloned().collect(),
            hide_groups_header: config.hide_groups_header,
        }
    }

    /// The decision for a consumer's groups (`None`: no consumer).
    fn decide(&self, groups: Option<&[String]>) -> Result<(), Rejection> {
        let Some(groups) = groups else {
            return Err(refused(
                "no consumer identified: this route needs an authenticated caller",
            ));
        };
        if groups.iter().any(|g| self.deny.contains(g)) {
            return Err(refused("consumer group not allowed on this route"));
        }
        if !self.allow.is_empty() && !groups.iter().any(|g| self.allow.contains(g)) {
            return Err(refused("consumer group not allowed on this route"));
        }
        Ok(())
    }
}

/// 403: the caller may be known, but may not do this. (Kong answers 401
/// when no consumer was found; a 401 must carry a challenge, which only an
/// authentication policy can name: the authentication policies before the
/// acl already answer 401 when a credential is missing.)
fn refused(message: &'static str) -> Rejection {
    Rejection::Denied {
        status: StatusCode::FORBIDDEN,
        reason: "acl_denied",
        message: Cow::Borrowed(message),
        headers: None,
    }
}

impl Guard for Acl {
    fn check<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a Caller<'a>,
        _response: &'a mut http::HeaderMap,
    ) -> GuardCheck<'a> {
        let groups = caller
            .identity
            .and_then(|identity| identity.consumer.as_deref())
            .map(|consumer| consumer.groups.as_slice());
        let decision = self.decide(groups);
        if decision.is_ok() && self.hide_groups_header {
            parts.headers.remove(X_CONSUMER_GROUPS);
        }
        GuardCheck::Now(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        Acl::new(&config::Acl {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            hide_groups_header: false,
        })
    }

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allow_list_admits_members_only() {
        let acl = acl(&["admins", "ops"], &[]);
        assert!(acl.decide(Some(&groups(&["ops"]))).is_ok());
        assert!(acl.decide(Some(&groups(&["users", "admins"]))).is_ok());
        let refused = acl.decide(Some(&groups(&["users"]))).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(refused.kind(), "acl_denied");
        assert!(
            acl.decide(Some(&[])).is_err(),
            "no group is in no allowed group"
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = acl(&["users"], &["banned"]);
        assert!(acl.decide(Some(&groups(&["users"]))).is_ok());
        assert!(acl.decide(Some(&groups(&["users", "banned"]))).is_err());
    }

    #[test]
    fn deny_only_admits_everyone_else() {
        let acl = acl(&[], &["banned"]);
        assert!(acl.decide(Some(&groups(&["users"]))).is_ok());
        assert!(acl.decide(Some(&[])).is_ok());
        assert!(acl.decide(Some(&groups(&["banned"]))).is_err());
    }

    #[test]
    fn no_consumer_is_refused() {
        let acl = acl(&[], &["banned"]);
        let refused = acl.decide(None).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
}
