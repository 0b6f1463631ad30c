//! `xgate_xdp_packets_total`: the XDP program's packet counters, one series
//! per attached interface, verdict and reason (each interface runs its own
//! copy of the program with its own counters; see `xdp/instance.rs`).
//! Totals are the sum over `interface`.

use std::{collections::BTreeMap, fmt::Write};

use gateway_common::Stat;

use crate::xdp::Counters;

pub(super) fn render(out: &mut String, interfaces: &BTreeMap<String, Counters>) {
    out.push_str(
        "# HELP xgate_xdp_packets Packets seen by the XDP program, by interface, verdict and reason.\n",
    );
    out.push_str("# TYPE xgate_xdp_packets counter\n");
    for (interface, counters) in interfaces {
        let interface = label_value(interface);
        for stat in Stat::ALL {
            let verdict = stat.verdict();
            let _ = writeln!(
                out,
                "xgate_xdp_packets_total{{interface=\"{interface}\",verdict=\"{verdict}\",reason=\"{}\"}} {}",
                stat.name(),
                counters.get(stat)
            );
        }
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(values: [u64; Stat::COUNT as usize]) -> Counters {
        Counters::from(values)
    }

    #[test]
    fn every_series_carries_its_interface() {
        let mut interfaces = BTreeMap::new();
        interfaces.insert(
            "eth0".to_string(),
            counters([5, 1, 0, 7, 0, 0, 0, 2, 11, 4, 6, 1, 3]),
        );
        interfaces.insert(
            "eth1".to_string(),
            counters([9, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]),
        );
        let mut out = String::new();
        render(&mut out, &interfaces);
        assert!(out.contains(
            "xgate_xdp_packets_total{interface=\"eth0\",verdict=\"drop\",reason=\"denied_v4\"} 7\n"
        ));
        assert!(out.contains(
            "xgate_xdp_packets_total{interface=\"eth1\",verdict=\"drop\",reason=\"denied_v4\"} 0\n"
        ));
        assert!(out.contains(
            "xgate_xdp_packets_total{interface=\"eth1\",verdict=\"drop\",reason=\"rate_limited\"} 3\n"
        ));
        assert!(out.contains(
            "xgate_xdp_packets_total{interface=\"eth0\",verdict=\"pass\",reason=\"passed\"} 5\n"
        ));
        // SYN cookies: the SYN-ACK is sent back (tx), a bad cookie dropped.
        assert!(out.contains(
            "xgate_xdp_packets_total{interface=\"eth0\",verdict=\"tx\",reason=\"syn_cookie_sent\"} 11\n"
        ));
        assert!(out.contains(
            "xgate_xdp_packets_total{interface=\"eth0\",verdict=\"pass\",reason=\"syn_cookie_valid\"} 4\n"
        ));
        assert!(out.contains(
            "xgate_xdp_packets_total{interface=\"eth0\",verdict=\"drop\",reason=\"syn_cookie_invalid\"} 6\n"
        ));
        assert!(out.contains(
            "xgate_xdp_packets_total{interface=\"eth0\",verdict=\"drop\",reason=\"syn_bad_checksum\"} 3\n"
        ));
        let series: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("xgate_xdp_packets_total"))
            .collect();
        assert_eq!(series.len(), 2 * Stat::ALL.len());
        assert!(series.iter().all(|l| l.contains("interface=\"eth")));
        assert_eq!(out.matches("# TYPE xgate_xdp_packets counter").count(), 1);
    }

    #[test]
    fn no_interface_no_series() {
        let mut out = String::new();
        render(&mut out, &BTreeMap::new());
        assert!(!out.contains("xgate_xdp_packets_total"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("eth0.100"), "eth0.100");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
