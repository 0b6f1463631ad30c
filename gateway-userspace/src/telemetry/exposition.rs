//! Prometheus's two text formats. The registry writes OpenMetrics 1.0 (a
//! counter family is named without `_total`, its samples with it, `# UNIT`
//! lines, a closing `# EOF`); a scraper that does not ask for OpenMetrics
//! gets the classic text format 0.0.4, where a family's `# HELP` and
//! `# TYPE` name the samples themselves (`xgate_requests_total`) and
//! `# UNIT` and `# EOF` do not exist. Prometheus asks for OpenMetrics
//! first; `curl` and `promtool check metrics` read the classic one.

use http::{header, HeaderMap};

/// The format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it (with a non-zero
    /// quality), the classic format otherwise.
    pub fn negotiate(headers: &HeaderMap) -> Self {
        let asks = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|item| {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next().unwrap_or("");
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            });
        if asks {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `openmetrics` (the registry's text) in this format.
    pub fn render(self, openmetrics: String) -> String {
        match self {
            Format::OpenMetrics => openmetrics,
            Format::Classic => to_classic(&openmetrics),
        }
    }
}

/// OpenMetrics text as the classic format: counter families' `# HELP` and
/// `# TYPE` renamed to their `_total` samples, `# UNIT` and `# EOF` left out.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| kind.trim() == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(line.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const OPENMETRICS: &str = "# HELP xgate_requests Requests.\n\
        # TYPE xgate_requests counter\n\
        xgate_requests_total{route=\"a\"} 3\n\
        # HELP xgate_request_body_bytes Body bytes.\n\
        # TYPE xgate_request_body_bytes counter\n\
        # UNIT xgate_request_body_bytes bytes\n\
        xgate_request_body_bytes_total 10\n\
        # HELP xgate_active_connections Open connections.\n\
        # TYPE xgate_active_connections gauge\n\
        xgate_active_connections 2\n\
        # EOF\n";

    #[test]
    fn the_classic_format_names_counter_families_by_their_samples() {
        let classic = to_classic(OPENMETRICS);
        assert_eq!(
            classic,
            "# HELP xgate_requests_total Requests.\n\
             # TYPE xgate_requests_total counter\n\
             xgate_requests_total{route=\"a\"} 3\n\
             # HELP xgate_request_body_bytes_total Body bytes.\n\
             # TYPE xgate_request_body_bytes_total counter\n\
             xgate_request_body_bytes_total 10\n\
             # HELP xgate_active_connections Open connections.\n\
             # TYPE xgate_active_connections gauge\n\
             xgate_active_connections 2\n"
        );
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            Format::negotiate(&headers)
        };
        assert_eq!(Format::negotiate(&HeaderMap::new()), Format::Classic);
        // What Prometheus sends.
        assert_eq!(
            with("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            Format::OpenMetrics
        );
        assert_eq!(with("text/plain"), Format::Classic);
        assert_eq!(with("*/*"), Format::Classic);
        assert_eq!(
            with("application/openmetrics-text; q=0, text/plain"),
            Format::Classic
        );
        assert_eq!(Format::OpenMetrics.render(OPENMETRICS.into()), OPENMETRICS);
    }
}
