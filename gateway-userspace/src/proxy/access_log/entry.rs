//! One access log line: its fields, in one fixed order and under one set
//! of names for both formats, and how each format writes them.
//!
//! - `text`: logfmt, `key=value` separated by spaces, every field on every
//!   line in the order of [`Entry::fields`]; `-` for a value not known;
//!   values with a space, `"`, `=` or a control character are quoted, with
//!   `\"`, `\\` and `\n`-style escapes (what HAProxy and nginx users feed
//!   to logfmt parsers, Loki's `| logfmt`, Vector, fluent-bit).
//! - `json`: one object per line, the same keys in the same order; `null`
//!   for a value not known.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    time::{SystemTime, UNIX_EPOCH},
};

/// Everything known about one request (or a refused head or connection).
#[derive(Debug, Default)]
pub struct Entry<'a> {
    pub ts: Option<SystemTime>,
    pub client_ip: Option<IpAddr>,
    pub listener: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`.
    pub protocol: Option<&'static str>,
    /// `TLSv1.2`, `TLSv1.3`; none on plain connections.
    pub tls: Option<&'static str>,
    pub method: Option<&'a str>,
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
    pub query: Option<&'a str>,
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: Option<u64>,
    /// Response body bytes sent to the client.
    pub bytes_out: Option<u64>,
    /// From the request's start to its response's last byte.
    pub duration_ms: Option<f64>,
    pub upstream: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    /// Time the (last) upstream attempt took to send response headers.
    pub upstream_ms: Option<f64>,
    pub retries: Option<u32>,
    pub route: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub verdicts: &'a [&'static str],
    pub rejection: Option<&'a str>,
    pub detail: Option<&'a str>,
}

/// A field's value.
enum Value<'a> {
    None,
    Str(&'a str),
    Int(u64),
    Millis(f64),
    Ip(IpAddr),
    Addr(SocketAddr),
    Time(SystemTime),
    List(&'a [&'static str]),
}

fn opt<T, F: FnOnce(T) -> Value<'static>>(value: Option<T>, f: F) -> Value<'static> {
    value.map_or(Value::None, f)
}

fn s(value: Option<&str>) -> Value<'_> {
    value.map_or(Value::None, Value::Str)
}

impl<'a> Entry<'a> {
    /// The fields, in the order every line has them.
    fn fields(&self) -> [(&'static str, Value<'_>); 24] {
        [
            ("ts", opt(self.ts, Value::Time)),
            ("client_ip", opt(self.client_ip, Value::Ip)),
            ("listener", s(self.listener)),
            ("protocol", s(self.protocol)),
            ("tls", s(self.tls)),
            ("method", s(self.method)),
            ("host", s(self.host)),
            ("path", s(self.path)),
            ("query", s(self.query)),
            ("status", Value::Int(self.status.into())),
            ("bytes_in", opt(self.bytes_in, Value::Int)),
            ("bytes_out", opt(self.bytes_out, Value::Int)),
            ("duration_ms", opt(self.duration_ms, Value::Millis)),
            ("upstream_target", opt(self.upstream, Value::Addr)),
            (
                "upstream_status",
                opt(self.upstream_status, |s| Value::Int(s.into())),
            ),
            ("upstream_ms", opt(self.upstream_ms, Value::Millis)),
            ("retries", opt(self.retries, |r| Value::Int(r.into()))),
            ("route", s(self.route)),
            ("consumer", s(self.consumer)),
            ("request_id", s(self.request_id)),
            ("user_agent", s(self.user_agent)),
            ("verdicts", Value::List(self.verdicts)),
            ("rejection", s(self.rejection)),
            ("detail", s(self.detail)),
        ]
    }

    /// Appends the logfmt line, with its newline.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        for (i, (key, value)) in self.fields().iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            match value {
                Value::None => out.push(b'-'),
                Value::Str(text) => logfmt_value(out, text),
                Value::List([]) => out.push(b'-'),
                Value::List(items) => logfmt_value(out, &items.join(",")),
                other => write_plain(out, other),
            }
        }
        out.push(b'\n');
    }

    /// Appends the JSON line, with its newline.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, value)) in self.fields().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            match value {
                Value::None => out.extend_from_slice(b"null"),
                Value::Str(text) => json_string(out, text),
                Value::List(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        json_string(out, item);
                    }
                    out.push(b']');
                }
                Value::Int(_) | Value::Millis(_) => write_plain(out, value),
                other => {
                    out.push(b'"');
                    write_plain(out, other);
                    out.push(b'"');
                }
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Numbers, addresses and times: never quoted in logfmt, never escaped.
fn write_plain(out: &mut Vec<u8>, value: &Value<'_>) {
    let _ = match value {
        Value::Int(n) => write!(out, "{n}"),
        Value::Millis(ms) => write!(out, "{ms:.3}"),
        Value::Ip(ip) => write!(out, "{ip}"),
        Value::Addr(addr) => write!(out, "{addr}"),
        Value::Time(time) => {
            rfc3339_millis(out, *time);
            Ok(())
        }
        Value::None | Value::Str(_) | Value::List(_) => Ok(()),
    };
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A logfmt value: bare when it can be, else quoted and escaped.
fn logfmt_value(out: &mut Vec<u8>, text: &str) {
    let bare = !text.is_empty()
        && text
            .bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b != 0x7f);
    if bare {
        out.extend_from_slice(text.as_bytes());
    } else {
        json_string(out, text);
    }
}

/// `2026-12-06T16:22:03.123Z`: RFC 3339, UTC, milliseconds.
fn rfc3339_millis(out: &mut Vec<u8>, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            ts: Some(UNIX_EPOCH + Duration::from_millis(1_796_574_123_456)),
            client_ip: Some(IpAddr::from([192, 0, 2, 7])),
            listener: Some("public"),
            protocol: Some("HTTP/1.1"),
            method: Some("GET"),
            host: Some("api.example"),
            path: Some("/a b"),
            query: Some("x=1"),
            status: 200,
            bytes_in: Some(0),
            bytes_out: Some(12),
            duration_ms: Some(1.5),
            upstream: Some("127.0.0.1:9000".parse().unwrap()),
            upstream_status: Some(200),
            upstream_ms: Some(1.25),
            retries: Some(0),
            route: Some("users"),
            request_id: Some("abc"),
            user_agent: Some("curl/8.0 \"quoted\""),
            verdicts: &["key-auth:allow", "rate-limit:allow"],
            ..Entry::default()
        }
    }

    #[test]
    fn text_is_logfmt_with_every_field_in_order() {
        let mut out = Vec::new();
        entry().write_text(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ts=2026-12-06T16:22:03.456Z client_ip=192.0.2.7 listener=public protocol=HTTP/1.1 \
             tls=- method=GET host=api.example path=\"/a b\" query=\"x=1\" status=200 bytes_in=0 \
             bytes_out=12 duration_ms=1.500 upstream_target=127.0.0.1:9000 upstream_status=200 \
             upstream_ms=1.250 retries=0 route=users consumer=- request_id=abc \
             user_agent=\"curl/8.0 \\\"quoted\\\"\" verdicts=key-auth:allow,rate-limit:allow \
             rejection=- detail=-\n"
        );
    }

    #[test]
    fn json_has_the_same_fields() {
        let mut out = Vec::new();
        entry().write_json(&mut out);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let keys: Vec<_> = line.as_object().unwrap().keys().cloned().collect();
        let expected: Vec<_> = entry()
            .fields()
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(keys.len(), expected.len());
        for key in &expected {
            assert!(keys.contains(key), "{key}");
        }
        assert_eq!(line["ts"], "2026-12-06T16:22:03.456Z");
        assert_eq!(line["path"], "/a b");
        assert_eq!(line["status"], 200);
        assert_eq!(line["duration_ms"], 1.5);
        assert_eq!(line["upstream_target"], "127.0.0.1:9000");
        assert_eq!(line["tls"], serde_json::Value::Null);
        assert_eq!(line["verdicts"][1], "rate-limit:allow");
        assert_eq!(line["user_agent"], "curl/8.0 \"quoted\"");
    }

    #[test]
    fn dates_across_leap_years_and_centuries() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (11_016, (2000, 2, 29)),
            (19_783, (2024, 3, 1)),
            (-1, (1969, 12, 31)),
        ] {
            assert_eq!(civil_from_days(days), date, "{days}");
        }
    }
}
