//! "The top dropped sources": the addresses whose traffic xgate throws away
//! most, whichever layer did it. Merges the XDP program's per-source drop
//! counts (packets, sampled in the kernel: see docs/xdp.md) with the
//! refusals counted in userspace (connections and requests,
//! `top_sources`), per source, with each layer's reasons and when the
//! source was last seen dropped.

use std::{collections::HashMap, net::IpAddr, time::SystemTime};

use gateway_common::DropReason;
use serde::Serialize;

use super::top_sources::TopSource;
use crate::xdp::DroppedSource;

/// Where a drop happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// A packet dropped by the XDP program.
    Xdp,
    /// A connection or request refused in userspace.
    L7,
}

/// One reason's count in one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    pub layer: Layer,
    pub reason: &'static str,
    pub count: u64,
}

/// One row of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedSourceRow {
    pub source: IpAddr,
    /// `xdp + l7`: what the list is ordered by.
    pub dropped: u64,
    /// Packets dropped in XDP (an estimate from samples).
    pub xdp: u64,
    /// Connections and requests refused in userspace.
    pub l7: u64,
    /// `l7` may be over by up to this much (see `top_sources`).
    pub l7_error: u64,
    /// By layer and reason, most first.
    pub reasons: Vec<ReasonCount>,
    /// The layer of the most recent drop.
    pub last_layer: Layer,
    /// When it was last dropped (XDP: last sampled), Unix milliseconds.
    pub last_seen_unix_ms: u64,
}

/// Rows taken from each layer before merging: a source second in both can
/// outrank one first in only one.
const PER_LAYER: usize = 50;

/// The `n` sources with the most drops over both layers, now. An XDP map
/// that cannot be read leaves the XDP half out (the error is logged).
pub fn top(
    lists: &crate::lists::SourceLists,
    refused: &super::top_sources::TopSources,
    n: usize,
) -> Vec<DroppedSourceRow> {
    let xdp = match lists.xdp_top_dropped(PER_LAYER.max(n)) {
        Some(Ok(rows)) => rows,
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot read the XDP per-source drop counts");
            Vec::new()
        }
        None => Vec::new(),
    };
    merge(&xdp, &refused.top(PER_LAYER.max(n)), n)
}

/// The `n` sources with the most drops over both layers, most first (ties
/// by address). Give each layer's list longer than `n`: a source second in
/// both can outrank one first in only one.
pub fn merge(xdp: &[DroppedSource], l7: &[TopSource], n: usize) -> Vec<DroppedSourceRow> {
    let mut rows: HashMap<IpAddr, (DroppedSourceRow, SystemTime)> = HashMap::new();
    let row = |source: IpAddr| {
        (
            DroppedSourceRow {
                source,
                dropped: 0,
                xdp: 0,
                l7: 0,
                l7_error: 0,
                reasons: Vec::new(),
                last_layer: Layer::Xdp,
                last_seen_unix_ms: 0,
            },
            SystemTime::UNIX_EPOCH,
        )
    };
    for d in xdp {
        let (r, last) = rows.entry(d.source).or_insert_with(|| row(d.source));
        r.xdp = d.total();
        for reason in DropReason::ALL {
            let count = d.packets[reason as usize];
            if count > 0 {
                r.reasons.push(ReasonCount {
                    layer: Layer::Xdp,
                    reason: reason.name(),
                    count,
                });
            }
        }
        if d.last_seen >= *last {
            *last = d.last_seen;
            r.last_layer = Layer::Xdp;
        }
    }
    for t in l7 {
        let (r, last) = rows.entry(t.source).or_insert_with(|| row(t.source));
        r.l7 = t.refused;
        r.l7_error = t.error;
        r.reasons
            .extend(t.reasons.iter().map(|(reason, count)| ReasonCount {
                layer: Layer::L7,
                reason,
                count: *count,
            }));
        if t.last_seen >= *last {
            *last = t.last_seen;
            r.last_layer = Layer::L7;
        }
    }
    let mut rows: Vec<DroppedSourceRow> = rows
        .into_values()
        .map(|(mut r, last)| {
            r.dropped = r.xdp + r.l7;
            r.reasons.sort_by_key(|r| std::cmp::Reverse(r.count));
            r.last_seen_unix_ms = last
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            r
        })
        .collect();
    rows.sort_by(|a, b| b.dropped.cmp(&a.dropped).then(a.source.cmp(&b.source)));
    rows.truncate(n);
    rows
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn both_layers_of_one_source_add_up_and_rank_together() {
        let xdp = [
            DroppedSource {
                source: ip("203.0.113.7"),
                packets: [640, 64, 0],
                last_seen: at(100),
            },
            DroppedSource {
                source: ip("2001:db8::1"),
                packets: [0, 500, 0],
                last_seen: at(90),
            },
        ];
        let l7 = [
            TopSource {
                source: ip("2001:db8::1"),
                refused: 300,
                error: 2,
                last_reason: "rate_limited",
                reasons: vec![("rate_limited", 250), ("acl_denied", 48)],
                last_seen: at(95),
            },
            TopSource {
                source: ip("198.51.100.9"),
                refused: 1,
                error: 0,
                last_reason: "deny_list",
                reasons: vec![("deny_list", 1)],
                last_seen: at(120),
            },
        ];
        let rows = merge(&xdp, &l7, 10);
        let order: Vec<_> = rows.iter().map(|r| (r.source, r.dropped)).collect();
        assert_eq!(
            order,
            [
                (ip("2001:db8::1"), 800),
                (ip("203.0.113.7"), 704),
                (ip("198.51.100.9"), 1)
            ]
        );
        let both = &rows[0];
        assert_eq!((both.xdp, both.l7, both.l7_error), (500, 300, 2));
        assert_eq!(both.last_layer, Layer::L7);
        assert_eq!(both.last_seen_unix_ms, 95_000);
        assert_eq!(
            both.reasons,
            [
                ReasonCount {
                    layer: Layer::Xdp,
                    reason: "rate_limited",
                    count: 500
                },
                ReasonCount {
                    layer: Layer::L7,
                    reason: "rate_limited",
                    count: 250
                },
                ReasonCount {
                    layer: Layer::L7,
                    reason: "acl_denied",
                    count: 48
                },
            ]
        );
        let kernel = &rows[1];
        assert_eq!(kernel.last_layer, Layer::Xdp);
        assert_eq!(
            kernel.reasons.iter().map(|r| r.reason).collect::<Vec<_>>(),
            ["deny_list", "rate_limited"]
        );
        assert_eq!(merge(&xdp, &l7, 1).len(), 1);
    }
}
