//! `routes[].respond`: a route the gateway answers itself with a fixed
//! status and body, e.g. a health check for a load balancer on a client
//! listener (nginx's `return 200 "ok"`).

use serde::{Deserialize, Serialize};

use super::{Errors, Route};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    /// 200 to 599.
    pub status: u16,
    /// Sent as `text/plain; charset=utf-8`; empty by default.
    #[serde(default)]
    pub body: String,
}

impl Respond {
    /// Largest `body`: a fixed answer is a short text.
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
}

/// Exactly one of `upstream` and `respond`; nothing that only means
/// something on the way to an upstream beside `respond`.
pub(super) fn validate(route: &Route, base: &str, errors: &mut Errors) {
    match (&route.upstream, &route.respond) {
        (Some(_), Some(_)) => errors.push(
            format!("{base}.respond"),
            "a route either goes to an upstream or responds itself: remove `upstream` or `respond`",
        ),
        (None, None) => errors.push(
            format!("{base}.upstream"),
            "missing: name an entry of `upstreams`, or answer with `respond: {status: 200, body: ok}`",
        ),
        _ => {}
    }
    let Some(respond) = &route.respond else {
        return;
    };
    if !(200..=599).contains(&respond.status) {
        errors.push(
            format!("{base}.respond.status"),
            format!("{} is not a final HTTP status: 200 to 599", respond.status),
        );
    }
    if respond.body.len() > Respond::MAX_BODY_BYTES {
        errors.push(
            format!("{base}.respond.body"),
            format!(
                "{} bytes is more than the {} a fixed answer may have",
                respond.body.len(),
                Respond::MAX_BODY_BYTES
            ),
        );
    }
    for (given, key) in [
        (route.strip_prefix, "strip_prefix"),
        (route.rewrite.is_some(), "rewrite"),
    ] {
        if given {
            errors.push(
                format!("{base}.{key}"),
                "only applies to requests sent to an upstream, and this route responds itself",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn errors(routes: &str) -> Vec<String> {
        let yaml = format!(
            "listeners: [{{address: '127.0.0.1:8080'}}]\n\
             upstreams: {{u: {{targets: ['127.0.0.1:9000']}}}}\nroutes:\n{routes}"
        );
        match Config::from_yaml(&yaml, "test.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_route_responds_or_goes_upstream_never_both_nor_neither() {
        let ok = "  - {match: {path: /healthz}, respond: {status: 200, body: ok}}\n\
                  \x20 - {match: {path: /empty}, respond: {status: 204}}\n";
        assert!(errors(ok).is_empty(), "{:?}", errors(ok));

        let both = errors("  - {match: {path: /x}, upstream: u, respond: {status: 200}}\n");
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(
            both[0].starts_with("routes[0].respond: a route either goes to an upstream"),
            "{both:?}"
        );
        let neither = errors("  - {match: {path: /x}}\n");
        assert_eq!(neither.len(), 1, "{neither:?}");
        assert!(
            neither[0].starts_with("routes[0].upstream: missing"),
            "{neither:?}"
        );
    }

    #[test]
    fn a_fixed_answer_is_checked() {
        let errs =
            errors("  - {match: {path_prefix: /x}, respond: {status: 101}, strip_prefix: true}\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("routes[0].respond.status: 101 is not a final HTTP status"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("routes[0].strip_prefix: only applies"),
            "{errs:?}"
        );
        let errs = errors("  - {match: {path_prefix: /x}, respond: {status: 200}, rewrite: /y}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("routes[0].rewrite: only applies"),
            "{errs:?}"
        );
        let big = format!(
            "  - {{match: {{path: /x}}, respond: {{status: 200, body: '{}'}}}}\n",
            "x".repeat(70_000)
        );
        let errs = errors(&big);
        assert!(
            errs[0].starts_with("routes[0].respond.body: 70000 bytes is more than"),
            "{errs:?}"
        );
        let typo = errors("  - {match: {path: /x}, respond: {status: 200, bdy: ok}}\n");
        assert!(typo[0].contains("unknown field `bdy`"), "{typo:?}");
    }
}
