//! One request, seen the same way by routing, policies, the access log and
//! the upstream: the path in normal form (RFC 3986 §6.2.2), one authority,
//! and no header name a CGI-style server could read as another.
//!
//! Made once, right after the request head is read and before routing. A
//! path already in normal form (nearly all of them) is checked in one pass
//! over its bytes and not copied.

use std::borrow::Cow;

use http::{
    header::HOST, request::Parts, uri::PathAndQuery, HeaderMap, HeaderName, Method, Version,
};

use super::Rejection;
use crate::config::{EscapedSlashes, ForwardPath, Normalization, UnderscoreHeaders};

/// Puts the request's target and authority in the one form everything
/// after it reads: the path normalized (and the target made origin-form),
/// the authority in `Host` only. Returns the normalized path when it
/// differs from what the client sent (for the access log).
pub(super) fn request(
    parts: &mut Parts,
    rules: &Normalization,
) -> Result<Option<String>, Rejection> {
    authority(parts)?;
    let Some(target) = parts.uri.path_and_query() else {
        // Authority-form (`CONNECT host:port`): xgate is no forward proxy.
        return Err(Rejection::BadRequest("request target is not a path"));
    };
    let raw = target.path();
    if raw == "*" {
        // Asterisk-form, for a server-wide OPTIONS only (RFC 9112 §3.2.4).
        return if parts.method == Method::OPTIONS && target.query().is_none() {
            Ok(None)
        } else {
            Err(Rejection::BadRequest(
                "asterisk-form target without OPTIONS",
            ))
        };
    }
    let path = path(raw, rules).map_err(Rejection::BadRequest)?;
    let Cow::Owned(path) = path else {
        if parts.uri.scheme().is_some() {
            // Absolute-form: its authority is in Host now; what follows
            // reads the path alone.
            parts.uri = target.clone().into();
        }
        return Ok(None);
    };
    if rules.forward == ForwardPath::Original {
        return Err(Rejection::BadRequest("path not in normal form"));
    }
    let full = match target.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.clone(),
    };
    let normalized = PathAndQuery::from_maybe_shared(full)
        .map_err(|_| Rejection::BadRequest("path not valid once normalized"))?;
    parts.uri = normalized.into();
    Ok(Some(path))
}

/// One authority per request. An absolute-form target's authority replaces
/// Host (RFC 9112 §3.2.2); an HTTP/2 `host` that disagrees with
/// `:authority` is refused (RFC 9113 §8.3.1); Host must be `host[:port]`.
fn authority(parts: &mut Parts) -> Result<(), Rejection> {
    if parts.headers.get_all(HOST).iter().nth(1).is_some() {
        return Err(Rejection::BadRequest("more than one Host"));
    }
    if let Some(authority) = parts.uri.authority() {
        if !authority_is_valid(authority.as_str().as_bytes()) {
            return Err(Rejection::BadRequest(
                "invalid authority in the request target",
            ));
        }
        if parts.version == Version::HTTP_2 {
            // hyper puts `:authority` in the URI; the server copied it to
            // Host when the client sent no `host` of its own.
            let agrees = parts.headers.get(HOST).is_none_or(|host| {
                host.as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            });
            if !agrees {
                return Err(Rejection::BadRequest("host differs from :authority"));
            }
        } else {
            if !matches!(parts.uri.scheme_str(), Some("http" | "https")) {
                return Err(Rejection::BadRequest(
                    "absolute-form target is not http or https",
                ));
            }
            let host = http::HeaderValue::from_str(authority.as_str())
                .map_err(|_| Rejection::BadRequest("invalid authority in the request target"))?;
            parts.headers.insert(HOST, host);
        }
    }
    match parts.headers.get(HOST) {
        Some(host) if !authority_is_valid(host.as_bytes()) => {
            Err(Rejection::BadRequest("invalid Host"))
        }
        _ => Ok(()),
    }
}

/// `host[:port]`: a DNS name (letters, digits, `-`, `_`, `.`), an IPv4
/// address, or an IPv6 literal in brackets; a port of at most five digits
/// up to 65535 (RFC 3986 lets it be empty). No userinfo, no empty host.
fn authority_is_valid(value: &[u8]) -> bool {
    let port = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(close) = memchr::memchr(b']', rest) else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..close]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        match &rest[close + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return false,
        }
    } else {
        let (host, port) = match memchr::memchr(b':', value) {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        };
        let name = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        if host.is_empty() || !host.iter().all(name) {
            return false;
        }
        port
    };
    port.is_none_or(|port| {
        port.len() <= 5
            && port.iter().all(u8::is_ascii_digit)
            && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
    })
}

/// Whether `path` (starting with `/`) is already in normal form as far as
/// one look at its bytes can tell: nothing escaped, no backslash, no
/// segment starting with a dot, no empty segment when slashes merge.
fn looks_normal(path: &[u8], merge_slashes: bool) -> bool {
    let mut previous = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' => return false,
            b'.' if previous == b'/' => return false,
            b'/' if previous == b'/' && merge_slashes => return false,
            _ => {}
        }
        previous = b;
    }
    true
}

/// The normal form of `path`: unreserved characters decoded, other escapes
/// in upper case, escaped slashes as `rules` say, slashes merged, dot
/// segments removed. Borrowed when nothing changes. An error names what is
/// refused.
pub(super) fn path<'a>(path: &'a str, rules: &Normalization) -> Result<Cow<'a, str>, &'static str> {
    if !path.starts_with('/') {
        return Err("request target is not a path");
    }
    if looks_normal(path.as_bytes(), rules.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, rules.escaped_slashes)?;
    let normal = remove_dot_segments(&decoded, rules.merge_slashes)?;
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// Percent-decoding where it cannot change the meaning (RFC 3986 §2.3 and
/// §6.2.2.1): unreserved characters decoded, other escapes upper-cased.
fn decode(path: &str, slashes: EscapedSlashes) -> Result<String, &'static str> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (byte, escaped) = match b {
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|&h| (h as char).to_digit(16));
                let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
                    return Err("invalid percent-encoding in path");
                };
                i += 3;
                ((high * 16 + low) as u8, true)
            }
            _ => {
                i += 1;
                (b, false)
            }
        };
        match byte {
            0 => return Err("NUL in path"),
            b'/' if !escaped => out.push('/'),
            b'/' | b'\\' => match slashes {
                EscapedSlashes::Keep => out.push_str(if byte == b'/' { "%2F" } else { "%5C" }),
                EscapedSlashes::Decode => out.push('/'),
                EscapedSlashes::Reject => return Err("escaped slash or backslash in path"),
            },
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                out.push(b as char)
            }
            b if escaped => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
            }
            b => out.push(b as char),
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path, with `..` above the root refused
/// (not clamped, as a browser would: a client that sends it is probing).
fn remove_dot_segments(path: &str, merge_slashes: bool) -> Result<String, &'static str> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => trailing_slash = i == last,
            ".." => {
                if kept.pop().is_none() {
                    return Err("path climbs above the root");
                }
                trailing_slash = i == last;
            }
            "" if i == last => trailing_slash = true,
            "" if merge_slashes => {}
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Applies `rule` to header names with `_`. Names are checked in one pass;
/// most requests have none.
pub(super) fn underscore_headers(
    headers: &mut HeaderMap,
    rule: UnderscoreHeaders,
) -> Result<(), Rejection> {
    if rule == UnderscoreHeaders::Allow || !headers.keys().any(has_underscore) {
        return Ok(());
    }
    if rule == UnderscoreHeaders::Reject {
        return Err(Rejection::BadRequest("header name with an underscore"));
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| has_underscore(n))
        .cloned()
        .collect();
    for name in names {
        tracing::debug!(header = %name, "header with an underscore dropped");
        headers.remove(name);
    }
    Ok(())
}

fn has_underscore(name: &HeaderName) -> bool {
    memchr::memchr(b'_', name.as_str().as_bytes()).is_some()
}

#[cfg(test)]
mod tests;
